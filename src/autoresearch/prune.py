"""Stopping hopeless runs early, from the intermediate values an experiment prints.

An experiment may print `METRIC <name>=<value> progress=<fraction>` while it runs (the fraction of
its budget, or of its planned work, done). `[judge.prune]` names the metric; each run's curve is
recorded, and a run whose curve is hopeless is stopped by the harness and recorded `pruned`.

Intermediate values come from the editable code, so they are only ever used to *stop* a run, never
to keep one: a pruned run is never kept, and a run that prints excellent intermediate values is
still judged on the protected evaluator's number alone. The worst a lying curve can do is stop its
own run, or (once kept on its real final score) make later runs easier to prune.

Rules:
- `best-repeats` (the default, conservative): stop when the value is worse than every repeat of the
  current best at the same progress by more than k x their spread (the best's repeats and the
  baseline's, whichever spread is wider).
- `median`, `halving`: Optuna's MedianPruner / SuccessiveHalvingPruner over the earlier runs' curves,
  on a grid of one step per percent of progress.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from .config import PruneConfig
from .metrics import _NUMBER
from .record import JUDGED, Status

GRID = 100  # curve steps: one per percent of progress
MAX_POINTS = GRID + 1
_PROGRESS_LINE = re.compile(
    rf"^\s*METRIC\s+([A-Za-z_][\w.\-/]*)\s*=\s*({_NUMBER})\s+progress\s*=\s*({_NUMBER})\s*$", re.IGNORECASE)

Curve = list  # [[progress, value], ...], progress ascending, at most one point per grid step


def parse_progress_line(line: str, name: str) -> tuple[float, float] | None:
    """(progress, value) of a `METRIC name=value progress=f` line for metric NAME, else None."""
    m = _PROGRESS_LINE.match(line)
    if not m or m.group(1) != name:
        return None
    value, progress = float(m.group(2)), float(m.group(3))
    if not (math.isfinite(progress) and 0.0 <= progress <= 1.5) or math.isnan(value):
        return None
    return min(progress, 1.0), value


def value_at(curve: Curve, progress: float) -> float | None:
    """The curve's value at PROGRESS, interpolated between its points; None outside the points it has
    (a curve that ended, or started, elsewhere says nothing about that progress)."""
    if not curve or progress < curve[0][0] - 1e-9 or progress > curve[-1][0] + 1.0 / GRID:
        return None
    prev = curve[0]
    for point in curve:
        if point[0] >= progress:
            if point[0] == prev[0]:
                return float(point[1])
            w = (progress - prev[0]) / (point[0] - prev[0])
            return float(prev[1] + w * (point[1] - prev[1]))
        prev = point
    return float(curve[-1][1])


def _curves(record: dict[str, Any] | None) -> list[Curve]:
    return [run["curve"] for run in (record or {}).get("runs") or [] if run.get("curve")]


def _step(progress: float) -> int:
    return min(GRID, max(0, int(math.floor(progress * GRID + 1e-9))))


def _dense(curve: Curve) -> dict[int, float]:
    """The curve as Optuna intermediate values: its latest value at each grid step it covered."""
    out: dict[int, float] = {}
    for p, v in curve:
        out[_step(p)] = float(v)
    if not out:
        return out
    filled, last = {}, None
    for s in range(min(out), max(out) + 1):
        last = out.get(s, last)
        filled[s] = last
    return filled


@dataclass
class Rule:
    """What a run's curve is judged against: built once per experiment from the record."""

    config: PruneConfig
    minimize: bool
    best: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    earlier: list[dict[str, Any]] = field(default_factory=list)  # measured and pruned experiments
    active: bool = True  # False: curves are recorded, nothing is stopped (the baseline)

    @classmethod
    def from_records(cls, config: PruneConfig, goal: str, records: list[dict[str, Any]],
                     best: dict[str, Any] | None, *, active: bool = True) -> "Rule | None":
        if not config.metric:
            return None
        minimize = (config.goal or goal) == "minimize"
        baseline = next((r for r in records if r.get("status") == "baseline"), None)
        earlier = [r for r in records if r.get("status") in JUDGED | {Status.PRUNED} and _curves(r)]
        return cls(config, minimize, best, baseline, earlier, active)

    def watch(self) -> "Watch":
        return Watch(self)

    # ---- best-repeats ----------------------------------------------------------------------------
    def worse(self, value: float, than: float) -> float:
        """How much worse VALUE is than THAN in the metric's direction (negative: better)."""
        return (value - than) if self.minimize else (than - value)

    def check_best_repeats(self, progress: float, value: float) -> str | None:
        refs = [v for v in (value_at(c, progress) for c in _curves(self.best)) if v is not None]
        if not refs:
            return None
        spreads = [max(refs) - min(refs)] if len(refs) >= 2 else []
        base = [v for v in (value_at(c, progress) for c in _curves(self.baseline)) if v is not None]
        if len(base) >= 2:
            spreads.append(max(base) - min(base))
        spread = max(spreads, default=0.0)
        if spread <= 0:
            return None  # one curve and no scatter measured: nothing says how far is hopeless
        worst = max(refs) if self.minimize else min(refs)
        margin = self.config.k * spread
        if self.worse(value, worst) > margin:
            best_id = (self.best or {}).get("id")
            return (f"pruned at {progress:.0%} of the run: {self.config.metric} {value:.4g} is worse than every repeat of the "
                    f"best (experiment {best_id}: {min(refs):.4g}-{max(refs):.4g}) by more than {self.config.k:g} x their "
                    f"spread {spread:.3g}")
        return None


class Watch:
    """One run's curve, fed line by line (on the runner's reader thread); says when to stop."""

    def __init__(self, rule: Rule):
        self.rule = rule
        self.curve: Curve = []
        self.fired: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._study = self._trial = None
        if rule.active and rule.config.rule != "best-repeats":
            self._study, self._trial = _optuna_trial(rule)

    def feed(self, line: str) -> str | None:
        """A line of output; returns the reason to stop the run, once, when the rule fires."""
        got = parse_progress_line(line, self.rule.config.metric)
        if got is None:
            return None
        progress, value = got
        with self._lock:
            if self.fired is not None:
                return None
            if self.curve and _step(self.curve[-1][0]) == _step(progress):
                self.curve[-1] = [round(progress, 4), value]
            else:
                self.curve.append([round(progress, 4), value])
            if len(self.curve) > MAX_POINTS:  # a run that reports a progress that goes back
                del self.curve[0]
            if progress < self.rule.config.after or not self.rule.active:
                return None
            reason = self._check(progress, value)
            if reason:
                self.fired = {"rule": self.rule.config.rule, "at": round(progress, 4), "value": value, "reason": reason,
                              "metric": self.rule.config.metric}
            return reason

    def _check(self, progress: float, value: float) -> str | None:
        if self._trial is None:
            return self.rule.check_best_repeats(progress, value)
        step = _step(progress)
        if step in self._trial.storage_intermediate:
            return None
        self._trial.storage_intermediate.add(step)
        self._trial.trial.report(value, step)
        if self._trial.trial.should_prune():
            name = {"median": "Optuna's MedianPruner", "halving": "Optuna's SuccessiveHalvingPruner"}[self.rule.config.rule]
            return (f"pruned at {progress:.0%} of the run: {name} stopped it ({self.rule.config.metric} {value:.4g} against "
                    f"{len(self.rule.earlier)} earlier runs' curves)")
        return None


@dataclass
class _AskedTrial:
    trial: Any
    storage_intermediate: set = field(default_factory=set)


def _optuna_trial(rule: Rule) -> tuple[Any, _AskedTrial]:
    """An in-memory study holding the earlier runs' curves, and a trial for this run to report to."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warmup = _step(rule.config.after)
    direction = "minimize" if rule.minimize else "maximize"
    if rule.config.rule == "median":
        pruner: Any = optuna.pruners.MedianPruner(n_startup_trials=rule.config.min_runs, n_warmup_steps=warmup)
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(warmup, 1), reduction_factor=3)
    study = optuna.create_study(direction=direction, pruner=pruner)
    curves = [(rec, c) for rec in rule.earlier for c in _curves(rec)]
    if rule.config.rule == "median":
        for rec, curve in curves:
            dense = _dense(curve)
            if dense and rec.get("status") != "pruned":
                study.add_trial(optuna.trial.create_trial(value=dense[max(dense)], intermediate_values=dense))
    else:
        # Successive halving keeps its rung scores in the trials it checked: replay each earlier curve.
        for rec, curve in curves:
            dense = _dense(curve)
            if not dense:
                continue
            t = study.ask()
            for s, v in dense.items():
                t.report(v, s)
                t.should_prune()
            if rec.get("status") == "pruned":
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(t, dense[max(dense)])
    if rule.config.rule == "halving" and len(curves) < rule.config.min_runs:
        study = optuna.create_study(direction=direction, pruner=optuna.pruners.NopPruner())
    return study, _AskedTrial(study.ask())
