"""What confining the agent costs: start-up of a no-op agent, and `try` through the drive socket.

    python benchmarks/agent_confinement.py [--runs 20] [--tries 10]

1. One sample is a whole `AgentProposer.propose()` with the command `true` (a no-op agent: prompt
   written, git inspected before and after, the agent started through the runner), unconfined
   (`[proposer] sandbox = "none"`) and confined (`"bwrap"`, or `"process"` where bubblewrap does
   not work), interleaved round by round. Printed: medians and the ratio confined / unconfined.
2. `try` as an agent sees it: the wall time of `autoresearch try -m ...` from the agent's shell,
   (a) unconfined, run directly in the worktree (it opens the ledger itself), and (b) inside
   `autoresearch drive`, where the command only forwards over the socket and the harness does the
   same work. Both run the same tiny experiment (~0.1 s). Also the bare socket round trip of a
   `log` request, sent from inside the sandbox. Printed: medians and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import sandbox
from autoresearch.config import load_config
from autoresearch.errors import ProposalInvalid
from autoresearch.proposers import Context
from autoresearch.proposers.agent import AgentProposer

TRAIN = """import os
X = {x}
print(f"score: {{(X - 1.0) ** 2}}")
"""
TOML = """[experiment]
run = "python train.py"
budget = "10s"
timeout = "30s"
editable = ["train.py"]
sandbox = "none"

[metric]
name = "score"

[judge]
baseline_runs = 1
min_delta = 0

[proposer]
kind = "agent"
command = "true"
agent_paths = ["{agents}"]
"""
# Inside drive: time each `autoresearch try` (and raw `log` requests) from the agent's side.
AGENT = r'''
import json, os, socket, subprocess, sys, time
from pathlib import Path
tries, out = int(sys.argv[1]), {"try": [], "log": []}
train = Path("train.py")
for i in range(tries):
    train.write_text(train.read_text().replace(train.read_text().splitlines()[1], f"X = {1.05 + i * 0.25}"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autoresearch.cli", "try", "-q", "-m", f"X {1.05 + i * 0.25}"], check=True, capture_output=True)
    out["try"].append(time.perf_counter() - t0)
for _ in range(20):
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["AUTORESEARCH_SOCKET"])
    s.sendall(b'{"op": "log"}\n')
    s.shutdown(socket.SHUT_WR)
    s.makefile().read()
    out["log"].append(time.perf_counter() - t0)
print("TIMES " + json.dumps(out), flush=True)
'''


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make(path: Path, agents: Path) -> Path:
    path.mkdir(parents=True)
    (path / "train.py").write_text(TRAIN.format(x=3.0))
    (path / "autoresearch.toml").write_text(TOML.format(agents=agents))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench")
    return path


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.1f} ms"


def startup(tmp: Path, runs: int) -> None:
    exp = make(tmp / "startup", tmp / "agents")
    confined_mode = "bwrap" if sandbox.bwrap_available() else "process"
    samples: dict[str, list[float]] = {"none": [], confined_mode: []}
    for i in range(runs):
        for mode in samples:
            config = load_config(exp)
            config.proposer = config.proposer.model_copy(update={"sandbox": mode})
            run_dir = tmp / "runs" / f"{mode}-{i}"
            run_dir.mkdir(parents=True)
            ctx = Context(config=config, root=exp, worktree=exp, files={"train.py": (exp / "train.py").read_text()},
                          history=[], best=None, noise=None, run_dir=run_dir, experiment_id=1)
            proposer = AgentProposer(config, [])
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # the unconfined run's warning, once per proposer
                    proposer.propose(ctx)
            except ProposalInvalid:  # a no-op agent changes nothing, as expected
                pass
            samples[mode].append(time.perf_counter() - t0)
    base, conf = statistics.median(samples["none"]), statistics.median(samples[confined_mode])
    print(f"no-op agent start-up, median of {runs}: unconfined {ms(samples['none'])}, {confined_mode} {ms(samples[confined_mode])}"
          f" -> +{(conf - base) * 1000:.1f} ms, {conf / base:.2f}x")


def tries(tmp: Path, n: int) -> None:
    agents = tmp / "agents"
    (agents / "timer.py").write_text(AGENT)
    env = {**os.environ, "AUTORESEARCH_KEY_DIR": str(tmp / "keys")}
    cli = [sys.executable, "-m", "autoresearch.cli"]
    # (a) unconfined: the agent's own shell runs `try` in the worktree
    direct = make(tmp / "direct", agents)
    subprocess.run([*cli, "run", direct, "-n", "0", "-q"], check=True, env=env, capture_output=True)
    wt = direct / ".autoresearch/worktree"
    times = []
    for i in range(n):
        text = (wt / "train.py").read_text()
        (wt / "train.py").write_text(text.replace(text.splitlines()[1], f"X = {1.05 + i * 0.25}"))
        t0 = time.perf_counter()
        subprocess.run([*cli, "try", "-q", "-m", f"X {1.05 + i * 0.25}"], cwd=wt, check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    # (b) confined: the same tries through `autoresearch drive`'s socket
    driven = make(tmp / "driven", agents)
    res = subprocess.run([*cli, "drive", driven, "-q", "--", sys.executable, agents / "timer.py", str(n)], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"drive failed: {res.stderr}")
    log = sorted((driven / ".autoresearch/drive").glob("agent-*.log"))[-1].read_text()
    found = [ln for ln in log.splitlines() if ln.startswith("TIMES ")]
    if not found:
        sys.exit(f"the timing agent failed under drive:\n{log[-3000:]}")
    inside = json.loads(found[0][6:])
    a, b = statistics.median(times), statistics.median(inside["try"])
    print(f"`try` of a ~0.1 s experiment, median of {n}: unconfined {ms(times)}, through the drive socket {ms(inside['try'])}"
          f" -> {b / a:.2f}x")
    print(f"socket round trip of a `log` request from inside the sandbox, median of 20: {ms(inside['log'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--tries", type=int, default=10)
    args = ap.parse_args()
    print(f"bubblewrap: {'yes' if sandbox.bwrap_available() else 'no'}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="agent-confinement-") as tmp:
        (Path(tmp) / "agents").mkdir()
        startup(Path(tmp), args.runs)
        tries(Path(tmp), args.tries)


if __name__ == "__main__":
    main()
