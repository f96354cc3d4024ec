"""Does `tune` find a kept improvement on the quickstart within 20 experiments, for every seed?

Runs the real CLI (`autoresearch init` + `autoresearch run`) on fresh copies of the quickstart
template, one per proposer seed, and reads the ledger afterwards. Prints, per seed, the experiment
index of the first keep, the number of keeps and the improvement over the baseline.

    python benchmarks/tune_quickstart.py                      # 5 seeds x 20 experiments, TPE
    python benchmarks/tune_quickstart.py --seeds 0-9 --sampler cmaes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seeds_arg(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=cwd, capture_output=True, text=True)


def one_seed(seed: int, experiments: int, sampler: str, work: Path) -> dict:
    exp = work / f"seed{seed}"
    res = cli("init", str(exp), "--template", "quickstart", cwd=work)
    if res.returncode != 0:
        raise SystemExit(f"init failed: {res.stderr}")
    toml = exp / "autoresearch.toml"
    text = toml.read_text().replace("# seed = 0 ", f"seed = {seed}  ").replace('# sampler = "cmaes"', f'sampler = "{sampler}"')
    toml.write_text(text)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "seed"], cwd=exp, check=True)
    t0 = time.monotonic()
    res = cli("run", str(exp), "--max-experiments", str(experiments), cwd=work)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"run failed for seed {seed}: {res.stderr[-2000:]}")
    lines = (exp / ".autoresearch" / "ledger.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r.get("kind") == "experiment"]
    base = next(r for r in records if r["status"] == "baseline")
    keeps = [r for r in records if r["status"] == "keep"]
    best = keeps[-1]["metric"] if keeps else base["metric"]
    counts: dict[str, int] = {}
    for r in records[1:]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "seed": seed,
        "first_keep": keeps[0]["id"] if keeps else None,
        "keeps": len(keeps),
        "baseline": base["metric"],
        "noise": base.get("noise"),
        "best": best,
        "improvement": (base["metric"] - best) / base["metric"],
        "counts": counts,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0-4"), help="proposer seeds, e.g. 0-4 or 1,3")
    ap.add_argument("--experiments", type=int, default=20)
    ap.add_argument("--sampler", default="tpe", choices=["tpe", "cmaes", "random"])
    ap.add_argument("--keep", action="store_true", help="keep the experiment folders (printed at the end)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tune-quickstart-"))
    env_key = tempfile.mkdtemp(prefix="keys-")
    os.environ.setdefault("AUTORESEARCH_KEY_DIR", env_key)  # don't litter the user's key folder
    print(f"quickstart, tune ({args.sampler}), {args.experiments} experiments per seed, seeds {args.seeds}")
    print(f"{'seed':>4}  {'first keep':>10}  {'keeps':>5}  {'baseline':>9}  {'noise':>7}  {'best':>8}  {'improvement':>11}  {'wall':>6}  statuses")
    results = []
    try:
        for seed in args.seeds:
            r = one_seed(seed, args.experiments, args.sampler, work)
            results.append(r)
            fk = str(r["first_keep"]) if r["first_keep"] is not None else "none"
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(r["counts"].items()))
            print(f"{r['seed']:>4}  {fk:>10}  {r['keeps']:>5}  {r['baseline']:>9.4f}  {r['noise'] or 0:>7.4f}  {r['best']:>8.4f}  "
                  f"{r['improvement']:>10.1%}  {r['wall_s']:>5.0f}s  {statuses}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(env_key, ignore_errors=True)
    found = [r for r in results if r["first_keep"] is not None]
    print(f"kept improvement within {args.experiments} experiments: {len(found)}/{len(results)} seeds")
    if found:
        print(f"first keep at experiment: median {statistics.median(r['first_keep'] for r in found)}, "
              f"worst {max(r['first_keep'] for r in found)}; improvement over baseline: median "
              f"{statistics.median(r['improvement'] for r in results):.1%}")
    if args.keep:
        print(f"experiment folders: {work}")


if __name__ == "__main__":
    main()
