"""Scheduling efficiency of `--workers K` on one machine, with an experiment that sleeps for its
budget (so the cores are not the limit and the harness's own overhead is what is measured).

For each K: a fresh copy of a tiny experiment, the baseline measured first (not timed), then the
loop through the library (`run_loop`, the `tune` proposer, the default sandbox) until PER_WORKER x K
experiments have landed. Prints experiments per hour for each K and the efficiency
  eff(K) = rate(K) / (K x rate(1))            (goal: >= 0.9 for K = 2, 4, 8)

    python benchmarks/workers_scaling.py                     # budget 3 s, K = 1 2 4 8, 4 per worker
    python benchmarks/workers_scaling.py --budget 5 --workers 1 2 4 8 --per-worker 6 --sandbox none
    python benchmarks/workers_scaling.py --budget 5 --workers 1 4 --ray 4     # and K = 4 on a 2-node Ray cluster
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TRAIN = '''\
import os, time
X = 3.0
time.sleep(float(os.environ["AUTORESEARCH_BUDGET_S"]))
print(f"score: {(X - 1.0) ** 2}")
'''

TOML = '''\
[experiment]
run = "python train.py"
budget = "{budget}s"
timeout = "{timeout}s"
editable = ["train.py"]
sandbox = "{sandbox}"

[metric]
name = "score"
goal = "minimize"

[judge]
baseline_runs = 1

[proposer]
kind = "tune"
seed = 0
'''


def make(folder: Path, budget: float, sandbox: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(TRAIN)
    (folder / "autoresearch.toml").write_text(TOML.format(budget=budget, timeout=budget * 4 + 30, sandbox=sandbox))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@l", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@l"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=folder, check=True, env=env)
    return folder


def overheads(folder: Path) -> list[float]:
    """Per experiment: its time from start to record, less the time its processes ran."""
    from datetime import datetime

    from autoresearch.ledger import Ledger

    out = []
    for rec in Ledger(folder / ".autoresearch").experiments()[1:]:
        span = (datetime.fromisoformat(rec["end"]) - datetime.fromisoformat(rec["start"])).total_seconds()
        ran = sum((r.get("wall_s") or 0) + (r.get("evaluate_wall_s") or 0) for r in rec.get("runs") or [])
        out.append(span - ran)
    return out


def measure(k: int, args: argparse.Namespace, work: Path, backend: str) -> dict:
    import statistics

    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress

    folder = make(work / f"{backend}-k{k}", args.budget, args.sandbox)
    run_loop(folder, max_experiments=0, progress=Progress(quiet=True))  # the baseline, not timed
    n = args.per_worker * k
    t0 = time.monotonic()
    summary = run_loop(folder, max_experiments=n, progress=Progress(quiet=True),
                       resources={"workers": k, "backend": backend if k > 1 or backend == "ray" else "local"})
    wall = time.monotonic() - t0
    return {"backend": backend, "workers": k, "experiments": summary.experiments, "wall_s": round(wall, 2),
            "per_hour": round(summary.experiments / wall * 3600),
            "overhead_median_s": round(statistics.median(overheads(folder)), 3), "load": round(os.getloadavg()[0], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--per-worker", type=int, default=4)
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--ray", type=int, nargs="*", default=None,
                    help="also run these K on a local Ray cluster of two nodes (K/2 logical CPUs each)")
    args = ap.parse_args()
    os.environ.setdefault("AUTORESEARCH_KEY_DIR", tempfile.mkdtemp(prefix="bench-keys-"))
    work = Path(tempfile.mkdtemp(prefix="workers-scaling-"))
    rows = []
    for k in args.workers:
        row = measure(k, args, work, "local")
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.ray:
        import ray
        from ray.cluster_utils import Cluster

        half = max(max(args.ray) // 2, 1)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": half, "include_dashboard": False})
        cluster.add_node(num_cpus=half)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
        try:
            for k in args.ray:
                row = measure(k, args, work, "ray")
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()
    base = next((r for r in rows if r["workers"] == 1 and r["backend"] == "local"), None)
    if base:
        for r in rows:
            eff = r["per_hour"] / (r["workers"] * base["per_hour"])
            print(f"{r['backend']} K={r['workers']}: {r['per_hour']} experiments/hour, efficiency {eff:.2f} (goal >= 0.90), "
                  f"median overhead per experiment {r['overhead_median_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
