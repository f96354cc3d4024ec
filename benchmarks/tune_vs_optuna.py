"""The loop's `tune` against plain Optuna TPE on the quickstart, in one run, side by side.

Arms (each SEEDS search seeds x EVALS evaluations):
  loop      the loop through the library: `run_loop(max_experiments=EVALS)` on a copy of
            examples/quickstart (sandbox "none"), proposer seed = search seed; its choice is the
            best kept commit.
  loop-old  the same with the earlier rules: [judge] noise = "pooled" (one std over every repeated
            experiment, keep at 2 x std) and tune's ranges re-centred on every keep.
  optuna    plain TPE as a user would write it: the same knobs and ranges (tune's initial ones),
            train.py + evaluate.py as a subprocess per trial (seed 0); its choice is best_params.

Each choice is then re-measured on FRESH fresh seeds, with the baseline code on the same seeds, and
the true gain over the baseline is printed per arm with the mean and Welch's t of loop vs optuna.
For the loop arms it also counts, per discarded candidate, whether it was truly better than the
best kept at the time (true = mean over the fresh seeds; candidates whose measured value was more
than 0.15 worse than the best's are not re-measured and count as not better), and per keep whether
it was truly worse than the best it replaced (a false keep).

    nice -n 10 python benchmarks/tune_vs_optuna.py                 # loop vs optuna, 15 x 30
    nice -n 10 python benchmarks/tune_vs_optuna.py --arms loop,loop-old,optuna --jobs 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QS = ROOT / "examples" / "quickstart"
FRESH_BASE = 1000  # fresh seeds: never used by the searches (they use 0, 1, 2)
SKIP_WORSE = 0.15  # a discard this much worse (as measured) than the best is not re-measured


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def _copy_quickstart(dest: Path) -> Path:
    shutil.copytree(QS, dest, ignore=shutil.ignore_patterns("__pycache__", ".autoresearch", "artifacts"))
    toml = dest / "autoresearch.toml"
    text = toml.read_text().replace("[experiment]\n", '[experiment]\nsandbox = "none"\n', 1)
    toml.write_text(text)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "quickstart")
    return dest


# ---- truth: the mean over fresh seeds, in-process -------------------------------------------------
_TRUTH: dict[str, float] = {}


def _score_inprocess(src: str, seed: int, art: Path) -> float:
    import numpy as np

    if str(QS) not in sys.path:
        sys.path.insert(0, str(QS))
    import prepare

    os.environ["AUTORESEARCH_ARTIFACTS"] = str(art)
    os.environ["AUTORESEARCH_SEED"] = str(seed)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(src, "train.py", "exec"), {"__name__": "__main__"})
        pred = np.load(art / "predictions.npy")
    except (SystemExit, FloatingPointError, OverflowError, ValueError):
        return math.inf
    value = float(np.mean((pred - prepare.load_val_targets()) ** 2))
    return value if math.isfinite(value) else math.inf


def truth(src: str, fresh: int, art: Path) -> float:
    if src not in _TRUTH:
        _TRUTH[src] = statistics.fmean(_score_inprocess(src, FRESH_BASE + k, art) for k in range(fresh))
    return _TRUTH[src]


# ---- the arms ------------------------------------------------------------------------------------
def arm_loop(seed: int, evals: int, fresh: int, work: Path, old: bool) -> dict:
    import autoresearch.proposers.tune as tune
    from autoresearch.ledger import Ledger
    from autoresearch.loop import run_loop

    # The earlier rules, selected by parameter (set both ways: a worker process runs many tasks).
    tune._ANCHOR, tune._GROW = ("best", False) if old else ("baseline", True)
    exp = _copy_quickstart(work / f"{'old' if old else 'loop'}-{seed}")
    toml = exp / "autoresearch.toml"
    text = toml.read_text().replace("# seed = 0 ", f"seed = {seed}  ")
    if old:
        text = text.replace('min_delta = "auto"', 'min_delta = "auto"\nnoise = "pooled"')
    toml.write_text(text)
    _git(exp, "commit", "-qam", "seed")
    t0 = time.monotonic()
    run_loop(exp, max_experiments=evals)
    wall = time.monotonic() - t0
    records = Ledger(exp / ".autoresearch").experiments()
    art = work / f"art-{os.getpid()}"
    art.mkdir(exist_ok=True)

    def code(rec: dict) -> str:
        return _git(exp, "show", f"{rec['commit']}:train.py")

    base_src = code(records[0])
    best_rec, best_src = records[0], base_src
    truly_better = remeasured = discards = false_keeps = keeps = 0
    for rec in records[1:]:
        if rec["status"] == "keep":
            keeps += 1
            src = code(rec)
            false_keeps += truth(src, fresh, art) > truth(best_src, fresh, art)
            best_rec, best_src = rec, src
        elif rec["status"] == "discard":
            discards += 1
            if rec["metric"] is not None and rec["metric"] - best_rec["metric"] <= SKIP_WORSE:
                remeasured += 1
                truly_better += truth(code(rec), fresh, art) < truth(best_src, fresh, art)
    runs = sum(len(r.get("runs") or []) for r in records)
    return {"arm": "loop-old" if old else "loop", "seed": seed, "base_true": truth(base_src, fresh, art),
            "sel_true": truth(best_src, fresh, art), "keeps": keeps, "false_keeps": false_keeps, "discards": discards,
            "remeasured": remeasured, "truly_better_discards": truly_better, "runs": runs, "wall_s": wall}


def arm_optuna(seed: int, evals: int, fresh: int, work: Path) -> dict:
    import optuna

    from autoresearch.config import load_config
    from autoresearch.knobs import apply_values, find_knobs
    from autoresearch.proposers.tune import build_space

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    src = (QS / "train.py").read_text()
    knobs = find_knobs({"train.py": src})
    dims = build_space(knobs, load_config(QS).proposer.space)  # the same knobs and ranges
    folder = work / f"optuna-{seed}"
    shutil.copytree(QS, folder, ignore=shutil.ignore_patterns("__pycache__", ".autoresearch", "artifacts"))
    art = folder / "artifacts"

    def values(trial) -> dict:
        out = {}
        for key, dim in dims.items():
            if dim.kind == "pow":
                out[key] = dim.base ** trial.suggest_int(key, int(dim.low), int(dim.high))
            elif dim.kind == "int":
                out[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
            else:
                out[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        return out

    def objective(trial) -> float:
        changed = apply_values({"train.py": src}, values(trial))
        (folder / "train.py").write_text(changed.get("train.py", src))
        env = {**os.environ, "AUTORESEARCH_ARTIFACTS": str(art)}
        env.pop("AUTORESEARCH_SEED", None)
        r = subprocess.run([sys.executable, "train.py"], cwd=folder, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("train.py failed")
        r = subprocess.run([sys.executable, "evaluate.py"], cwd=folder, env=env, capture_output=True, text=True)
        m = re.search(r"^val_loss: (\S+)", r.stdout, re.M)
        if r.returncode != 0 or not m:
            raise RuntimeError("evaluate.py failed")
        return float(m.group(1))

    t0 = time.monotonic()
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=evals, catch=(RuntimeError,))
    wall = time.monotonic() - t0
    best = {}
    for key, dim in dims.items():
        p = study.best_params[key]
        best[key] = dim.base ** p if dim.kind == "pow" else p
    chosen = apply_values({"train.py": src}, best).get("train.py", src)
    tart = work / f"art-{os.getpid()}"
    tart.mkdir(exist_ok=True)
    return {"arm": "optuna", "seed": seed, "base_true": truth(src, fresh, tart), "sel_true": truth(chosen, fresh, tart),
            "runs": evals, "wall_s": wall}


def arm_simulated(seed: int, evals: int, fresh: int, work: Path, old: bool) -> dict:
    """The loop's proposer and judge in-process (no git, no subprocesses, train.py exec'd): the
    same decisions as `loop`, fast enough to compare rules on many seeds."""
    import hashlib

    import autoresearch.proposers.tune as tune
    from autoresearch import judge as J
    from autoresearch.config import load_config
    from autoresearch.proposers import Context

    tune._ANCHOR, tune._GROW = ("best", False) if old else ("baseline", True)
    cfg = load_config(QS)
    cfg.proposer.seed = seed
    if old:
        cfg.judge.noise = "pooled"
    art = work / f"sim-art-{os.getpid()}"
    art.mkdir(parents=True, exist_ok=True)
    name = cfg.metric.name
    base_src = (QS / "train.py").read_text()

    def sha(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def runs_of(values: list[tuple[int, float]]) -> list[dict]:
        return [{"seed": s_, "metrics": {name: v} if math.isfinite(v) else {}} for s_, v in values]

    vals = [(k, _score_inprocess(base_src, k, art)) for k in range(cfg.judge.baseline_runs)]
    best_rec = {"kind": "experiment", "id": 0, "status": "baseline", "metric": statistics.fmean(v for _, v in vals),
                "runs": runs_of(vals), "flags": [], "parent": sha(base_src), "commit": sha(base_src), "proposal": {}}
    history, files, best_src = [best_rec], {"train.py": base_src}, base_src
    prop = tune.TuneProposer(cfg, list(history))
    truly_better = remeasured = discards = false_keeps = keeps = 0
    n_runs = len(vals)
    for i in range(1, evals + 1):
        noise = J.noise_at_best(history, name, cfg.judge)
        ctx = Context(config=cfg, root=QS, worktree=QS, files=dict(files), history=list(history), best=best_rec,
                      noise=noise, run_dir=art, experiment_id=i)
        p = prop.propose(ctx)
        src = {**files, **p.edits}["train.py"]
        model = J.noise_model(history, name, best_rec["metric"])
        best_runs = J.repeats(best_rec, name)
        outcomes: list = []
        while True:
            m = _score_inprocess(src, len(outcomes), art)
            outcomes.append(J.RunOutcome(metric=m if math.isfinite(m) else None, exit_code=0 if math.isfinite(m) else 1,
                                         seed=len(outcomes)))
            v = J.decide(outcomes, metric_name=name, maximize=False, judge=cfg.judge, best=best_rec["metric"], noise=noise,
                         model=model, best_runs=best_runs, max_runs=3)
            if v.status == "rerun" and len(outcomes) < 3:
                continue
            break
        n_runs += len(outcomes)
        status = "discard" if v.status == "rerun" else v.status
        rec = {"kind": "experiment", "id": i, "status": status, "parent": best_rec["commit"], "flags": list(v.flags),
               "metric": v.metric if status in ("keep", "discard", "suspicious") else None,
               "runs": runs_of([(o.seed, o.metric) for o in outcomes if o.metric is not None]),
               "commit": sha(src), "proposal": p.meta, "description": p.description}
        history.append(rec)
        prop.observe(rec)
        if status == "keep":
            keeps += 1
            false_keeps += truth(src, fresh, art) > truth(best_src, fresh, art)
            files, best_rec, best_src = {"train.py": src}, rec, src
        elif status == "discard":
            discards += 1
            if rec["metric"] - best_rec["metric"] <= SKIP_WORSE:
                remeasured += 1
                truly_better += truth(src, fresh, art) < truth(best_src, fresh, art)
    return {"arm": "sim-old" if old else "sim", "seed": seed, "base_true": truth(base_src, fresh, art),
            "sel_true": truth(best_src, fresh, art), "keeps": keeps, "false_keeps": false_keeps, "discards": discards,
            "remeasured": remeasured, "truly_better_discards": truly_better, "runs": n_runs, "wall_s": 0.0}


def arm_optuna_simulated(seed: int, evals: int, fresh: int, work: Path) -> dict:
    """Plain TPE with train.py exec'd in-process on seed 0 (what `optuna` does, without processes)."""
    import optuna

    from autoresearch.config import load_config
    from autoresearch.knobs import apply_values, find_knobs
    from autoresearch.proposers.tune import build_space

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    src = (QS / "train.py").read_text()
    dims = build_space(find_knobs({"train.py": src}), load_config(QS).proposer.space)
    art = work / f"sim-art-{os.getpid()}"
    art.mkdir(parents=True, exist_ok=True)

    def code(params: dict) -> str:
        vals = {k: (d.base ** params[k] if d.kind == "pow" else params[k]) for k, d in dims.items()}
        return apply_values({"train.py": src}, vals).get("train.py", src)

    def objective(trial) -> float:
        params = {}
        for key, dim in dims.items():
            if dim.kind in ("pow", "int"):
                params[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log and dim.kind == "int")
            else:
                params[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        v = _score_inprocess(code(params), 0, art)
        if not math.isfinite(v):
            raise RuntimeError("diverged")
        return v

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=evals, catch=(RuntimeError,))
    return {"arm": "sim-optuna", "seed": seed, "base_true": truth(src, fresh, art),
            "sel_true": truth(code(study.best_params), fresh, art), "runs": evals, "wall_s": 0.0}


def task(args: tuple) -> dict:
    arm, seed, evals, fresh, work, keep_z = args
    if keep_z is not None:
        from autoresearch import judge

        judge.KEEP_Z = keep_z
    if arm in ("sim", "sim-old"):
        return arm_simulated(seed, evals, fresh, Path(work), old=arm == "sim-old")
    if arm == "sim-optuna":
        return arm_optuna_simulated(seed, evals, fresh, Path(work))
    if arm == "optuna":
        return arm_optuna(seed, evals, fresh, Path(work))
    return arm_loop(seed, evals, fresh, Path(work), old=arm == "loop-old")


def welch(a: list[float], b: list[float]) -> float:
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    return (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb) if va + vb > 0 else math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=15, help="search seeds per arm (0..N-1)")
    ap.add_argument("--first-seed", type=int, default=0, help="start the search seeds here")
    ap.add_argument("--keep-z", type=float, help="override judge.KEEP_Z (standard errors a keep needs)")
    ap.add_argument("--evals", type=int, default=30, help="evaluations (experiments) per search")
    ap.add_argument("--fresh", type=int, default=3, help="fresh seeds the chosen configurations are re-measured on")
    ap.add_argument("--arms", default="loop,optuna", help="comma-separated: loop, loop-old, optuna; or the in-process "
                    "sim, sim-old, sim-optuna (same proposer and judge, train.py exec'd: fast, for comparing rules)")
    ap.add_argument("--jobs", type=int, default=1, help="searches run at once")
    ap.add_argument("--json", type=Path, help="also write every row to this file")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    work = Path(tempfile.mkdtemp(prefix="tune-vs-optuna-"))
    keys = Path(tempfile.mkdtemp(prefix="keys-"))
    os.environ["AUTORESEARCH_KEY_DIR"] = str(keys)  # never the user's key folder
    for name in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        os.environ.setdefault(name, "bench")
    for name in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        os.environ.setdefault(name, "bench@localhost")
    tasks = [(arm, seed, args.evals, args.fresh, str(work), args.keep_z) for seed in args.seed_list for arm in arms]
    print(f"quickstart: {', '.join(arms)}; {args.seeds} search seeds x {args.evals} evaluations; "
          f"choices re-measured on {args.fresh} fresh seeds", flush=True)
    rows: list[dict] = []
    t0 = time.monotonic()
    try:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for row in pool.map(task, tasks):
                row["gain"] = (row["base_true"] - row["sel_true"]) / row["base_true"]
                rows.append(row)
                extra = ""
                if "optuna" not in row["arm"]:
                    extra = (f"  keeps {row['keeps']} (truly worse {row['false_keeps']}), discards {row['discards']} "
                             f"(truly better than the kept best {row['truly_better_discards']}), runs {row['runs']}")
                print(f"{row['arm']:>8} seed {row['seed']:>2}: true gain {row['gain']:6.1%} "
                      f"(val_loss {row['sel_true']:.4f} vs baseline {row['base_true']:.4f}), {row['wall_s']:.0f} s{extra}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(keys, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{'arm':>8}  {'mean gain':>9}  {'std':>6}  {'min':>6}  {'max':>6}  runs/search  discards truly better  false keeps")
    gains = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        g = [r["gain"] for r in mine]
        gains[arm] = g
        tb = fk = ""
        if "optuna" not in arm:
            d = sum(r["discards"] for r in mine)
            tb = f"{sum(r['truly_better_discards'] for r in mine)}/{d} ({sum(r['truly_better_discards'] for r in mine) / max(d, 1):.1%})"
            fk = f"{sum(r['false_keeps'] for r in mine)}/{sum(r['keeps'] for r in mine)}"
        print(f"{arm:>8}  {statistics.fmean(g):9.1%}  {statistics.pstdev(g):6.1%}  {min(g):6.1%}  {max(g):6.1%}  "
              f"{statistics.fmean(r['runs'] for r in mine):11.1f}  {tb:>21}  {fk:>11}")
    for arm in arms:
        ref = "sim-optuna" if arm.startswith("sim") else "optuna"
        if "optuna" not in arm and ref in gains and len(gains[arm]) > 1:
            print(f"Welch's t, {arm} vs {ref}: {welch(gains[arm], gains[ref]):.2f}")
    for new, old in (("loop", "loop-old"), ("sim", "sim-old")):
        if new in gains and old in gains:
            print(f"Welch's t, {new} vs {old}: {welch(gains[new], gains[old]):.2f}")
    print(f"wall {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
