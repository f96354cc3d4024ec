"""Start-up overhead of the sandbox per experiment (issue 5; goal <= 50 ms each for process and bwrap).

    python benchmarks/sandbox_overhead.py [--runs 30]

For each mode, one sample is the wall time the runner spends on an experiment that does nothing:
`prepare()` + `Popen(... start_new_session=True)` of `true` + `wait()` + `cleanup()`. Modes are
interleaved round by round so drift on a shared machine hits them alike. Printed: the median and
90th percentile per mode, and the median overhead against `none+fork` measured in the same run:
no sandbox, started as the runner starts every experiment (with a pre-exec hook, hence fork rather
than vfork; the `none` row shows plain vfork for reference).
"process" and "bwrap" use `Limits.default()` (the process cap makes a cgroup where one can be
made); "+nocap" rows show the same mode without the process cap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import sandbox
from autoresearch.sandbox import Limits, SandboxSpec, prepare


def _noop() -> None:
    pass


def one(spec: SandboxSpec, env: dict[str, str], runner_like: bool) -> float:
    t0 = time.perf_counter()
    p = prepare(spec, "true", env)
    # The runner always passes a pre-exec hook of its own (parent-death signal), so it always forks;
    # without any hook Python uses the cheaper vfork. `runner_like` measures the former.
    preexec = p.preexec_fn or (_noop if runner_like else None)
    proc = subprocess.Popen(
        p.argv, env=p.env, preexec_fn=preexec, start_new_session=True, cwd=spec.workdir,
        stdin=subprocess.DEVNULL,
    )
    rc = proc.wait()
    p.cleanup()
    elapsed = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{spec.mode}: `true` exited {rc}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wt, art = root / "wt", root / "artifacts"
        wt.mkdir()
        art.mkdir()
        (wt / "prepare.py").write_text("x = 1\n")
        keys = root / "keys"
        keys.mkdir()
        common = dict(workdir=wt, writable=[art], readonly=[wt / "prepare.py"], hidden=[keys])
        modes = {
            "none": SandboxSpec(mode="none", **common),
            "none+fork": SandboxSpec(mode="none", **common),
            "process": SandboxSpec(mode="process", limits=Limits.default(), **common),
            "process+nocap": SandboxSpec(mode="process", **common),
        }
        if sandbox.bwrap_available():
            modes["bwrap"] = SandboxSpec(mode="bwrap", limits=Limits.default(), **common)
            modes["bwrap+nocap"] = SandboxSpec(mode="bwrap", **common)
        else:
            print(f"bwrap: not measured ({sandbox._bwrap_probe().reason})")
        env = dict(os.environ)
        for name, spec in modes.items():  # warm caches: probe, cgroup discovery, page cache
            one(spec, env, name != "none")
        samples: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.runs):
            for name, spec in modes.items():
                samples[name].append(one(spec, env, name != "none"))

    cap = "cgroup pids.max" if sandbox._pids_cgroup_parent() else ("RLIMIT_NPROC" if os.geteuid() else "none")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, uid {os.geteuid()}, process cap via: {cap}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'mode':<15}{'median ms':>11}{'p90 ms':>9}{'overhead vs none+fork (median) ms':>36}")
    base = statistics.median(samples["none+fork"])
    for name, xs in samples.items():
        xs = sorted(xs)
        med = statistics.median(xs)
        p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
        print(f"{name:<15}{med * 1e3:>11.2f}{p90 * 1e3:>9.2f}{(med - base) * 1e3:>36.2f}")


if __name__ == "__main__":
    main()
