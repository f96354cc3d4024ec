"""Keep, discard or crash: the decision, from measured numbers and the measured noise.

Pure functions: no processes, no files. The loop hands in what the runner measured and gets back a
verdict, or a request to re-run the candidate (confirmation, or a gain too large to be plausible).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .config import JudgeConfig

FAILURES = ("crash", "timeout", "rejected", "invalid", "interrupted", "over_budget", "suspicious")


@dataclass
class RunOutcome:
    """What one execution of `run` (and `evaluate`) produced, as the judge needs it."""

    metric: float | None
    exit_code: int | None
    timed_out: bool = False
    failed_step: str = "run"  # "run" or "evaluate"
    last_line: str = ""
    over_budget: bool = False
    problem: str = ""  # a guard's finding (protected file changed, ...) -> rejected


@dataclass
class Verdict:
    status: str  # baseline, keep, discard, crash, timeout, rejected, over_budget, suspicious, or "rerun"
    reason: str
    metric: float | None = None
    flags: tuple[str, ...] = ()


def noise_of(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) >= 2 else 0.0


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
        return Verdict("over_budget", "the run took longer than its budget plus the grace period")
    return None


def decide(
    outcomes: list[RunOutcome],
    *,
    metric_name: str,
    maximize: bool,
    judge: JudgeConfig,
    best: float | None,
    noise: float | None,
    baseline: bool = False,
) -> Verdict:
    """Judge all runs of one experiment so far. Returns status "rerun" when another run is needed."""
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
    need = threshold(judge, noise)
    g = gain(maximize, best, mean)
    word = "above" if maximize else "below"
    if g <= need:
        how = f"{metric_name} {_fmt(mean)} vs best {_fmt(best)}"
        if len(values) > 1:
            how += f" (mean of {len(values)} runs)"
        return Verdict("discard", f"{how}; a keep needs {need:.3g} {word} it", mean)
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
    return Verdict("keep", f"{metric_name} {_fmt(mean)}{confirmed} beats best {_fmt(best)} by {_fmt(g)} (> {need:.3g})", mean, flags)
