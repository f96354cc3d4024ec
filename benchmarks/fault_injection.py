"""Crash safety: SIGKILL the harness at random points and restart it, until the ledger holds N experiments.

    python benchmarks/fault_injection.py                 # >= 50 experiments and >= 50 kills, seed 0
    python benchmarks/fault_injection.py --experiments 200 --min-kills 0 --seed 3
    python benchmarks/fault_injection.py --workers 4     # four experiments at once, killed anywhere

Each round starts `autoresearch run DIR -n PER_START` (the real CLI, a subprocess) on a tiny
experiment with the `tune` proposer, waits until the harness holds the folder's lock, sleeps a
seeded random 0-1.5 s and sends SIGKILL (a round that finishes first is a clean exit). After the
last round one clean start lets the harness recover, then the record is checked:

- `autoresearch verify` exits 0;
- experiment ids are 0..n-1, each once (in order with one worker); no tried code (git tree) is recorded twice;
- every complete ledger line seen on disk right after a kill is still there, byte for byte
  (records lost = 0), and results.tsv agrees with the ledger;
- the run branch's head is the last kept record's commit;
- no experiment process outlived its harness; no output ever held a traceback.

The test suite imports `inject` and `check` (tests/test_fault_injection.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TRAIN = '''\
import os
X = 3.0
Y = 0.5
LR = 0.01
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
print(f"score: {(X - 1.0) ** 2 + (Y - 2.0) ** 2 + abs(LR - 0.1) + 0.001 * seed}")
'''

TOML = '''\
[experiment]
run = "python train.py"
budget = "10s"
timeout = "30s"
editable = ["train.py"]
sandbox = "none"

[metric]
name = "score"
goal = "minimize"

[judge]
baseline_runs = 2

[proposer]
kind = "tune"
seed = {seed}
'''

GIT_ENV = {"GIT_AUTHOR_NAME": "fi", "GIT_AUTHOR_EMAIL": "fi@localhost",
           "GIT_COMMITTER_NAME": "fi", "GIT_COMMITTER_EMAIL": "fi@localhost"}


def make_experiment(root: Path, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(TRAIN)
    (root / "autoresearch.toml").write_text(TOML.format(seed=seed))
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "tiny experiment"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=env)
    return root


@dataclass
class Summary:
    kills: int = 0
    restarts: int = 0
    clean_exits: int = 0
    kills_mid_experiment: int = 0  # between an experiment's commit and its record (its intent in pending/ on disk)
    kills_between: int = 0  # proposing, recovering, or between one record and the next
    experiments: int = 0
    interrupted: int = 0
    kept: int = 0
    torn_lines_repaired: int = 0
    records_lost: int = 0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"kills: {self.kills} ({self.kills_mid_experiment} mid-experiment, {self.kills_between} between experiments)",
            f"restarts: {self.restarts} ({self.clean_exits} ended on their own before the kill)",
            f"experiments: {self.experiments} ({self.interrupted} recorded as interrupted, {self.kept} kept)",
            f"torn ledger lines repaired: {self.torn_lines_repaired}",
            f"records lost: {self.records_lost}",
            f"wall time: {self.wall_s:.1f} s",
            "checks: all passed" if not self.problems else "PROBLEMS:\n  " + "\n  ".join(self.problems),
        ]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoresearch.cli", *args]


def _wait_for_lock(root: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """True once this harness holds the folder's lock (so the kill lands in the loop, not in imports)."""
    lock = root / ".autoresearch" / "lock"
    want = f"pid {proc.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if lock.read_text().strip() == want:
                return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


def _complete_lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)


def _experiments(path: Path) -> list[dict]:
    out = []
    for line in _complete_lines(path):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "experiment":
            out.append(rec)
    return out


def _leftover_processes(root: Path) -> list[int]:
    """Live processes whose working folder is inside the experiment (its runs, none else)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cwd.startswith(str(root)) and state != "Z":
            found.append(int(entry))
    return found


def inject(root: Path, *, experiments: int = 50, min_kills: int = 0, seed: int = 0, per_start: int = 8,
           max_delay: float = 1.5, env: dict[str, str] | None = None, log=print,
           workers: int = 1) -> tuple[Summary, list[list[bytes]]]:
    """Kill and restart the harness until the ledger holds `experiments` records and at least
    `min_kills` kills happened. Returns the summary and the ledger snapshots taken after each kill."""
    env = {**os.environ, **(env or {})}
    rng = random.Random(seed)
    summary = Summary()
    snapshots: list[list[bytes]] = []
    ledger = root / ".autoresearch" / "ledger.jsonl"
    pending = root / ".autoresearch" / "pending"
    started = time.monotonic()
    max_rounds = 10 * (experiments + min_kills) + 10  # a harness that makes no progress must not loop forever
    while len(_experiments(ledger)) < experiments or summary.kills < min_kills:
        if summary.restarts >= max_rounds:
            summary.problems.append(f"no progress: {len(_experiments(ledger))} experiments after {summary.restarts} rounds")
            break
        proc = subprocess.Popen(_cli("run", str(root), "-n", str(per_start), "--workers", str(workers)), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        summary.restarts += 1
        held = _wait_for_lock(root, proc)
        delay = rng.uniform(0, max_delay)
        try:
            out, err = proc.communicate(timeout=delay if held else 120)
            summary.clean_exits += 1
            if proc.returncode != 0:
                summary.problems.append(f"round {summary.restarts}: exit {proc.returncode}: {err.strip()[-500:]}")
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            summary.kills += 1
            mid = pending.is_dir() and any(pending.glob("*.json"))
            summary.kills_mid_experiment += mid
            summary.kills_between += not mid
            snapshots.append(_complete_lines(ledger))
        text = out + err
        summary.torn_lines_repaired += "dropped a torn last" in text
        if "Traceback" in text:
            summary.problems.append(f"round {summary.restarts}: a traceback was printed:\n{text[-2000:]}")
        log(f"round {summary.restarts:3d}: {'killed' if proc.returncode == -9 else 'exited'} after "
            f"{delay:.2f} s; {len(_experiments(ledger))} experiments")
    # One last clean start: recover whatever the last kill left, record it, and stop.
    final = subprocess.run(_cli("run", str(root), "-n", "0"), env=env, capture_output=True, text=True, timeout=300)
    summary.restarts += 1
    summary.torn_lines_repaired += "dropped a torn last" in final.stdout + final.stderr
    if final.returncode != 0 or "Traceback" in final.stdout + final.stderr:
        summary.problems.append(f"final start: exit {final.returncode}: {final.stderr.strip()[-500:]}")
    summary.wall_s = time.monotonic() - started
    return summary, snapshots


def check(root: Path, summary: Summary, snapshots: list[list[bytes]], env: dict[str, str] | None = None) -> Summary:
    """Fill in the counts and every problem found in the record after the kills."""
    from autoresearch.ledger import Ledger

    env = {**os.environ, **(env or {})}
    state = root / ".autoresearch"
    final_lines = (state / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    summary.records_lost = 0
    for snap in snapshots:
        for i, line in enumerate(snap):
            if i >= len(final_lines) or final_lines[i] != line:
                summary.records_lost += 1
    if summary.records_lost:
        summary.problems.append(f"{summary.records_lost} ledger lines seen after a kill are gone or changed")
    ver = subprocess.run(_cli("verify", str(root)), env=env, capture_output=True, text=True, timeout=300)
    if ver.returncode != 0:
        summary.problems.append(f"verify exited {ver.returncode}: {ver.stdout.strip()[-1000:]} {ver.stderr.strip()[-500:]}")
    ledger = Ledger(state)
    recs = ledger.experiments()
    summary.experiments = len(recs)
    summary.interrupted = sum(r["status"] == "interrupted" for r in recs)
    summary.kept = sum(r["status"] == "keep" for r in recs)
    ids = [r["id"] for r in recs]
    if sorted(ids) != list(range(len(recs))):  # with workers they land in the order they finish
        summary.problems.append(f"experiment ids are not 0..{len(recs) - 1}, each once: {ids}")
    trees = [r["tree"] for r in recs if r.get("tree") and r["status"] not in ("interrupted", "invalid")]
    if len(trees) != len(set(trees)):
        summary.problems.append("the same code was recorded as run more than once")
    if not ledger.results_agree():
        summary.problems.append("results.tsv does not agree with the ledger")
    rows = (state / "results.tsv").read_text().splitlines()
    if len(rows) != len(recs) + 1:
        summary.problems.append(f"results.tsv has {len(rows) - 1} rows for {len(recs)} experiments")
    header = ledger.header() or {}
    head = subprocess.run(["git", "rev-parse", f"refs/heads/{header.get('branch')}"], cwd=root,
                          capture_output=True, text=True).stdout.strip()
    best = [r for r in recs if r["status"] in ("baseline", "keep")]
    expected = best[-1]["commit"] if best else header.get("base_commit")
    if head != expected:
        summary.problems.append(f"branch head {head[:12]} is not the last kept record's commit {str(expected)[:12]}")
    if (state / "pending").is_dir() and any((state / "pending").glob("*.json")):
        summary.problems.append("an intent in pending/ left after a clean stop")
    left = _leftover_processes(root)
    if left:
        summary.problems.append(f"experiment processes outlived their harness: {left}")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=50)
    ap.add_argument("--min-kills", type=int, default=50, help="keep going until at least this many kills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-start", type=int, default=8, help="--max-experiments of each start")
    ap.add_argument("--max-delay", type=float, default=1.5, help="kill after a random 0..MAX seconds of holding the lock")
    ap.add_argument("--workers", type=int, default=1, help="experiments at once (--workers of each start)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_experiment(Path(tmp) / "exp", seed=args.seed)
        env = {"AUTORESEARCH_KEY_DIR": str(Path(tmp) / "keys"), **GIT_ENV}
        summary, snaps = inject(root, experiments=args.experiments, min_kills=args.min_kills, seed=args.seed,
                                per_start=args.per_start, max_delay=args.max_delay, env=env,
                                log=(lambda *_: None) if args.quiet else print, workers=args.workers)
        check(root, summary, snaps, env=env)
    print(f"fault injection, seed {args.seed}, {args.workers} worker(s), per start -n {args.per_start}, "
          f"kill delay 0-{args.max_delay:g} s:")
    for line in summary.lines():
        print("  " + line)
    return 0 if not summary.problems else 1


if __name__ == "__main__":
    sys.exit(main())
