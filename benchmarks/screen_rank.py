"""Is screening sound on nanogpt? The rank correlation between short- and full-budget scores.

Draws N configurations the way `tune` draws its first candidates (the template's own search space,
random sampler, one search seed), runs each as the harness would (train.py then the protected
evaluate.py, seed 0) at the short budget and at the full budget, and prints Spearman's rho and
Kendall's tau between the two val_bpb columns, and how many of the full-budget top 3 a screen with
`promote = 0.02` would have let through.

    nice -n 10 python benchmarks/screen_rank.py --short 60 --full 300 --configs 15     # the issue's protocol
    nice -n 10 python benchmarks/screen_rank.py --short 30 --full 150 --configs 15     # the same ratio, half the time

One JSON line per run as it lands (append them with --out), then the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nanogpt"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nanogpt_runs import numbers  # noqa: E402


def draw_configs(n: int, seed: int) -> list[tuple[str, dict]]:
    """N train.py texts as tune's random sampler proposes them over the template's space (the
    default code first)."""
    from autoresearch.config import load_config
    from autoresearch.proposers import Context
    from autoresearch.proposers.tune import TuneProposer

    config = load_config(EXAMPLE)
    config.proposer = config.proposer.model_copy(update={"sampler": "random", "seed": seed})
    text = (EXAMPLE / "train.py").read_text()
    out = [(text, {})]
    tp = TuneProposer(config, [])
    for i in range(1, n):
        ctx = Context(config=config, root=EXAMPLE, worktree=EXAMPLE, files={"train.py": text}, history=[], best=None,
                      noise=None, run_dir=Path(tempfile.mkdtemp()), experiment_id=i)
        prop = tp.propose(ctx)
        out.append((prop.edits["train.py"], prop.meta.get("params", {})))
        tp.observe({"id": i, "status": "discard", "metric": 9.0 + i, "proposal": prop.meta})  # keep the draws distinct
    return out


def run(exp: Path, text: str, budget: float, env: dict) -> dict:
    (exp / "train.py").write_text(text)
    art = Path(tempfile.mkdtemp(prefix="art-"))
    run_env = dict(env, AUTORESEARCH_BUDGET_S=str(budget), AUTORESEARCH_SEED="0", AUTORESEARCH_ARTIFACTS=str(art))
    t0 = time.time()
    tr = subprocess.run([sys.executable, "train.py"], cwd=exp, env=run_env, capture_output=True, text=True)
    ev = subprocess.run([sys.executable, "evaluate.py"], cwd=exp, env=run_env, capture_output=True, text=True) \
        if tr.returncode == 0 else None
    shutil.rmtree(art, ignore_errors=True)
    got = numbers(ev.stdout) if ev is not None and ev.returncode == 0 else {}
    return {"budget": budget, "val_bpb": got.get("val_bpb"), "wall_s": round(time.time() - t0, 1),
            "load": round(os.getloadavg()[0], 2), "failed": None if got else (tr.stdout + tr.stderr)[-300:]}


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def kendall(a: list[float], b: list[float]) -> float:
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += ((a[i] > a[j]) - (a[i] < a[j])) * ((b[i] > b[j]) - (b[i] < b[j]))
    return 2 * s / (n * (n - 1)) if n > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", type=float, default=60)
    ap.add_argument("--full", type=float, default=300)
    ap.add_argument("--configs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0, help="search seed of the draws")
    ap.add_argument("--promote", type=float, default=0.02)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="screen-rank-"))
    exp = work / "nanogpt"
    shutil.copytree(EXAMPLE, exp, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
    env = dict(os.environ)
    subprocess.run([sys.executable, "prepare.py"], cwd=exp, env=env, check=True, capture_output=True)
    rows = []
    for i, (text, params) in enumerate(draw_configs(args.configs, args.seed)):
        row = {"config": i, "params": params, "short": run(exp, text, args.short, env), "full": run(exp, text, args.full, env)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    ok = [r for r in rows if r["short"]["val_bpb"] is not None and r["full"]["val_bpb"] is not None]
    s, f = [r["short"]["val_bpb"] for r in ok], [r["full"]["val_bpb"] for r in ok]
    base_short = rows[0]["short"]["val_bpb"]
    promoted = [r for r in ok if base_short is None or r["short"]["val_bpb"] <= base_short * (1 + args.promote)]
    top3 = sorted(ok, key=lambda r: r["full"]["val_bpb"])[:3]
    summary = {"configs": len(rows), "both_scored": len(ok), "short_s": args.short, "full_s": args.full,
               "spearman": round(spearman(s, f), 3), "kendall": round(kendall(s, f), 3),
               "promoted_vs_default": len(promoted), "top3_full_promoted": sum(r in promoted for r in top3),
               "wall_short_s": round(sum(r["short"]["wall_s"] for r in rows)), "wall_full_s": round(sum(r["full"]["wall_s"] for r in rows))}
    print("summary", json.dumps(summary), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
