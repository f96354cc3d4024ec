"""Harness numbers for issue 2, measured on this machine.

    python benchmarks/harness.py

1. Overhead per experiment: wall time of one loop step minus the experiment's own process time and
   the proposer's time, median over 50 experiments of a command that does nothing (`true`).
2. `autoresearch status`, `log` and `verify` on a signed ledger of 10,000 experiments
   (whole command, interpreter start-up included), median of 3.
3. Peak RSS of the harness process over a 100-experiment run with the `tune` proposer.
"""

from __future__ import annotations

import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.ledger import Ledger
from autoresearch.loop import Session, step
from autoresearch.proposers import Proposal, Proposer, create
from autoresearch.signing import Signer

TOML = """[experiment]
run = "{run}"
budget = "5s"
timeout = "30s"
editable = ["knobs.py"]
[metric]
name = "score"
[judge]
baseline_runs = 1
"""


def make(root: Path, run: str) -> Path:
    root.mkdir()
    (root / "knobs.py").write_text("A = 1.0\nB = 32\n")
    (root / "autoresearch.toml").write_text(TOML.format(run=run))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


class Counter(Proposer):
    name = "counter"

    def __init__(self, config, history):
        super().__init__(config, history)
        self.n = 0

    def propose(self, ctx):
        self.n += 1
        return Proposal(f"A -> {self.n}", {"knobs.py": f"A = {self.n}.5\nB = 32\n"})


def overhead(tmp: Path, n: int = 50) -> list[float]:
    root = make(tmp / "overhead", "true; echo score: 1")
    s = Session(root)
    s.open()
    s.measure_baseline()
    p = Counter(s.config, [])
    timed_propose = p.propose
    spent = {"propose": 0.0}

    def propose(ctx):
        t = time.perf_counter()
        try:
            return timed_propose(ctx)
        finally:
            spent["propose"] += time.perf_counter() - t

    p.propose = propose  # type: ignore[method-assign]
    out = []
    for _ in range(n):
        spent["propose"] = 0.0
        t = time.perf_counter()
        rec = step(s, p)
        total = time.perf_counter() - t
        process = sum(r["wall_s"] for r in rec["runs"])
        out.append(total - process - spent["propose"])
    return out


def big_ledger(tmp: Path, n: int = 10_000) -> Path:
    """A signed ledger of N experiments with their patches on disk, as `verify` expects them."""
    root = make(tmp / "big", "true")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "branch", "autoresearch/bench", head], cwd=root, check=True)
    state = root / ".autoresearch"
    ledger = Ledger(state, signer=Signer.load_or_create("bench"))
    ledger.append({"kind": "start", "tag": "bench", "branch": "autoresearch/bench", "metric": "score", "base_commit": head,
                   "goal": "minimize", "public_key": ledger.signer.public_key, "key_id": "bench"})
    statuses = ["discard"] * 7 + ["crash", "discard", "timeout"]
    patch = "--- a/knobs.py\n+++ b/knobs.py\n@@ -1 +1 @@\n-A = 1.0\n+A = 2.0\n"
    patch_sha = hashlib.sha256(patch.encode()).hexdigest()
    for i in range(n):
        (state / "runs" / str(i)).mkdir(parents=True)
        (state / "runs" / str(i) / "diff.patch").write_text(patch)
        status = "baseline" if i == 0 else statuses[i % len(statuses)]
        ledger.append({"kind": "experiment", "id": i, "status": status, "reason": "score 1.0 vs best 1.1; a keep needs 0.01 below it",
                       "description": f"LR {i} -> {i + 1}, DEPTH 4 -> 6", "proposer": "tune", "proposal": {"params": {"LR": i, "DEPTH": 6}},
                       "parent": "a" * 40, "commit": "b" * 40, "tree": "c" * 40, "diff_sha256": patch_sha,
                       "metric": None if status in ("crash", "timeout") else 1.0 - i * 1e-5, "metrics": {"score": 1.0, "wall": 3.2},
                       "runs": [{"seed": 0, "exit_code": 0, "wall_s": 3.2, "peak_rss_mb": 120.0, "timed_out": False}],
                       "best": 1.0 - i * 1e-5, "delta": -0.001, "memory_gb": 0.1, "start": "2026-11-26T00:00:00", "end": "2026-11-26T00:00:03"})
    return root


def timed_cli(args: list[str], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rss_run(tmp: Path, n: int = 100) -> float:
    root = make(tmp / "rss", "true; echo score: 1")
    s = Session(root)
    s.open()
    s.measure_baseline()
    p = create(s.config, s.ledger.experiments())
    for _ in range(n):
        step(s, p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB on Linux


def main() -> None:
    os.environ.setdefault("AUTORESEARCH_KEY_DIR", tempfile.mkdtemp())
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        o = overhead(tmp)
        print(f"overhead per experiment (50, `true`): median {statistics.median(o) * 1000:.0f} ms, "
              f"p90 {sorted(o)[int(0.9 * len(o))] * 1000:.0f} ms   (goal <= 300 ms)")
        root = big_ledger(tmp)
        print(f"status on 10,000 records: {timed_cli(['status', str(root)]):.2f} s   (goal <= 1 s)")
        print(f"log on 10,000 records:    {timed_cli(['log', str(root)]):.2f} s   (goal <= 1 s)")
        print(f"verify on 10,000 records: {timed_cli(['verify', str(root)]):.2f} s   (goal <= 2 s)")
        print(f"python start-up alone:    {timed_cli(['--version']):.2f} s")
        print(f"harness peak RSS over a 100-experiment tune run: {rss_run(tmp):.0f} MB   (goal < 150 MB)")


if __name__ == "__main__":
    main()
