"""Does `tune` lower the fraud template's expected cost by more than the measured noise?

Runs the real CLI (`autoresearch init --template fraud` + `autoresearch run --max-experiments N`)
once per proposer seed, each in a fresh folder, and reads the ledger afterwards. Prints, per seed,
the baseline (mean of its 3 seeded runs) and that noise (their std), the best kept expected cost,
the gain in units of the noise, the keeps, and the holdout score of baseline and best (the
`holdout` command, run by the loop at stop). Writes the trajectories (best kept so far against
experiment number) to benchmarks/fraud_tune/progress.png and the numbers to results.json.

    python benchmarks/fraud_tune.py                       # seeds 0,1,2 x 30 experiments
    python benchmarks/fraud_tune.py --seeds 0 --experiments 10 --jobs 1

The data is prepared in $AUTORESEARCH_CACHE (default ~/.cache/autoresearch) by the template's
setup; it must not lie under /tmp, which the sandbox replaces with an empty one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path(__file__).resolve().parent / "fraud_tune"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=cwd, capture_output=True, text=True)


def one_seed(seed: int, experiments: int, work: Path) -> dict:
    exp = work / f"seed{seed}"
    res = cli("init", str(exp), "--template", "fraud", cwd=work)
    if res.returncode != 0:
        raise SystemExit(f"init failed: {res.stderr}")
    toml = exp / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('kind = "tune"\n', f'kind = "tune"\nseed = {seed}\n', 1))
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "seed"],
                   cwd=exp, check=True)
    t0 = time.monotonic()
    res = cli("run", str(exp), "--max-experiments", str(experiments), cwd=work)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"run failed for seed {seed}: {(res.stdout + res.stderr)[-3000:]}")
    records = [json.loads(line) for line in (exp / ".autoresearch" / "ledger.jsonl").read_text().splitlines()]
    exps = [r for r in records if r.get("kind") == "experiment"]
    base = next(r for r in exps if r["status"] == "baseline")
    keeps = [r for r in exps if r["status"] == "keep"]
    best = keeps[-1] if keeps else base
    trajectory, best_so_far = [], base["metric"]
    for r in exps:
        if r["status"] == "keep":
            best_so_far = r["metric"]
        trajectory.append(best_so_far)
    holdout = {r["experiment"]: r["metric"] for r in records if r.get("kind") == "holdout" and r.get("status") == "ok"}
    counts: dict[str, int] = {}
    for r in exps[1:]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    noise = base.get("noise") or 0.0
    return {
        "seed": seed,
        "baseline": base["metric"],
        "noise": noise,
        "best": best["metric"],
        "best_id": best["id"],
        "best_recall": (best.get("metrics") or {}).get("recall"),
        "best_description": best.get("description"),
        "gain": base["metric"] - best["metric"],
        "gain_in_noise": (base["metric"] - best["metric"]) / noise if noise else None,
        "keeps": len(keeps),
        "first_keep": keeps[0]["id"] if keeps else None,
        "holdout_baseline": holdout.get(base["id"]),
        "holdout_best": holdout.get(best["id"]),
        "counts": counts,
        "trajectory": trajectory,
        "wall_s": wall,
    }


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        line, = ax.step(range(len(r["trajectory"])), r["trajectory"], where="post", label=f"seed {r['seed']}")
        ax.axhspan(r["baseline"] - r["noise"], r["baseline"] + r["noise"], color=line.get_color(), alpha=0.12)
    ax.set_xlabel("experiment (0 = baseline)")
    ax.set_ylabel("best kept expected cost ($ per borrower, validation)")
    ax.set_title("tune on the fraud template (bands: baseline +- its noise)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="proposer seeds, comma-separated")
    parser.add_argument("--experiments", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=3, help="seeds run side by side (each trains on one core)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cache = Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").resolve()
    if str(cache).startswith("/tmp/"):
        raise SystemExit(f"the data cache {cache} is under /tmp, which the sandbox replaces; set AUTORESEARCH_CACHE elsewhere")
    # prepare once, before the seeds start side by side
    prep = subprocess.run([sys.executable, "prepare.py"], cwd=Path(__file__).resolve().parents[1] / "examples" / "fraud",
                          capture_output=True, text=True)
    if prep.returncode != 0:
        raise SystemExit(prep.stderr.strip())
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fraud-tune-") as tmp:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda s: one_seed(s, args.experiments, Path(tmp)), seeds))
    print(f"{'seed':>4} {'baseline':>9} {'noise':>6} {'best':>8} {'gain':>7} {'gain/noise':>10} {'keeps':>5} "
          f"{'recall':>6} {'holdout base -> best':>22} {'wall':>6}")
    for r in results:
        hb, hk = r["holdout_baseline"], r["holdout_best"]
        hold = f"{hb:.1f} -> {hk:.1f}" if hb is not None and hk is not None else "-"
        rec = f"{r['best_recall']:.3f}" if r["best_recall"] is not None else "-"
        gn = f"{r['gain_in_noise']:.1f}" if r["gain_in_noise"] is not None else "-"
        print(f"{r['seed']:>4} {r['baseline']:>9.2f} {r['noise']:>6.2f} {r['best']:>8.2f} {r['gain']:>7.2f} {gn:>10} "
              f"{r['keeps']:>5} {rec:>6} {hold:>22} {r['wall_s'] / 60:>5.1f}m")
    beat = [r for r in results if r["gain"] > 2 * r["noise"]]
    print(f"best below the baseline by more than 2 x its noise: {len(beat)} of {len(results)} seeds; "
          f"mean gain {statistics.mean(r['gain'] / r['baseline'] for r in results):.1%} of the baseline")
    for r in results:
        print(f"seed {r['seed']} best (experiment {r['best_id']}): {r['best_description']}")
        print(f"seed {r['seed']} trajectory: {' '.join(f'{v:.1f}' for v in r['trajectory'])}")
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    chart(results, OUT / "progress.png")
    print(f"wrote {OUT / 'results.json'} and {OUT / 'progress.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
