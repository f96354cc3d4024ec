"""Does `tune` raise the api template's throughput beyond the measured noise, constraints holding?

Runs the real CLI on a fresh copy of the api template (`autoresearch init --template api`, then
`autoresearch run --max-experiments N`), with the load shortened to --requests per evaluation and
the baseline measured --baseline-runs times, and reads the ledger afterwards. Prints the baseline's
mean and standard deviation (the noise), every experiment (status, throughput, p99, error rate,
best so far), the best kept throughput against the baseline in ratios and in baseline standard
deviations, and whether every keep held p99_ms <= its bound and error_rate = 0. Writes
results.json, trajectory.tsv and progress.png to --out.

    python benchmarks/api_tune.py                                  # 30 experiments, 1500 requests each
    python benchmarks/api_tune.py --experiments 10 --requests 800 --seed 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cli(*args: str, cwd: Path, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise SystemExit(f"{path}: expected {old!r} in it; the template changed, update this benchmark")
    path.write_text(text.replace(old, new, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=30)
    ap.add_argument("--requests", type=int, default=1500, help="measured requests per evaluation")
    ap.add_argument("--baseline-runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="the tune proposer's seed")
    ap.add_argument("--out", type=Path, default=HERE / "api_tune")
    ap.add_argument("--work", type=Path, default=None, help="where the experiment folder goes (default: a temp dir)")
    args = ap.parse_args()

    work = (args.work or Path(tempfile.mkdtemp(prefix="api-tune-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    exp = work / "api"
    res = cli("init", str(exp), "--template", "api", cwd=work)
    if res.returncode != 0:
        raise SystemExit(f"init failed: {res.stderr.strip()}")
    toml = exp / "autoresearch.toml"
    edit(toml, "--requests 5000", f"--requests {args.requests}")
    edit(toml, "baseline_runs = 3", f"baseline_runs = {args.baseline_runs}")
    edit(toml, "# seed = 0", f"seed = {args.seed}")
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "benchmark settings"],
                   cwd=exp, check=True)
    config = tomllib.loads(toml.read_text())
    bounds = {c["name"]: c for c in config["metric"]["constraints"]}

    print(f"api template in {exp}: {args.experiments} experiments, {args.requests} requests each, "
          f"{args.baseline_runs} baseline runs, tune seed {args.seed}", flush=True)
    t0 = time.monotonic()
    res = cli("run", str(exp), "--max-experiments", str(args.experiments), cwd=work)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"run failed (exit {res.returncode}): {res.stderr[-2000:]}")

    records = [r for r in map(json.loads, (exp / ".autoresearch" / "ledger.jsonl").read_text().splitlines())
               if r.get("kind") == "experiment"]
    base = records[0]
    base_vals = [r["metrics"]["throughput_rps"] for r in base["runs"]]
    base_mean, base_std = statistics.fmean(base_vals), statistics.stdev(base_vals) if len(base_vals) > 1 else 0.0
    base_p99 = [r["metrics"]["p99_ms"] for r in base["runs"]]

    rows, best = [], base_mean
    for r in records:
        runs = [x for x in r.get("runs", []) if x.get("metrics")]
        mean = lambda k: statistics.fmean(x["metrics"][k] for x in runs) if runs and all(k in x["metrics"] for x in runs) else None  # noqa: E731
        if r["status"] == "keep":
            best = r["metric"]
        rows.append({"id": r["id"], "status": r["status"], "throughput_rps": mean("throughput_rps"), "p99_ms": mean("p99_ms"),
                     "error_rate": mean("error_rate"), "repeats": len(runs), "best_so_far": best,
                     "params": (r.get("proposal") or {}).get("params", {}), "reason": r.get("reason", "")})
    keeps = [row for row in rows if row["status"] == "keep"]
    held = all(row["p99_ms"] is not None and row["p99_ms"] <= bounds["p99_ms"]["max"] and row["error_rate"] == 0 for row in keeps)
    counts: dict[str, int] = {}
    for row in rows[1:]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = {
        "command": " ".join(["python", "benchmarks/api_tune.py", *sys.argv[1:]]),
        "experiments": args.experiments, "requests": args.requests, "seed": args.seed, "wall_s": round(wall, 1),
        "baseline_runs": base_vals, "baseline_mean": base_mean, "baseline_std": base_std,
        "baseline_cv": base_std / base_mean if base_mean else None, "baseline_p99_ms": base_p99,
        "best": best, "ratio": best / base_mean, "gain_in_baseline_std": (best - base_mean) / base_std if base_std else None,
        "keeps": len(keeps), "counts": counts, "constraints_held_by_every_keep": held,
        "best_params": keeps[-1]["params"] if keeps else {},
    }

    print(f"baseline: {base_mean:.1f} rps, std {base_std:.1f} over {len(base_vals)} runs "
          f"(cv {100 * summary['baseline_cv']:.1f}%), p99 {statistics.fmean(base_p99):.1f} ms")
    print(f"{'id':>3} {'status':<12} {'rps':>8} {'p99 ms':>8} {'errors':>8} {'best':>8}  reason")
    for row in rows:
        f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        print(f"{row['id']:>3} {row['status']:<12} {f(row['throughput_rps']):>8} {f(row['p99_ms']):>8} "
              f"{f(row['error_rate'], 4):>8} {row['best_so_far']:>8.1f}  {row['reason'][:90]}")
    gain = summary["gain_in_baseline_std"]
    print(f"best kept: {best:.1f} rps = {summary['ratio']:.2f}x the baseline, "
          f"{'%.1f' % gain if gain is not None else '-'} baseline std above it; keeps {len(keeps)}; {counts}")
    print(f"every keep held p99_ms <= {bounds['p99_ms']['max']:g} and error_rate = 0: {held}; wall {wall / 60:.1f} min")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "trajectory": rows}, indent=1) + "\n")
    with open(args.out / "trajectory.tsv", "w") as fh:
        fh.write("id\tstatus\tthroughput_rps\tp99_ms\terror_rate\tbest_so_far\treason\n")
        for row in rows:
            fh.write("\t".join(str(row[k]) for k in ("id", "status", "throughput_rps", "p99_ms", "error_rate", "best_so_far"))
                     + "\t" + row["reason"].replace("\t", " ") + "\n")
    chart(rows, base_mean, base_std, args.out / "progress.png", bounds)
    print(f"wrote {args.out / 'results.json'}, trajectory.tsv and progress.png")


def chart(rows: list[dict], base_mean: float, base_std: float, path: Path, bounds: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"baseline": "black", "keep": "tab:green", "discard": "tab:gray", "suspicious": "tab:orange",
              "rejected": "tab:red", "crash": "tab:red"}
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.axhspan(base_mean - 2 * base_std, base_mean + 2 * base_std, color="tab:blue", alpha=0.15,
               label="baseline mean ± 2 std")
    for row in rows:
        if row["throughput_rps"] is None:
            continue
        c = colors.get(row["status"], "tab:orange")
        ax.scatter(row["id"], row["throughput_rps"], color=c, s=30 if row["status"] != "keep" else 60, zorder=3)
        ax2.scatter(row["id"], row["p99_ms"], color=c, s=20, zorder=3)
    ax.step([r["id"] for r in rows], [r["best_so_far"] for r in rows], where="post", color="tab:green", label="best kept")
    for status, c in colors.items():
        if any(r["status"] == status for r in rows):
            ax.scatter([], [], color=c, label=status)
    ax.set_ylabel("throughput (requests/s)")
    ax.set_title("tune on the api template: throughput per experiment")
    ax.legend(fontsize=8, loc="upper left")
    ax2.axhline(bounds["p99_ms"]["max"], color="tab:red", linestyle="--", label="p99 bound")
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 (ms)")
    ax2.set_xlabel("experiment")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
