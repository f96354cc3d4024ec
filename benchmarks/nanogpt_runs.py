"""Measure the bundled GPT experiment: train.py then evaluate.py, as the harness runs them.

    python benchmarks/nanogpt_runs.py --budget 300 --seeds 0 1 2 [--set DEPTH=6 ...] [--vocab 256]

Each run prints one JSON line (val_bpb, tokens/s, MFU, wall times, the load average before and
after: two cores are shared, so a busy machine reads slow) and a summary (mean, std over seeds).
`--set NAME=VALUE` rewrites a hyperparameter of a copy of train.py, as the tune proposer would;
`--vocab N` prepares a copy of the corpus with VOCAB_SIZE = N (256 = byte-level) in its own cache.
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

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nanogpt"


def numbers(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_]+):\s+(-?[0-9.eE+-]+)\s*$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def load() -> float:
    return round(os.getloadavg()[0], 2)


def set_knobs(train: str, items: list[str]) -> str:
    """train.py's text with each NAME=VALUE hyperparameter rewritten, as the tune proposer would."""
    for item in items:
        name, value = item.split("=", 1)
        train, n = re.subn(rf"^{name} = [^ \n]+", f"{name} = {value}", train, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"train.py has no knob {name}")
    return train


def wait_for_load(limit: float | None, patience_s: float = 1200) -> None:
    """Wait (up to patience_s) until the 1-minute load average is below limit: a shared core reads slow."""
    waited = time.time()
    while limit is not None and load() >= limit and time.time() - waited < patience_s:
        time.sleep(10)


def run_once(exp: Path, env: dict, *, budget: float, seed: int, artifacts: Path, evaluate: bool = True) -> tuple[dict, str]:
    """train.py then evaluate.py in `exp`, as the harness runs them: (a JSON-ready row, the whole output)."""
    run_env = dict(env, AUTORESEARCH_BUDGET_S=str(budget), AUTORESEARCH_SEED=str(seed),
                   AUTORESEARCH_ARTIFACTS=str(artifacts))
    load_before, t0 = load(), time.time()
    tr = subprocess.run([sys.executable, "train.py"], cwd=exp, env=run_env, capture_output=True, text=True)
    t1 = time.time()
    ev = subprocess.run([sys.executable, "evaluate.py"] if evaluate else ["true"], cwd=exp, env=run_env,
                        capture_output=True, text=True)
    t2 = time.time()
    row = {"seed": seed, "budget": budget, "train_exit": tr.returncode, "eval_exit": ev.returncode,
           **numbers(tr.stdout), **numbers(ev.stdout),
           "train_wall_s": round(t1 - t0, 1), "eval_wall_s": round(t2 - t1, 1), "whole_wall_s": round(t2 - t0, 1),
           "load_before": load_before, "load_after": load()}
    log = tr.stdout + tr.stderr + ev.stdout + ev.stderr
    if tr.returncode or ev.returncode:
        row["tail"] = log[-1500:]
    return row, log


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", nargs="*", default=[], help="NAME=VALUE hyperparameters of train.py")
    ap.add_argument("--vocab", type=int, default=None, help="prepare with this VOCAB_SIZE in a separate cache")
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--logs", default=None, help="save each run's train and evaluate output in this folder")
    ap.add_argument("--no-eval", action="store_true", help="train only (throughput)")
    ap.add_argument("--wait-load", type=float, default=None,
                    help="before each run, wait (up to 20 min) until the 1-minute load average is below this")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanogpt-bench-"))
    exp = work / "nanogpt"
    shutil.copytree(EXAMPLE, exp, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
    env = dict(os.environ)
    if args.corpus:
        env["AUTORESEARCH_CORPUS"] = args.corpus
    if args.vocab:
        prep = (exp / "prepare.py").read_text()
        (exp / "prepare.py").write_text(re.sub(r"^VOCAB_SIZE = \d+", f"VOCAB_SIZE = {args.vocab}", prep, count=1, flags=re.M))
        cache = Path(env.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()
        vcache = cache.parent / f"{cache.name}-vocab{args.vocab}"
        vcache.mkdir(parents=True, exist_ok=True)
        if (cache / "hardware").is_dir() and not (vcache / "hardware").exists():
            shutil.copytree(cache / "hardware", vcache / "hardware")
        env["AUTORESEARCH_CACHE"] = str(vcache)
    (exp / "train.py").write_text(set_knobs((exp / "train.py").read_text(), args.set))

    subprocess.run([sys.executable, "prepare.py"], cwd=exp, env=env, check=True)
    results = []
    for seed in args.seeds:
        wait_for_load(args.wait_load)
        row, log = run_once(exp, env, budget=args.budget, seed=seed, artifacts=work / f"art-{seed}",
                            evaluate=not args.no_eval)
        row.update({"set": args.set, "vocab": args.vocab})
        if args.logs:
            logs = Path(args.logs)
            logs.mkdir(parents=True, exist_ok=True)
            label = "-".join([f"seed{seed}", f"b{args.budget:g}", *(s.replace("=", "") for s in args.set)])
            (logs / f"{label}.log").write_text(log)
        print(json.dumps(row), flush=True)
        results.append(row)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    bpbs = [r["val_bpb"] for r in results if "val_bpb" in r]
    if bpbs:
        summary = {"val_bpb_mean": round(statistics.mean(bpbs), 4),
                   "val_bpb_std": round(statistics.stdev(bpbs), 4) if len(bpbs) > 1 else None,
                   "tokens_per_s_mean": round(statistics.mean(r.get("tokens_per_s", 0) for r in results)),
                   "mfu_mean": round(statistics.mean(r.get("mfu_percent", 0) for r in results), 1)}
        print("summary", json.dumps(summary), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
