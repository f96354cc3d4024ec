"""The judge's noise model: measured near the best, relative or absolute, paired by seed, never
poisoned by a plausibility re-run; and what it does to false and missed keeps."""

from __future__ import annotations

import math
import random
import statistics

from autoresearch import judge as J
from autoresearch.config import JudgeConfig
from autoresearch.loop import Session, step

from builders import Scripted
from conftest import make_experiment


def rec(status: str, values: list[float], seeds: list[int] | None = None, flags: tuple[str, ...] = (), rid: int = 0) -> dict:
    seeds = seeds if seeds is not None else list(range(len(values)))
    return {"kind": "experiment", "id": rid, "status": status, "flags": list(flags),
            "metric": statistics.fmean(values) if values else None,
            "runs": [{"seed": s, "metrics": {"loss": v}} for s, v in zip(seeds, values)]}


def groups_at(levels: list[float], std_of, n: int = 4, rng: random.Random | None = None) -> list[dict]:
    rng = rng or random.Random(0)
    out = [rec("baseline", [levels[0] + rng.gauss(0, std_of(levels[0])) for _ in range(n)])]
    for i, level in enumerate(levels[1:], 1):
        out.append(rec("discard", [level + rng.gauss(0, std_of(level)) for _ in range(n)], rid=i))
    return out


def outcomes(values: list[float]) -> list[J.RunOutcome]:
    return [J.RunOutcome(metric=v, exit_code=0, seed=k) for k, v in enumerate(values)]


def test_noise_is_relative_when_the_std_scales_with_the_metric():
    levels = [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1] * 3
    history = groups_at(levels, lambda m: 0.04 * m)
    model = J.noise_model(history, "loss", 0.1)
    assert model.kind == "relative"
    # At the best (0.1) the std is a tenth of the baseline's, not the baseline's.
    assert 0.002 < model.std_at(0.1) < 0.008


def test_noise_stays_absolute_when_the_std_does_not_scale():
    levels = [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1] * 3
    model = J.noise_model(groups_at(levels, lambda m: 0.03), "loss", 0.1)
    assert model.kind == "absolute" and 0.015 < model.std_at(0.1) < 0.06


def test_noise_is_measured_near_the_current_best():
    # Far from the best the code is noisy; near it, calm (the quickstart's case).
    history = groups_at([2.0, 1.9, 1.8, 0.32, 0.31, 0.30, 0.30], lambda m: 0.1 if m > 1 else 0.01, n=4)
    model = J.noise_model(history, "loss", 0.30)
    assert model.std_at(0.30) < 0.03
    assert J.pooled_noise(history, "loss") > 0.05  # what the earlier rule would have used


def test_a_plausibility_rerun_never_enters_the_noise():
    base = rec("baseline", [0.75, 0.72, 0.78])
    before = J.noise_model([base], "loss", 0.75).std_at(0.75)
    # A lucky first run (0.2), then the truth (0.74, 0.76): flagged, so it is left out.
    rerun = rec("discard", [0.2, 0.74, 0.76], flags=("suspicious",), rid=1)
    assert J.noise_model([base, rerun], "loss", 0.75).std_at(0.75) == before
    assert J.pooled_noise([base, rerun], "loss") > 3 * before  # the earlier rule jumps


def test_a_wildly_scattered_experiment_is_dropped_as_an_outlier():
    history = groups_at([0.5] * 6, lambda m: 0.01, n=3)
    clean = J.noise_model(history, "loss", 0.5).std_at(0.5)
    history.append(rec("discard", [0.5, 0.9, 0.1], rid=9))  # unflagged, but nothing like the rest
    assert J.noise_model(history, "loss", 0.5).std_at(0.5) < 2 * clean


def shared_seed_history(rho_seed: float, rng: random.Random) -> list[dict]:
    """Experiments on seeds 0-3 whose seed effect is shared (a seed that is lucky for one code is
    lucky for all) to the extent RHO_SEED."""
    effect = [rng.gauss(0, 1) for _ in range(4)]
    out = []
    for i, level in enumerate([0.5, 0.52, 0.48, 0.5, 0.51, 0.49, 0.5, 0.5]):
        vals = [level + 0.02 * (math.sqrt(rho_seed) * effect[s] + math.sqrt(1 - rho_seed) * rng.gauss(0, 1)) for s in range(4)]
        out.append(rec("baseline" if i == 0 else "discard", vals, rid=i))
    return out


def test_runs_on_shared_seeds_are_compared_seed_for_seed_when_their_luck_is_shared():
    history = shared_seed_history(0.95, random.Random(1))
    model = J.noise_model(history, "loss", 0.5)
    assert model.rho > 0.6
    cand, best = [(0, 0.47), (1, 0.47)], [(0, 0.5), (1, 0.5), (2, 0.5)]
    g, se, how = J.compare(cand, best, model, maximize=False, level=0.5)
    assert how == "paired" and math.isclose(g, 0.03) and se < model.std_at(0.5) * math.sqrt(1 / 2 + 1 / 3)


def test_independent_seeds_are_compared_mean_against_mean():
    history = shared_seed_history(0.0, random.Random(2))
    model = J.noise_model(history, "loss", 0.5)
    _, _, how = J.compare([(0, 0.47)], [(0, 0.5), (1, 0.5), (2, 0.5)], model, maximize=False, level=0.5)
    assert how == "unpaired"


def local_judge(values: list[float], best_runs: list[float], model: J.NoiseModel, **kw) -> J.Verdict:
    best = statistics.fmean(best_runs)
    return J.decide(outcomes(values), metric_name="loss", maximize=False, judge=JudgeConfig(**kw), best=best,
                    noise=model.std_at(best), model=model, best_runs=list(enumerate(best_runs)))


def test_a_promising_candidate_is_run_again_before_it_is_kept_or_dropped():
    model = J.NoiseModel("absolute", 0.02, 8, 3)
    best = [0.50, 0.50, 0.50]
    assert local_judge([0.49], best, model).status == "rerun"  # better, not yet proven
    assert local_judge([0.40], best, model).status == "rerun"  # a winner still gets a second run
    assert local_judge([0.40, 0.41], best, model).status == "keep"
    assert local_judge([0.49, 0.50, 0.49], best, model).status == "discard"  # three runs, still within the noise
    assert local_judge([0.55], best, model).status == "discard"  # worse: no re-run spent on it


def test_an_implausible_first_run_is_flagged_and_rerun():
    model = J.NoiseModel("absolute", 0.01, 8, 3)
    v = local_judge([0.1], [0.5, 0.5, 0.5], model)
    assert v.status == "rerun" and "implausibly" in v.reason and v.flags == ("suspicious",)
    after = local_judge([0.1, 0.49], [0.5, 0.5, 0.5], model)
    assert after.status == "suspicious" and after.flags == ("suspicious",)


def test_the_pooled_rule_is_the_earlier_fixed_threshold():
    model = J.NoiseModel("absolute", 0.02, 8, 3)
    v = local_judge([0.45], [0.5, 0.5, 0.5], model, noise="pooled")
    assert v.status == "keep" and math.isclose(v.need, 0.04)  # 2 x std, on one run


def simulate(rule: str, seed: int, n: int = 400) -> dict:
    """Candidates with known true values around a best whose noise is 0.02 near it and 0.05 at the
    baseline: how often each rule keeps a truly worse one, and drops a truly better one."""
    rng = random.Random(seed)
    sigma_near, sigma_base = 0.02, 0.05
    best_true = 0.5
    best_runs = [(s, best_true + rng.gauss(0, sigma_near)) for s in range(3)]
    history = [rec("baseline", [1.0 + rng.gauss(0, sigma_base) for _ in range(3)])]
    history.append(rec("keep", [v for _, v in best_runs], rid=1))
    out = {"false_keeps": 0, "false_keeps_beyond_noise": 0, "missed": 0, "better": 0, "runs": 0}
    for i in range(n):
        true = best_true + rng.gauss(0, 0.04)
        vals: list[float] = []
        model = J.noise_model(history, "loss", statistics.fmean(v for _, v in best_runs))
        while True:
            vals.append(true + rng.gauss(0, sigma_near))
            v = J.decide(outcomes(vals), metric_name="loss", maximize=False, judge=JudgeConfig(noise=rule),
                         best=statistics.fmean(x for _, x in best_runs), noise=J.pooled_noise(history, "loss") if rule == "pooled"
                         else model.std_at(best_true), model=model, best_runs=best_runs)
            if v.status != "rerun" or len(vals) == 3:
                break
        out["runs"] += len(vals)
        better = true < best_true - sigma_near  # truly better by more than the noise
        out["better"] += better
        if v.status == "keep" and true > best_true:
            out["false_keeps"] += 1
            out["false_keeps_beyond_noise"] += true > best_true + sigma_near
        if v.status != "keep" and better:
            out["missed"] += 1
        if len(vals) > 1:
            history.append(rec("discard", vals, rid=len(history)))
    return out


def test_the_local_rule_misses_far_fewer_better_candidates_and_keeps_few_false_ones():
    old = [simulate("pooled", s) for s in range(3)]
    new = [simulate("local", s) for s in range(3)]
    missed_old, missed_new = sum(o["missed"] for o in old), sum(o["missed"] for o in new)
    false_new = sum(o["false_keeps"] for o in new)
    harmful_new = sum(o["false_keeps_beyond_noise"] for o in new)
    # Measured (3 x 400 candidates, KEEP_Z 1.5): missed 243 -> 48, false keeps 3 -> 26 of which 2 truly
    # worse by more than the noise near the best, runs 1200 -> 2080. (KEEP_Z 2: missed 69, 6 and 0.)
    assert missed_new < 0.3 * missed_old
    assert false_new <= 0.03 * 3 * 400
    assert harmful_new <= 0.005 * 3 * 400


def test_the_loop_records_the_local_noise_and_excludes_a_plausibility_rerun(tmp_path):
    # Seed 0 of X = 2 is a fluke (0.0); seeds 1 and 2 show the truth.
    train = '''\
import os
X = 3.0
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
luck = [0.0, 0.02, -0.02][seed % 3]
print(f"score: {0.0 if (X == 2.0 and seed == 0) else (X - 1.0) ** 2 + luck}")
'''
    exp = make_experiment(tmp_path / "exp", train=train, baseline_runs=3)
    session = Session(exp)
    session.open()
    session.measure_baseline()
    noise_before = session.noise()
    prop = Scripted(session.config, [2.0, 2.95])
    fluke = step(session, prop)
    assert fluke["status"] == "suspicious" and "suspicious" in fluke["flags"] and len(fluke["runs"]) >= 2
    assert session.noise() == noise_before  # the disagreeing runs did not enter the estimate
    close = step(session, prop)  # 2.95: better by ~0.2 on every seed, below the plausibility bound
    assert close["status"] == "keep" and len(close["runs"]) >= 2
    assert close["noise_model"]["kind"] in ("absolute", "relative")
    assert close["min_delta_used"] > 0 and close["min_delta_used"] < close["best"] * 10
    assert [r["seed"] for r in close["runs"]] == list(range(len(close["runs"])))

