"""One experiment from its candidate commit to its record: which trials it needs (screening runs,
repeats, re-runs the judge asks for), the verdict, and the record.

`Experiment` is a small state machine that runs nothing itself: `next_trial()` says what to run
next (or None when the verdict is in), `absorb(measured)` takes the result. The loop drives it one
trial at a time, or many experiments side by side on worker slots; either way the same code
decides. What it compares against (the best, the noise, the prune reference) is fixed when it is
created, and the record says which best that was.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import judge as judging
from .config import Config
from .hostinfo import host_info
from .prune import Rule
from .record import ADVANCES_BEST, JUDGED, MEASURED, ExperimentRecord, History
from .trial import Measured, TrialSpec
from .workspace import Candidate

MAX_RERUNS = 2  # confirmation / plausibility re-runs per experiment


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Basis:
    """What an experiment is judged against, taken from the history when it starts."""

    best: float | None
    best_rec: dict[str, Any] | None
    noise: float | None
    model: judging.NoiseModel | None
    best_runs: list | None
    prune: Rule | None
    baseline_means: dict[str, float]

    @classmethod
    def of(cls, history: History, config: Config, *, baseline: bool) -> "Basis":
        best_rec = history.best
        best = best_rec["metric"] if best_rec else None
        name = config.metric.name
        return cls(
            best=best,
            best_rec=best_rec,
            noise=judging.noise_at_best(history.records, name, config.judge),
            model=None if baseline else judging.noise_model(history.records, name, best),
            best_runs=judging.repeats(best_rec, name) if best_rec else None,
            prune=Rule.from_records(config.judge.prune, config.metric.goal, history.records, best_rec, active=not baseline),
            baseline_means=history.baseline_means(),
        )


class Experiment:
    def __init__(self, config: Config, exp_id: int, candidate: Candidate, *, description: str, proposer: str,
                 proposal: dict[str, Any], basis: Basis, run_dir: Path, baseline: bool = False, on_start: Any = None,
                 info: Any = None):
        self.config, self.id, self.candidate = config, exp_id, candidate
        self.description, self.proposer, self.proposal = description, proposer, proposal
        self.basis, self.run_dir, self.baseline = basis, run_dir, baseline
        self.protected_hashes: dict[str, Any] = {}  # the protected manifest, as its first trial found it
        self.on_start = on_start
        self.info = info or (lambda text: None)  # a line for the user (why a re-run)
        self.start = now()
        self.runs: list[Measured] = []
        self.screen_runs: list[Measured] = []
        self.screen: dict[str, Any] | None = None
        self.verdict: judging.Verdict | None = None
        self.interrupted = False
        self.replayed: list[dict[str, Any]] = []  # earlier measurements on a best that moved (workers.py)
        short = config.judge.screen
        self._screening = short is not None and short < config.experiment.budget
        self._batch = 0  # trials still due in the current batch (the baseline's seeds)
        if not self._screening:
            self._batch = config.judge.baseline_runs if baseline else 1

    @property
    def done(self) -> bool:
        return self.verdict is not None

    # ---- what to run next ------------------------------------------------------------------------
    def next_trial(self) -> TrialSpec | None:
        if self.done:
            return None
        common = dict(exp_id=self.id, commit=self.candidate.commit, expected_head=self.candidate.parent, run_dir=self.run_dir,
                      on_start=self.on_start, trusted=self.baseline)
        if self._screening:
            n = self.config.judge.baseline_runs if self.baseline else 1
            return TrialSpec(k=len(self.screen_runs), repeats=n, budget=self.config.judge.screen, label="screen", **common)
        due = len(self.runs) + self._batch
        # The baseline's first line of progress says when its first result is due.
        eta = self.config.experiment.budget * 1.05 if self.baseline and not self.runs else None
        return TrialSpec(k=len(self.runs), repeats=due, prune=self.basis.prune, eta_s=eta, **common)

    # ---- what it measured ------------------------------------------------------------------------
    def absorb(self, m: Measured) -> None:
        if not self.protected_hashes:
            self.protected_hashes = m.protected_hashes
        if m.info.get("interrupted"):
            self.interrupted = True
            if self._screening:
                self.screen_runs.append(m)
            else:
                self.runs.append(m)
            self.verdict = judging.Verdict("interrupted", "stopped by Ctrl-C; the experiment's processes were killed")
            return
        if self._screening:
            self._absorb_screen(m)
            return
        self.runs.append(m)
        self._batch -= 1
        name = self.config.metric.name
        if judging.failure(m.outcome, name) is None and self._batch > 0:
            return
        self._batch = 0
        verdict = judging.decide([r.outcome for r in self.runs], metric_name=name, maximize=self.config.maximize,
                                 judge=self.config.judge, best=self.basis.best, noise=self.basis.noise, baseline=self.baseline,
                                 model=self.basis.model, best_runs=self.basis.best_runs, max_runs=MAX_RERUNS + 1)
        if not self.baseline and verdict.status in ("keep", "rerun", "discard") and self.config.metric.constraints:
            broken = judging.constraint_violation(self.config.metric.constraints, [r.metrics for r in self.runs],
                                                  self.basis.baseline_means)
            if broken:  # a constraint ends the experiment at once: more runs cannot make it a keep
                self.verdict = judging.Verdict("discard", broken, verdict.metric, verdict.flags + ("constraint",), verdict.need)
                return
        if verdict.status == "rerun" and len(self.runs) <= MAX_RERUNS:
            self.info(f"experiment {self.id}: {verdict.reason}")
            self._batch = 1
            return
        if verdict.status == "rerun":
            verdict = judging.Verdict("discard", verdict.reason + "; no re-run budget left", verdict.metric)
        self.verdict = verdict

    def _absorb_screen(self, m: Measured) -> None:
        """Multi-fidelity (`[judge] screen`): only a candidate that screens within `promote` of the
        best's screening score goes on to the full budget. The baseline screens once per baseline
        seed, as the first reference. A screening score never decides a keep."""
        self.screen_runs.append(m)
        short = self.config.judge.screen
        name = self.config.metric.name
        n = self.config.judge.baseline_runs if self.baseline else 1
        bad = judging.failure(m.outcome, name)
        if bad is None and len(self.screen_runs) < n:
            return
        self._screening = False
        self._batch = self.config.judge.baseline_runs if self.baseline else 1
        infos = [x.info for x in self.screen_runs]
        if bad is not None:
            self.screen = {"budget_s": short, "runs": infos, "metric": None, "promoted": False}
            if not self.baseline:
                self.verdict = judging.Verdict(bad.status, f"screening run: {bad.reason}")
            return
        value = statistics.fmean(x.outcome.metric for x in self.screen_runs)
        self.screen = {"budget_s": short, "runs": infos, "metric": value}
        ref = ((self.basis.best_rec or {}).get("screen") or {}).get("metric")
        if self.baseline or not isinstance(ref, (int, float)):
            self.screen.update(promoted=True, rule=None if self.baseline else "the best has no screening score; promoted")
            return
        promote = self.config.judge.promote
        short_of = -judging.gain(self.config.maximize, ref, value)  # > 0: worse than the best's screening score
        best_id = (self.basis.best_rec or {}).get("id")
        promoted = short_of <= promote * abs(ref)
        self.screen.update(reference=ref, reference_experiment=best_id, promoted=promoted,
                           rule=f"promote when within {promote:.0%} of the best's screening score")
        if promoted:
            self.info(f"experiment {self.id}: screened {name} {value:.6g} at {short:g} s (best screened {ref:.6g}); "
                      "running the full budget")
        else:
            self.verdict = judging.Verdict(
                "screened_out", f"screening run at {short:g} s: {name} {value:.6g} is {short_of:.3g} short of the best's "
                                f"screening score {ref:.6g} (experiment {best_id}); more than the {promote:.0%} allowed, so it "
                                "never ran the full budget")

    # ---- the record ------------------------------------------------------------------------------
    def record(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        verdict = self.verdict
        assert verdict is not None
        basis, runs, exp = self.basis, self.runs, self.config.experiment
        values = [m.outcome.metric for m in runs if m.outcome.metric is not None]
        metric = verdict.metric if verdict.status in MEASURED else None
        first = runs[0] if runs else None
        vram = first.info.get("peak_vram_mb") if first else None
        rss = max((m.info["peak_rss_mb"] for m in runs), default=0.0)
        memory_gb = (vram / 1024) if isinstance(vram, (int, float)) else rss / 1024
        c = self.candidate
        rec = ExperimentRecord(
            id=self.id, status=verdict.status, reason=verdict.reason, flags=list(verdict.flags),
            description=self.description, proposer=self.proposer, proposal=self.proposal,
            parent=c.parent, commit=c.commit, tree=c.tree, diff_sha256=c.diff_sha256, changed=c.changed,
            metric=metric, metrics=first.info["metrics"] if first else {}, runs=[m.info for m in runs],
            best=metric if verdict.status in ADVANCES_BEST else basis.best,
            delta=(metric - basis.best) if (metric is not None and basis.best is not None and not self.baseline) else None,
            memory_gb=round(memory_gb, 3), command=exp.run, start=self.start, end=now(),
        )
        record = rec.to_json()
        record.update({
            "noise_used": basis.noise,
            "min_delta_used": (verdict.need if verdict.need is not None else judging.threshold(self.config.judge, basis.noise))
            if not self.baseline else None,
            "noise_model": basis.model.describe() if basis.model is not None else None,
            "evaluate": exp.evaluate,
            "budget_s": exp.budget,
            "protected": self.protected_hashes,
            "seeds": [m.info["seed"] for m in runs],
            "host": host_info(),
        })
        if not self.baseline and basis.best_rec is not None:
            record["measured_against"] = basis.best_rec.get("id")  # the best it was judged against
        if self.replayed:
            record["replayed"] = self.replayed
        if self.screen is not None:
            record["screen"] = self.screen
        pruned = next((m.info["pruned"] for m in runs if m.info.get("pruned")), None)
        if pruned is not None:
            record["pruned"] = pruned  # the rule that fired, where, on what value; the curve is in the run
        if self.baseline:
            record["noise"] = judging.noise_of(values) if verdict.status == "baseline" else None
        last = runs[-1] if runs else (self.screen_runs[-1] if self.screen_runs else None)
        if verdict.status not in JUDGED and last is not None:
            record["log_tail"] = last.result.tail()
        record.update(extra or {})
        return record


def invalid_record(config: Config, exp_id: int, reason: str, *, description: str, proposer: str, proposal: dict[str, Any],
                   parent: str | None, best: float | None, status: str = "invalid") -> dict[str, Any]:
    """A proposal that never ran: it could not be applied, or it changed what it may not."""
    return ExperimentRecord(id=exp_id, status=status, reason=reason, description=description, proposer=proposer,
                            proposal=proposal, parent=parent, commit=None, tree=None, diff_sha256=None, best=best,
                            command=config.experiment.run, start=now(), end=now()).to_json()


def interrupted_record(pending: dict[str, Any], best: float | None, command: str) -> dict[str, Any]:
    """An experiment whose harness died mid-way, from its write-ahead intent."""
    return ExperimentRecord(
        id=pending["id"], status="interrupted",
        reason="the harness stopped (Ctrl-C, killed or crashed) while this experiment ran",
        description=pending.get("description", ""), proposer=pending.get("proposer", ""),
        proposal=pending.get("proposal", {}), parent=pending.get("parent"), commit=pending.get("commit"),
        tree=pending.get("tree"), diff_sha256=pending.get("diff_sha256"), best=best, command=command,
        start=pending.get("start"), end=now()).to_json()
