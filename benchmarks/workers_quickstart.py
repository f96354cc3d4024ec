"""Real work with workers: the quickstart with 2 workers on this machine's cores against 1 worker.

For each search seed: a fresh copy of examples/quickstart (sandbox as configured), the baseline,
then N experiments through the library (`run_loop`, `tune` with that seed), once with
`workers = 1` and once with `workers = 2`. Prints the wall clock to N experiments and the best
val_loss reached for each, and the ratios.

    python benchmarks/workers_quickstart.py                        # seeds 0 1 2, 30 experiments
    python benchmarks/workers_quickstart.py --seeds 0 --experiments 60
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def copy_quickstart(dest: Path, seed: int) -> Path:
    shutil.copytree(ROOT / "examples" / "quickstart", dest, ignore=shutil.ignore_patterns("__pycache__", ".autoresearch"))
    toml = (dest / "autoresearch.toml").read_text()
    toml = re.sub(r"^# seed = 0.*$", f"seed = {seed}", toml, count=1, flags=re.M)
    (dest / "autoresearch.toml").write_text(toml)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@l", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@l"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "quickstart"]):
        subprocess.run(["git", *args], cwd=dest, check=True, env=env)
    return dest


def one(seed: int, workers: int, n: int, work: Path) -> dict:
    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress

    folder = copy_quickstart(work / f"s{seed}-w{workers}", seed)
    run_loop(folder, max_experiments=0, progress=Progress(quiet=True))
    t0 = time.monotonic()
    summary = run_loop(folder, max_experiments=n, progress=Progress(quiet=True), resources={"workers": workers})
    return {"seed": seed, "workers": workers, "experiments": summary.experiments, "wall_s": round(time.monotonic() - t0, 1),
            "baseline": summary.baseline, "best": summary.best, "kept": summary.kept, "load": round(os.getloadavg()[0], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--experiments", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("AUTORESEARCH_KEY_DIR", tempfile.mkdtemp(prefix="bench-keys-"))
    work = Path(tempfile.mkdtemp(prefix="workers-quickstart-"))
    rows = []
    for seed in args.seeds:
        for workers in (1, 2):  # alternated, so a change in the machine's load hits both arms alike
            row = one(seed, workers, args.experiments, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for seed in args.seeds:
        a, b = (next(r for r in rows if r["seed"] == seed and r["workers"] == w) for w in (1, 2))
        print(f"seed {seed}: {args.experiments} experiments in {a['wall_s']} s (1 worker) vs {b['wall_s']} s (2 workers), "
              f"speed-up {a['wall_s'] / b['wall_s']:.2f}x; best {a['best']:.4f} vs {b['best']:.4f}")
    speed = [next(r for r in rows if r["seed"] == s and r["workers"] == 1)["wall_s"] /
             next(r for r in rows if r["seed"] == s and r["workers"] == 2)["wall_s"] for s in args.seeds]
    print(f"median speed-up {statistics.median(speed):.2f}x over {len(args.seeds)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
