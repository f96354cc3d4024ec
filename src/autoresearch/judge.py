"""Keep, discard or crash: the decision, from measured numbers and the measured noise.

Pure functions: no processes, no files. The loop hands in what the runner measured and gets back a
verdict, or a request to re-run the candidate (confirmation, a promising gain not yet proven, or a
gain too large to be plausible).

The noise (`[judge] noise = "local"`, the default) is measured near the current best: the repeats
of the experiments whose metric lies closest to it (the best's own seeds, confirmations, re-runs;
never a candidate's first run, which was re-run because it looked lucky), as one std or as a std
proportional to the metric, whichever fits those repeats better, and robust to one code whose seeds
scatter wildly (the median of the groups' variances). A candidate
is compared with the best seed for seed where its runs share seeds with the best's and that is the
tighter comparison, and kept when its gain exceeds KEEP_Z (1.5) standard errors of the difference after at
least two runs. Experiments flagged `suspicious` (a plausibility re-run) never enter the estimate.
`noise = "pooled"` is the earlier rule: one std pooled over every repeated experiment, a keep at
2 x that std.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .config import JudgeConfig
from .record import JUDGED

FAILURES = ("crash", "timeout", "rejected", "invalid", "interrupted", "over_budget", "suspicious", "pruned", "screened_out")


@dataclass
class RunOutcome:
    """What one execution of `run` (and `evaluate`) produced, as the judge needs it."""

    metric: float | None
    exit_code: int | None
    timed_out: bool = False
    failed_step: str = "run"  # "run" or "evaluate"
    last_line: str = ""
    over_budget: bool = False
    wall_s: float | None = None  # the run's wall time and the most the harness allowed it
    allowance_s: float | None = None
    problem: str = ""  # a guard's finding (protected file changed, ...) -> rejected
    seed: int | None = None  # AUTORESEARCH_SEED of this run: runs of two experiments on one seed pair up
    pruned: str = ""  # the prune rule that stopped the run early (prune.py); such a run is never kept
    guard_failed: str = ""  # the `guard` command's failure -> rejected


@dataclass
class Verdict:
    status: str  # baseline, keep, discard, crash, timeout, rejected, over_budget, suspicious, pruned, screened_out, or "rerun"
    reason: str
    metric: float | None = None
    flags: tuple[str, ...] = ()
    need: float | None = None  # the gain a keep needed when this verdict was reached


def noise_of(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) >= 2 else 0.0


# A keep needs a gain above this many standard errors of the difference. 1.5, not 2: on the
# quickstart against plain TPE (benchmarks/tune_vs_optuna.py) 2 discarded more real wins than it
# prevented false keeps.
KEEP_Z = 1.5
LOCAL_DOF = 8  # repeats (degrees of freedom) the local noise estimate gathers before it stops widening
PRIOR_DOF = 2.0  # weight, in degrees of freedom, of the noise over all repeats in the local estimate
MIN_PAIRS = 6  # shared-seed residuals needed before the seed-to-seed correlation is trusted
# Upper 99.9% points of chi2(dof) / dof: a repeated experiment scattered beyond them is an outlier.
_OUTLIER = {1: 10.8, 2: 6.9, 3: 5.4}
_OUTLIER_MANY = 4.6

Repeat = tuple  # (seed or None, value): one run of an experiment


def repeats(record: dict, metric_name: str) -> list[tuple[int | None, float]]:
    """The (seed, value) of every run of a ledger record that measured the metric."""
    out = []
    for run in record.get("runs") or []:
        v = (run.get("metrics") or {}).get(metric_name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((run.get("seed"), float(v)))
    return out


@dataclass(frozen=True)
class NoiseModel:
    """Run-to-run noise of the metric as the repeats near the current best measured it."""

    kind: str  # "absolute": one std; "relative": a std proportional to |metric|
    scale: float  # the std, or the std per unit of |metric|
    dof: int  # degrees of freedom behind the scale
    groups: int  # repeated experiments pooled
    rho: float = 0.0  # correlation of two experiments' runs on the same seed (what pairing removes)

    def std_at(self, level: float) -> float:
        return self.scale * abs(level) if self.kind == "relative" else self.scale

    def describe(self) -> dict:
        return {"kind": self.kind, "scale": self.scale, "dof": self.dof, "groups": self.groups, "rho": round(self.rho, 4)}


def _clean_groups(records: list[dict], metric_name: str) -> list[list[tuple[int | None, float]]]:
    """Repeated experiments whose scatter is honest noise: never a plausibility re-run, and never a
    candidate's first run, which was re-run because it looked good (a value picked for its luck
    widens the scatter); the baseline's seeds were not picked, so all of them count."""
    out = []
    for rec in records:
        if rec.get("status") not in JUDGED or "suspicious" in (rec.get("flags") or ()):
            continue
        runs = repeats(rec, metric_name)
        if rec.get("status") != "baseline":
            runs = runs[1:]
        if len(runs) >= 2:
            out.append(runs)
    return out


def _chi2_median_ratio(dof: int) -> float:
    """Median of chi2(dof) / dof (Wilson-Hilferty), so a median of variances estimates the variance."""
    return {1: 0.4549, 2: 0.6931}.get(dof, (1 - 2 / (9 * dof)) ** 3)


def _robust_var(stats: list[tuple[float, float, int]], kind: str) -> float:
    """The noise variance (per unit of metric squared when relative) from groups of repeats: their
    pooled variance, or with three groups or more the median of their variances, so one code whose
    seeds scatter wildly does not set the bar for every other."""
    norm = [(ss / d / (m**2 if kind == "relative" else 1.0), d) for m, ss, d in stats]
    if len(norm) < 3:
        return sum(v * d for v, d in norm) / sum(d for _, d in norm)
    return statistics.median(v / _chi2_median_ratio(d) for v, d in norm)


def _ss(runs: list[tuple[int | None, float]]) -> tuple[float, float, int]:
    values = [v for _, v in runs]
    mean = statistics.fmean(values)
    return mean, sum((v - mean) ** 2 for v in values), len(values) - 1


def _fit(stats: list[tuple[float, float, int]], kind: str) -> float:
    """Maximum-likelihood scale of one noise model over (mean, sum of squares, dof) per group."""
    dof = sum(d for _, _, d in stats)
    if kind == "relative":
        return math.sqrt(sum(ss / m**2 for m, ss, _ in stats) / dof)
    return math.sqrt(sum(ss for _, ss, _ in stats) / dof)


def _neg2_loglik(stats: list[tuple[float, float, int]], kind: str, scale: float) -> float:
    total = 0.0
    for m, ss, d in stats:
        var = max((scale * m) ** 2 if kind == "relative" else scale**2, 1e-300)
        total += d * math.log(var) + ss / var
    return total


def _correlation(groups: list[list[tuple[int | None, float]]]) -> tuple[float, int]:
    """Correlation of the seed effects of two experiments over the seeds they share, and how many
    residual pairs it rests on. High when a seed that is lucky for one code is lucky for another.
    A lower confidence bound, not the estimate: an overstated correlation would overstate how
    precise a paired comparison is."""
    sxy = sxx = syy = 0.0
    n = 0
    used: set[int] = set()
    for i, a in enumerate(groups):
        da = {s: v for s, v in a if s is not None}
        for j in range(i + 1, len(groups)):
            db = {s: v for s, v in groups[j] if s is not None}
            shared = sorted(set(da) & set(db))
            if len(shared) < 2:
                continue
            used.update((i, j))
            ma = statistics.fmean(da[s] for s in shared)
            mb = statistics.fmean(db[s] for s in shared)
            for s in shared:
                x, y = da[s] - ma, db[s] - mb
                sxy, sxx, syy = sxy + x * y, sxx + x * x, syy + y * y
                n += 1
    if n < MIN_PAIRS or sxx <= 0 or syy <= 0:
        return 0.0, n
    rho = min(0.95, sxy / math.sqrt(sxx * syy))
    independent = sum(len(groups[i]) - 1 for i in used)  # the residuals' own degrees of freedom
    low = math.tanh(math.atanh(rho) - 1.64 / math.sqrt(max(independent - 3, 1)))
    return max(0.0, low), n


def noise_model(records: list[dict], metric_name: str, best: float | None) -> NoiseModel | None:
    """The noise near BEST from the repeats in RECORDS (ledger experiment records), or None before
    any experiment ran more than once. Absolute or relative, by which fits all the repeats better;
    its scale from the groups closest to BEST, shrunk a little toward the scale over all of them;
    RHO, what pairing by seed may count on, from the same groups."""
    groups = _clean_groups(records, metric_name)
    if not groups:
        return None
    stats = [_ss(g) for g in groups]
    means = [m for m, _, _ in stats]
    kind = "absolute"
    same_sign = all(m > 0 for m in means) or all(m < 0 for m in means)
    if len(stats) >= 3 and same_sign and max(map(abs, means)) >= 1.5 * min(map(abs, means)):
        a, r = _fit(stats, "absolute"), _fit(stats, "relative")
        if a > 0 and r > 0 and _neg2_loglik(stats, "relative", r) < _neg2_loglik(stats, "absolute", a):
            kind = "relative"
    if kind == "relative" and best is not None and best == 0:
        kind = "absolute"
    overall = _fit(stats, kind)
    # A group scattered far beyond the rest (a broken run that still printed a number) is dropped.
    if len(stats) >= 4 and overall > 0:
        keep = []
        for g, (m, ss, d) in zip(groups, stats):
            var = (overall * m) ** 2 if kind == "relative" else overall**2
            if ss / d / max(var, 1e-300) <= _OUTLIER.get(d, _OUTLIER_MANY):
                keep.append(g)
        if keep and len(keep) < len(groups):
            groups, stats = keep, [_ss(g) for g in keep]
            overall = _fit(stats, kind)
    level = best if best is not None else means[0]

    def distance(m: float) -> float:
        if kind == "relative":
            return abs(math.log(abs(m) / abs(level))) if m and level else math.inf
        return abs(m - level)

    order = sorted(range(len(groups)), key=lambda i: distance(stats[i][0]))
    near: list[int] = []
    dof = 0
    for i in order:
        near.append(i)
        dof += stats[i][2]
        if dof >= LOCAL_DOF:
            break
    local_var = _robust_var([stats[i] for i in near], kind)
    overall_var = _robust_var(stats, kind)
    weight = PRIOR_DOF if len(near) < len(groups) else 0.0
    scale = math.sqrt((dof * local_var + weight * overall_var) / (dof + weight))
    rho, _ = _correlation([groups[i] for i in near])
    return NoiseModel(kind, scale, dof, len(near), rho)


def pooled_noise(records: list[dict], metric_name: str) -> float | None:
    """The earlier rule's noise: one std pooled over every experiment measured more than once.
    None before the baseline."""
    if not any(r.get("status") == "baseline" for r in records):
        return None
    dof, ss = 0, 0.0
    for rec in records:
        if rec.get("status") not in JUDGED:
            continue
        values = [v for _, v in repeats(rec, metric_name)]
        if len(values) >= 2:
            mean = statistics.fmean(values)
            ss += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return math.sqrt(ss / dof) if dof else 0.0


def noise_at_best(records: list[dict], metric_name: str, judge: JudgeConfig) -> float | None:
    """One number for the noise at the current best, as the judge's rule measures it."""
    if judge.noise == "pooled":
        return pooled_noise(records, metric_name)
    best = best_record(records)
    if best is None:
        return None
    model = noise_model(records, metric_name, best.get("metric"))
    return model.std_at(best["metric"]) if model is not None else 0.0


def best_record(records: list[dict]) -> dict | None:
    """The record holding the current best: the baseline or the last keep."""
    found = None
    for rec in records:
        if rec.get("status") in ("baseline", "keep"):
            found = rec
    return found


def compare(candidate: list[tuple[int | None, float]], best: list[tuple[int | None, float]], model: NoiseModel, *,
            maximize: bool, level: float) -> tuple[float, float, str]:
    """The candidate's gain over the best, its standard error, and how it was formed: over the
    seeds both ran ("paired", which cancels the seed's own luck) when that is tighter, else mean
    against mean ("unpaired")."""
    sigma = model.std_at(level)
    g = gain(maximize, statistics.fmean(v for _, v in best), statistics.fmean(v for _, v in candidate))
    se = sigma * math.sqrt(1 / len(candidate) + 1 / len(best))
    by_seed = {s: v for s, v in best if s is not None}
    shared = [(v, by_seed[s]) for s, v in candidate if s is not None and s in by_seed]
    if shared:
        se_paired = sigma * math.sqrt(2 * (1 - model.rho) / len(shared))
        if se_paired < se:
            return statistics.fmean(gain(maximize, b, c) for c, b in shared), se_paired, "paired"
    return g, se, "unpaired"


def threshold(judge: JudgeConfig, noise: float | None) -> float:
    """The smallest gain that counts: a fixed number, or 2 x the measured std ('auto')."""
    if judge.min_delta == "auto":
        return 2.0 * (noise or 0.0)
    return float(judge.min_delta)


def gain(maximize: bool, best: float, value: float) -> float:
    """How much better `value` is than `best` in the goal's direction (positive = better)."""
    return value - best if maximize else best - value


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def failure(outcome: RunOutcome, metric_name: str) -> Verdict | None:
    if outcome.problem:
        return Verdict("rejected", outcome.problem)
    if outcome.pruned:
        return Verdict("pruned", outcome.pruned)
    if outcome.timed_out:
        return Verdict("timeout", f"{outcome.failed_step} hit the timeout and its process group was killed")
    if outcome.exit_code not in (0,):
        tail = f": {outcome.last_line.strip()[:200]}" if outcome.last_line.strip() else ""
        return Verdict("crash", f"{outcome.failed_step} exited with status {outcome.exit_code}{tail}")
    if outcome.metric is None:
        return Verdict("crash", f"no '{metric_name}' in the output of {outcome.failed_step}")
    if not math.isfinite(outcome.metric):
        return Verdict("crash", f"{metric_name} is {outcome.metric}")
    if outcome.over_budget:
        took = f" ({outcome.wall_s:.1f} s against an allowance of {outcome.allowance_s:.1f} s)" if outcome.wall_s and outcome.allowance_s else ""
        return Verdict("over_budget", f"the run took longer than the harness allows{took}")
    if outcome.guard_failed:
        return Verdict("rejected", outcome.guard_failed)
    return None


def constraint_violation(constraints: list, runs: list[dict[str, float]], baseline: dict[str, float] | None) -> str | None:
    """The first `[[metric.constraints]]` bound that the mean over RUNS (each run's metrics) breaks,
    as a reason naming the metric, the bound and the value; None when all hold. A *_vs_baseline
    bound is relative to BASELINE (the baseline's mean of each metric)."""
    for c in constraints:
        values = [float(m[c.name]) for m in runs if isinstance(m.get(c.name), (int, float)) and not isinstance(m.get(c.name), bool)]
        if not values:
            return f"constraint on {c.name}: the run reported no '{c.name}' (the constraint cannot be checked)"
        mean = statistics.fmean(values)
        if not math.isfinite(mean):
            return f"constraint on {c.name}: {c.name} is {mean}"
        of = f" (mean of {len(values)} runs)" if len(values) > 1 else ""
        if c.min is not None and mean < c.min:
            return f"constraint violated: {c.name} {_fmt(mean)}{of} is below its minimum {_fmt(c.min)}"
        if c.max is not None and mean > c.max:
            return f"constraint violated: {c.name} {_fmt(mean)}{of} is above its maximum {_fmt(c.max)}"
        base = (baseline or {}).get(c.name)
        if (c.min_vs_baseline is not None or c.max_vs_baseline is not None) and base is None:
            return f"constraint on {c.name}: the baseline reported no '{c.name}', so a bound relative to it cannot be checked"
        if c.min_vs_baseline is not None and mean < base + c.min_vs_baseline:
            return (f"constraint violated: {c.name} {_fmt(mean)}{of} is below the baseline's {_fmt(base)} "
                    f"{c.min_vs_baseline:+g} = {_fmt(base + c.min_vs_baseline)}")
        if c.max_vs_baseline is not None and mean > base + c.max_vs_baseline:
            return (f"constraint violated: {c.name} {_fmt(mean)}{of} is above the baseline's {_fmt(base)} "
                    f"{c.max_vs_baseline:+g} = {_fmt(base + c.max_vs_baseline)}")
    return None


WALL_SLACK_S = 2.0  # process start-up jitter, on top of the relative tolerance


def wall_allowance(budget_s: float, baseline_walls: list[float], *, tolerance: float, grace: float) -> tuple[float, str]:
    """The most wall time a run may take, and how it was derived. The harness owns the budget: once
    the baseline has been measured, a candidate is judged against what the unchanged code really
    took (or the budget, if that is longer), so a `train.py` that stretches its own budget gains
    nothing. Before that (the baseline itself) only the coarse grace applies."""
    if not baseline_walls:
        return budget_s * (1 + grace) + 30.0, f"budget x {1 + grace:g} + 30 s (no baseline yet)"
    ref = max(budget_s, statistics.median(baseline_walls))
    return ref * (1 + tolerance) + WALL_SLACK_S, (
        f"max(budget, baseline median wall) = {ref:.1f} s x {1 + tolerance:g} + {WALL_SLACK_S:g} s")


def decide(
    outcomes: list[RunOutcome],
    *,
    metric_name: str,
    maximize: bool,
    judge: JudgeConfig,
    best: float | None,
    noise: float | None,
    baseline: bool = False,
    model: NoiseModel | None = None,
    best_runs: list[tuple[int | None, float]] | None = None,
    max_runs: int = 3,
) -> Verdict:
    """Judge all runs of one experiment so far. Returns status "rerun" when another run is needed.

    With MODEL (the local noise) and BEST_RUNS (the best's (seed, value) runs) and min_delta "auto",
    the keep is a test on the gain; otherwise the fixed threshold of min_delta or 2 x NOISE applies."""
    for outcome in outcomes:
        bad = failure(outcome, metric_name)
        if bad is not None:
            return bad
    values = [o.metric for o in outcomes if o.metric is not None]
    mean = statistics.fmean(values)
    if baseline:
        spread = f", std {_fmt(noise_of(values))} over {len(values)} runs" if len(values) > 1 else ""
        return Verdict("baseline", f"baseline {metric_name} {_fmt(mean)}{spread}", mean)
    assert best is not None
    if judge.min_delta == "auto" and judge.noise == "local" and model is not None and best_runs:
        return _decide_local(outcomes, values, metric_name=metric_name, maximize=maximize, judge=judge, best=best,
                             model=model, best_runs=best_runs, max_runs=max_runs)
    need = threshold(judge, noise)
    g = gain(maximize, best, mean)
    word = "above" if maximize else "below"
    if g <= need:
        how = f"{metric_name} {_fmt(mean)} vs best {_fmt(best)}"
        if len(values) > 1:
            how += f" (mean of {len(values)} runs)"
        return Verdict("discard", f"{how}; a keep needs {need:.3g} {word} it", mean, need=need)
    first = len(values) == 1
    plausible_limit = max(judge.plausible_noise_factor * (noise or 0.0), judge.plausible_relative * abs(best))
    too_good = noise is not None and noise > 0 and g > plausible_limit
    if first and too_good:
        return Verdict("rerun", f"gain {_fmt(g)} is implausibly large (> {judge.plausible_noise_factor:g}x noise and > "
                       f"{judge.plausible_relative:.0%}); re-running before it can be kept", mean, ("suspicious",))
    if first and judge.confirm:
        return Verdict("rerun", "a winner; re-running to confirm", mean)
    if too_good and len(values) > 1 and noise:
        spread = max(values) - min(values)
        if spread > 4 * noise + 1e-12:
            return Verdict("suspicious", f"runs disagree ({', '.join(_fmt(v) for v in values)}); far beyond the "
                           f"measured noise {_fmt(noise)}", mean, ("suspicious",))
    flags = ("suspicious",) if too_good else ()
    confirmed = f" (mean of {len(values)} runs)" if len(values) > 1 else ""
    return Verdict("keep", f"{metric_name} {_fmt(mean)}{confirmed} beats best {_fmt(best)} by {_fmt(g)} (> {need:.3g})", mean, flags, need)


def _decide_local(outcomes: list[RunOutcome], values: list[float], *, metric_name: str, maximize: bool, judge: JudgeConfig,
                  best: float, model: NoiseModel, best_runs: list[tuple[int | None, float]], max_runs: int) -> Verdict:
    """A sequential test: a candidate that looks better but is not yet proven is run again (up to
    MAX_RUNS runs); a keep needs at least two runs and a gain above KEEP_Z standard errors."""
    mean = statistics.fmean(values)
    n = len(values)
    sigma = model.std_at(best)
    runs = [(o.seed, o.metric) for o in outcomes if o.metric is not None]
    g, se, how = compare(runs, best_runs, model, maximize=maximize, level=best)
    need = KEEP_Z * se
    limit = max(judge.plausible_noise_factor * sigma, judge.plausible_relative * abs(best))
    first_gain = gain(maximize, best, values[0])
    implausible = sigma > 0 and first_gain > limit
    flags = ("suspicious",) if implausible else ()  # never let these runs into the noise estimate
    word = "above" if maximize else "below"
    of = f" (mean of {n} runs)" if n > 1 else ""
    if n == 1 and implausible:
        return Verdict("rerun", f"gain {_fmt(first_gain)} is implausibly large (> {judge.plausible_noise_factor:g}x noise and > "
                       f"{judge.plausible_relative:.0%}); re-running before it can be kept", mean, flags, need)
    if implausible and max(values) - min(values) > 4 * sigma + 1e-12:
        return Verdict("suspicious", f"runs disagree ({', '.join(_fmt(v) for v in values)}); far beyond the measured "
                       f"noise {_fmt(sigma)}", mean, flags, need)
    noise_note = f"noise {_fmt(sigma)} near the best ({model.kind}, {model.dof} dof), {how}"
    if g > need and n >= min(2, max_runs):
        return Verdict("keep", f"{metric_name} {_fmt(mean)}{of} beats best {_fmt(best)} by {_fmt(g)} (> {need:.3g}; "
                       f"{noise_note})", mean, flags, need)
    if g > 0 and n < max_runs:
        why = "a winner; re-running to confirm" if g > need else f"gain {_fmt(g)} not yet above {need:.3g}; re-running"
        return Verdict("rerun", why, mean, flags, need)
    return Verdict("discard", f"{metric_name} {_fmt(mean)}{of} vs best {_fmt(best)}; a keep needs {need:.3g} {word} it "
                   f"({noise_note})", mean, flags, need)
