"""Does `tune` find a kept improvement on the quickstart within 20 experiments, for every seed?

Runs the real CLI (`autoresearch init` + `autoresearch run`) on fresh copies of the quickstart
template, one per proposer seed, and reads the ledger afterwards. Prints, per seed, the experiment
index of the first keep, the number of keeps and the improvement over the baseline.

    python benchmarks/tune_quickstart.py                      # 5 seeds x 20 experiments, TPE
    python benchmarks/tune_quickstart.py --seeds 0-9 --sampler cmaes

`--simulate` compares search strategies instead (TPE over all knobs, one-or-two-knob mutations,
ranges fixed at the baseline, random, CMA-ES) on many seeds quickly: train.py runs in-process and
the loop's own judge decides, with the loop's seeds (baseline: 0,1,2; a candidate: 0, re-runs 1,2).
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


STRATEGIES = {
    "tpe, all knobs, 5 startup": dict(_MUTATE_P=0.0, _TPE_STARTUP=5, _ANCHOR="best"),
    "tpe, all knobs, 10 startup": dict(_MUTATE_P=0.0, _TPE_STARTUP=10, _ANCHOR="best"),
    "tpe, ranges fixed at baseline": dict(_MUTATE_P=0.0, _TPE_STARTUP=10, _ANCHOR="baseline"),
    "tpe + 50% 1-2 knob mutations": dict(_MUTATE_P=0.5, _TPE_STARTUP=5, _ANCHOR="best"),
    "1-2 knob mutations only": dict(_MUTATE_P=1.0, _TPE_STARTUP=5, _ANCHOR="best"),
    "random": dict(_MUTATE_P=0.0, _TPE_STARTUP=5, _ANCHOR="best", sampler="random"),
    "cmaes": dict(_MUTATE_P=0.0, _TPE_STARTUP=5, _ANCHOR="best", sampler="cmaes"),
}


def simulate(seeds: list[int], experiments: int) -> None:
    import contextlib
    import hashlib
    import io

    import numpy as np

    import autoresearch.proposers.tune as tune
    from autoresearch import judge as J
    from autoresearch.config import load_config
    from autoresearch.proposers import Context

    qs = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
    sys.path.insert(0, str(qs))
    import prepare  # the quickstart's protected data module

    targets = prepare.load_val_targets()
    source = (qs / "train.py").read_text()
    art = Path(tempfile.mkdtemp(prefix="sim-art-"))
    os.environ["AUTORESEARCH_ARTIFACTS"] = str(art)

    def score(src: str, seed: int) -> float | None:
        os.environ["AUTORESEARCH_SEED"] = str(seed)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(src, "train.py", "exec"), {"__name__": "__main__"})
        except (SystemExit, FloatingPointError, OverflowError):
            return None
        pred = np.load(art / "predictions.npy")
        return float(np.mean((pred - targets) ** 2)) if np.all(np.isfinite(pred)) else None

    def sha(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    defaults = {k: getattr(tune, k) for k in ("_MUTATE_P", "_TPE_STARTUP", "_ANCHOR")}
    print(f"simulated loop on the quickstart, {experiments} experiments, seeds {seeds}")
    for name, settings in STRATEGIES.items():
        settings = dict(settings)
        cfg = load_config(qs)
        cfg.proposer.sampler = settings.pop("sampler", "tpe")
        for k, v in {**defaults, **settings}.items():
            setattr(tune, k, v)
        firsts, bests = [], []
        for seed in seeds:
            cfg.proposer.seed = seed
            vals = [score(source, k) for k in range(cfg.judge.baseline_runs)]
            base = statistics.fmean(vals)
            noise = statistics.stdev(vals)
            best_rec = {"kind": "experiment", "id": 0, "status": "baseline", "metric": base, "noise": noise,
                        "parent": sha(source), "commit": sha(source), "proposal": {}}
            history, files, first = [best_rec], {"train.py": source}, None
            prop = tune.TuneProposer(cfg, list(history))
            for i in range(1, experiments + 1):
                ctx = Context(config=cfg, root=qs, worktree=qs, files=dict(files), history=list(history), best=best_rec,
                              noise=noise, run_dir=art, experiment_id=i)
                p = prop.propose(ctx)
                new = {**files, **p.edits}
                outcomes: list = []
                while True:
                    m = score(new["train.py"], len(outcomes))
                    outcomes.append(J.RunOutcome(metric=m, exit_code=0 if m is not None else 1))
                    v = J.decide(outcomes, metric_name="val_loss", maximize=False, judge=cfg.judge,
                                 best=best_rec["metric"], noise=noise)
                    if v.status == "rerun" and len(outcomes) <= 2:
                        continue
                    break
                status = "discard" if v.status == "rerun" else v.status
                rec = {"kind": "experiment", "id": i, "status": status, "parent": best_rec["commit"],
                       "metric": v.metric if status in ("keep", "discard", "suspicious") else None,
                       "commit": sha(new["train.py"]), "proposal": p.meta, "description": p.description}
                history.append(rec)
                prop.observe(rec)
                if status == "keep":
                    files, best_rec = new, rec
                    first = first or i
            firsts.append(first)
            bests.append(best_rec["metric"])
        found = [f for f in firsts if f is not None]
        worst = max(found) if len(found) == len(firsts) else "never"
        print(f"{name:32s} keep found {len(found)}/{len(firsts)}, first keep median "
              f"{statistics.median(found) if found else '-'}, worst {worst}; best val_loss after "
              f"{experiments}: mean {statistics.fmean(bests):.3f}, worst {max(bests):.3f}", flush=True)
    shutil.rmtree(art, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0-4"), help="proposer seeds, e.g. 0-4 or 1,3")
    ap.add_argument("--experiments", type=int, default=20)
    ap.add_argument("--sampler", default="tpe", choices=["tpe", "cmaes", "random"])
    ap.add_argument("--keep", action="store_true", help="keep the experiment folders (printed at the end)")
    ap.add_argument("--simulate", action="store_true", help="compare search strategies in-process (see above)")
    args = ap.parse_args()
    if args.simulate:
        simulate(args.seeds, args.experiments)
        return

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
