"""The shipped nanogpt train.py against the original's recipe (nanogpt_reference.py), alternately, in one run.

    python benchmarks/nanogpt_side_by_side.py                        # 60 s and 300 s, seeds 0 1 2
    python benchmarks/nanogpt_side_by_side.py --budgets 60 --seeds 0 --set DEPTH=2

Both are trained and scored as the harness does it (train.py, then the protected evaluate.py) on
the same prepared corpus, one run at a time, shipped and reference taking turns (the order flips
every seed, so a machine that slows down over the run hurts neither more); a short run first fills
the shipped file's compile cache, as the harness keeps it from one experiment to the next. Prints one JSON line
per run, then per budget the mean and std of val_bpb for each and the ratio shipped / reference
(the issue's target: <= 0.97). Ratios only mean something within one run: the CPU differs from
one machine to the next. `--set NAME=VALUE` changes a knob of the shipped train.py (a candidate
default); `--out FILE` appends the JSON lines.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nanogpt_runs import EXAMPLE, run_once, set_knobs, wait_for_load  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "nanogpt_reference.py"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], help="NAME=VALUE knobs of the shipped train.py")
    ap.add_argument("--only", choices=["shipped", "reference"], default=None, help="run one side only")
    ap.add_argument("--out", default=None, help="append the JSON lines here")
    ap.add_argument("--wait-load", type=float, default=None, help="before each run, wait for a load average below this")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanogpt-sbs-"))
    sides = {}
    for name in ("shipped", "reference"):
        exp = work / name
        shutil.copytree(EXAMPLE, exp, ignore=shutil.ignore_patterns("__pycache__", "artifacts", ".autoresearch"))
        train = set_knobs((exp / "train.py").read_text(), args.set) if name == "shipped" else REFERENCE.read_text()
        (exp / "train.py").write_text(train)
        sides[name] = exp
    env = dict(os.environ)
    subprocess.run([sys.executable, "prepare.py"], cwd=sides["shipped"], env=env, check=True)
    names = [args.only] if args.only else ["shipped", "reference"]
    if "shipped" in names:  # fill its compile cache ([experiment] cache in the harness), as after a first experiment
        row, _ = run_once(sides["shipped"], env, budget=2, seed=0, artifacts=work / "art-warm-up", evaluate=False)
        print(json.dumps({"side": "shipped", "warm_up": True, "train_wall_s": row["train_wall_s"]}), flush=True)
    results: dict[tuple[float, str], list[dict]] = {}
    for budget in args.budgets:
        for i, seed in enumerate(args.seeds):
            for name in (names if i % 2 == 0 else names[::-1]):
                wait_for_load(args.wait_load)
                row, _ = run_once(sides[name], env, budget=budget, seed=seed, artifacts=work / f"art-{name}-{seed}")
                row = {"side": name, **({"set": args.set} if name == "shipped" and args.set else {}), **row}
                print(json.dumps(row), flush=True)
                results.setdefault((budget, name), []).append(row)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print()
    print("| budget | side | val_bpb mean | std | tokens/s | whole run | runs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    means: dict[tuple[float, str], float] = {}
    for (budget, name), rows in results.items():
        bpbs = [r["val_bpb"] for r in rows if "val_bpb" in r]
        if not bpbs:
            print(f"| {budget:g} s | {name} | failed | | | | {len(rows)} |")
            continue
        means[(budget, name)] = statistics.mean(bpbs)
        std = statistics.stdev(bpbs) if len(bpbs) > 1 else float("nan")
        tok = statistics.mean(r.get("tokens_per_s", 0) for r in rows)
        wall = max(r["whole_wall_s"] for r in rows)
        print(f"| {budget:g} s | {name} | {means[(budget, name)]:.4f} | {std:.4f} | {tok:,.0f} | <= {wall:.0f} s | {len(bpbs)} |")
    for budget in args.budgets:
        if (budget, "shipped") in means and (budget, "reference") in means:
            ratio = means[(budget, "shipped")] / means[(budget, "reference")]
            print(f"{budget:g} s: shipped / reference val_bpb = {ratio:.4f} (target <= 0.97)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
