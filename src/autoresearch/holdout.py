"""Holdout re-validation: did the loop overfit the validation set?

Every keep is decided on the validation split, so after enough experiments the best commit is
partly chosen for the luck of that split. A template may name a second hidden split that the loop
never optimises on: `[experiment] holdout` is a protected command, run exactly like `evaluate` (from
a fresh read-only export of the protected and hidden files of the commit, in the evaluator's
sandbox, with the evaluator's environment) with `AUTORESEARCH_ARTIFACTS` pointing at the saved
artifacts of one measured repeat of a kept winner. It prints `METRIC <metric>=value` (or
`<metric>: value`). Nothing is trained again: the artifacts the validation score came from are
scored once more on the other split.

When: at every stop of `run_loop` (Ctrl-C, --max-time and --max-experiments included) and every
`[judge] holdout_every` keeps (0: only at stop). What: the baseline (the reference) and every kept
winner that has no holdout record yet, each repeat of it, the mean reported. Each score is one
signed ledger record of its own kind, never an experiment record:

    {"kind": "holdout", "experiment": 7, "status": "ok", "metric": 0.412, "values": [...],
     "validation_metric": 0.398, ...}

It never reaches the judge, the noise estimate or a proposer (they read `Ledger.experiments()`,
which holds experiment records only). A Ctrl-C during a holdout run kills it and records nothing
for that experiment; the next stop scores it. `gain_lines` is what `status` and `report` print:
the validation gain of the best kept commit over the baseline beside its holdout gain.
"""

from __future__ import annotations

import math
import signal
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator

from .record import ADVANCES_BEST

if TYPE_CHECKING:
    from .loop import Session

KIND = "holdout"
SCORED = ADVANCES_BEST  # what is re-scored: the reference and the kept winners
# The holdout gain is "much smaller" than the validation gain below this share of it: the loop
# then chose its keeps for the luck of the validation split.
OVERFIT_SHARE = 0.5


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---- what to re-score -----------------------------------------------------------------------------

def holdout_records(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The holdout record of each experiment id that has one (the first, should there be two)."""
    out: dict[int, dict[str, Any]] = {}
    for rec in records:
        if rec.get("kind") == KIND and isinstance(rec.get("experiment"), int):
            out.setdefault(rec["experiment"], rec)
    return out


def due(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline and the kept experiments with a metric and no holdout record yet, oldest first."""
    done = holdout_records(records)
    return [r for r in records if r.get("kind") == "experiment" and r.get("status") in SCORED
            and _finite(r.get("metric")) and r.get("id") not in done]


def measured_repeats(rec: dict[str, Any], metric: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, run) of each repeat that produced the metric: those have artifacts to score."""
    out = []
    for k, run in enumerate(rec.get("runs") or []):
        if isinstance(run, dict) and _finite((run.get("metrics") or {}).get(metric)) and not run.get("interrupted"):
            out.append((k, run))
    return out


def pinned_config(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The configuration the run is pinned to: that of its start record, or of a later config record."""
    pinned = [r for r in records if r.get("kind") in ("start", "config")]
    return (pinned[-1].get("config") or {}) if pinned else {}


def holdout_command(records: list[dict[str, Any]]) -> str:
    return str((pinned_config(records).get("experiment") or {}).get("holdout") or "").strip()


def suffix(k: int) -> str:
    """runs/<id>/artifacts, artifacts-2, ... and holdout.log, holdout-2.log, ... of repeat k."""
    return "" if k == 0 else f"-{k + 1}"


# ---- running it through the session's machinery ---------------------------------------------------

class Interrupted(Exception):
    """Ctrl-C reached the harness while a holdout command ran; nothing was recorded for it."""


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C (and SIGTERM) wait until the record is written: it lands whole or not at all."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):  # no signal masks here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def score(session: "Session", rec: dict[str, Any], *, trigger: str) -> dict[str, Any]:
    """Run the holdout command on each measured repeat of REC's saved artifacts and return the
    holdout record (not yet appended). Raises Interrupted on Ctrl-C."""
    from . import metrics as metric_io
    from .runner import experiment_env, run_process
    from .workspace import sha256_file

    exp = session.config.experiment
    name = session.config.metric.name
    command = exp.holdout.strip()
    run_dir = session.ws.state / "runs" / str(rec["id"])
    repeats = measured_repeats(rec, name)
    trials, slot = session.trials, session.main_slot()
    values: list[float] = []
    runs: list[dict[str, Any]] = []
    problem = "" if repeats else "no measured repeat to score"
    start = _now()
    for n, (k, run) in enumerate(repeats, 1):
        artifacts = run_dir / f"artifacts{suffix(k)}"
        if not artifacts.is_dir():
            problem = f"repeat {k + 1}: its saved artifacts {artifacts} are gone, so there is nothing to score"
            break
        seed = run.get("seed", k)
        env = experiment_env(budget_s=int(exp.budget) if exp.budget == int(exp.budget) else exp.budget,
                             artifacts=artifacts, run_id=f"{rec['id']}{suffix(k)}-holdout", seed=seed)
        for secret in session.proposer_secrets():
            env.pop(secret, None)
        fresh = session.ws.export_files(rec["commit"], session.evaluator_files, slot.scratch / "holdout")
        session.progress.begin(f"[{rec['id']}] repeat {n}/{len(repeats)}", "holdout")
        try:
            res = run_process(command, cwd=fresh, env=trials.evaluate_env(env, slot), timeout=exp.timeout,
                              log_path=run_dir / f"holdout{suffix(k)}.log", max_log_bytes=int(exp.max_log_mb * 1024 * 1024),
                              on_line=session.progress.output, sandbox=trials.sandbox_spec(fresh, artifacts, slot, evaluate=True))
        finally:
            session.progress.end()
        if res.interrupted:
            raise Interrupted()
        if res.sandbox_warning and not getattr(session, "_sandbox_warned", False):
            session._sandbox_warned = True  # once per session, as for experiments
            session.progress.warn(res.sandbox_warning)
        found = metric_io.parse_text(res.output)
        runs.append({"repeat": k, "seed": seed, "exit_code": res.exit_code, "timed_out": res.timed_out,
                     "wall_s": round(res.wall_s, 3), "metrics": metric_io.jsonable(found), "sandbox": res.sandbox,
                     "enforced": res.extra.get("enforced", {}), "log_sha256": sha256_file(res.log_path)})
        if not res.ok:
            why = "timed out" if res.timed_out else f"exited {res.exit_code}"
            problem = f"repeat {k + 1}: the holdout command {why}: {res.tail(1)}".rstrip(": ")
            break
        if not _finite(found.get(name)):
            problem = f"repeat {k + 1}: the holdout command printed no finite {name}"
            break
        values.append(float(found[name]))
    ok = not problem
    return {
        "kind": KIND,
        "experiment": rec["id"],
        "experiment_status": rec["status"],
        "status": "ok" if ok else "failed",
        "reason": problem,
        "metric_name": name,
        "metric": statistics.fmean(values) if ok else None,
        "values": values,
        "validation_metric": rec["metric"],
        "validation_values": [float(run["metrics"][name]) for _, run in repeats],
        "commit": rec.get("commit"),
        "command": command,
        "runs": runs,
        "trigger": trigger,
        "start": start,
        "end": _now(),
    }


@dataclass
class Rescorer:
    """The loop's side of it: `after_keep` after each kept experiment, `at_stop` when the loop ends."""

    session: "Session"
    interrupted: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.session.config.experiment.holdout.strip())

    def after_keep(self) -> None:
        """Every `[judge] holdout_every` keeps (counted over the whole run), re-score what is due.
        A Ctrl-C here stops the loop like one during an experiment (KeyboardInterrupt)."""
        every = self.session.config.judge.holdout_every
        if not self.configured or every <= 0:
            return
        keeps = sum(r["status"] == "keep" for r in self.session.ledger.experiments())
        if keeps and keeps % every == 0 and not self.rescore(f"every {every} keeps ({keeps} so far)"):
            raise KeyboardInterrupt

    def at_stop(self) -> None:
        """At a stop, unless a Ctrl-C already cut a holdout run short this session."""
        if self.configured and not self.interrupted:
            self.rescore("at stop")

    def rescore(self, trigger: str) -> bool:
        """Score and record every due record; False when a Ctrl-C cut it short (nothing half-recorded)."""
        session = self.session
        try:
            todo = due(session.ledger.records())
            if todo:
                session.progress.info(f"holdout: re-scoring {len(todo)} record(s) (the baseline and kept winners) "
                                      f"on the holdout split ({trigger})")
            for rec in todo:
                record = score(session, rec, trigger=trigger)
                with _signals_deferred():
                    session._append(record)
                if record["status"] != "ok":
                    session.progress.warn(f"holdout: experiment {rec['id']}: {record['reason']}")
        except (Interrupted, KeyboardInterrupt):
            self.interrupted = True
            session.progress.end()
            session.progress.warn("holdout: stopped by Ctrl-C; the experiments not yet re-scored are scored at the next stop")
            return False
        return True

    def notes(self) -> list[str]:
        return gain_lines(self.session.ledger.records()) if self.configured else []


# ---- the gains, for status and report --------------------------------------------------------------

@dataclass
class Gains:
    metric: str
    goal: str
    baseline_id: int
    best_id: int  # the kept experiment compared (the best that has a holdout score)
    val_base: float
    val_best: float
    hold_base: float
    hold_best: float
    latest_best_id: int  # the current best, which may not be re-scored yet

    @property
    def val_delta(self) -> float:
        return self.val_best - self.val_base

    @property
    def hold_delta(self) -> float:
        return self.hold_best - self.hold_base

    def _gain(self, delta: float) -> float:  # in the direction of the goal: positive is better
        return -delta if self.goal == "minimize" else delta

    @property
    def val_gain(self) -> float:
        return self._gain(self.val_delta)

    @property
    def hold_gain(self) -> float:
        return self._gain(self.hold_delta)

    @property
    def share(self) -> float | None:
        """The share of the validation gain that holds on the holdout (None without a validation gain)."""
        return self.hold_gain / self.val_gain if self.val_gain > 0 else None

    @property
    def overfit(self) -> bool:
        return self.share is not None and self.share < OVERFIT_SHARE


def gains(records: list[dict[str, Any]]) -> Gains | None:
    """Best kept commit vs the baseline on both splits, from the ledger's records; None until the
    baseline and at least one kept commit have holdout scores."""
    header = records[0] if records and records[0].get("kind") == "start" else {}
    scored = {i: h for i, h in holdout_records(records).items() if h.get("status") == "ok" and _finite(h.get("metric"))}
    exps = [r for r in records if r.get("kind") == "experiment" and r.get("status") in SCORED and _finite(r.get("metric"))]
    base = next((r for r in exps if r["status"] == "baseline"), None)
    kept = [r for r in exps if r["status"] == "keep"]
    if base is None or base["id"] not in scored or not kept:
        return None
    compared = next((r for r in reversed(kept) if r["id"] in scored), None)
    if compared is None:
        return None
    return Gains(metric=str(header.get("metric", "metric")), goal=str(header.get("goal", "minimize")),
                 baseline_id=base["id"], best_id=compared["id"], val_base=float(base["metric"]),
                 val_best=float(compared["metric"]), hold_base=float(scored[base["id"]]["metric"]),
                 hold_best=float(scored[compared["id"]]["metric"]), latest_best_id=kept[-1]["id"])


def _change(before: float, after: float) -> str:
    rel = f", {(after - before) / abs(before):+.2%}" if before else ""
    return f"{before:.6g} -> {after:.6g} ({after - before:+.4g}{rel})"


def gain_lines(records: list[dict[str, Any]]) -> list[str]:
    """What `status` and `report` say about the holdout: the validation gain beside the holdout
    gain, and plainly whether the loop overfit the validation set."""
    pad = " " * 10
    if not holdout_command(records):
        return ["holdout:  no holdout configured ([experiment] holdout names a second hidden split's scorer)"]
    exps = [r for r in records if r.get("kind") == "experiment"]
    scored = holdout_records(records)
    every = (pinned_config(records).get("judge") or {}).get("holdout_every", 5)
    when = "at each stop" + (f" and every {every} keeps" if every else "")
    failed = [h for h in scored.values() if h.get("status") != "ok"]
    lines = []
    g = gains(records)
    if not any(r.get("status") == "keep" for r in exps):
        base = scored.get(0)
        if base is not None and base.get("status") == "ok":
            lines.append(f"holdout:  baseline {base['metric_name']} {base['metric']:.6g} on the holdout "
                         f"({base.get('validation_metric', 0):.6g} on validation); no kept improvement to check yet")
        else:
            lines.append(f"holdout:  no kept improvement to check yet (scored {when})")
    elif g is None:
        base_id = next((r.get("id") for r in exps if r.get("status") == "baseline"), None)
        if base_id in scored and scored[base_id].get("status") != "ok":
            lines.append("holdout:  the baseline could not be scored on the holdout, so there is no reference to compare with")
        elif base_id in scored and any(i != base_id for i in scored):
            lines.append("holdout:  no kept winner could be scored on the holdout (see the failures below)")
        else:
            lines.append(f"holdout:  kept winners are not re-scored on the holdout yet (that happens {when})")
    else:
        lines.append(f"holdout:  best kept (experiment {g.best_id}) vs baseline, {g.metric}: validation {_change(g.val_base, g.val_best)}; "
                     f"holdout {_change(g.hold_base, g.hold_best)}")
        if g.latest_best_id != g.best_id:
            lines.append(f"{pad}(the best so far, experiment {g.latest_best_id}, is not re-scored yet; that happens {when})")
        if g.share is None:
            lines.append(f"{pad}no validation gain over the baseline to check")
        elif g.overfit:
            kept = "no gain at all" if g.hold_gain <= 0 else f"only {g.share:.0%} of it"
            lines.append(f"{pad}OVERFIT: the holdout gain is much smaller than the validation gain ({kept}): "
                         "the loop has fit the validation set, not the task")
        else:
            lines.append(f"{pad}the holdout keeps {g.share:.0%} of the validation gain: no sign of overfitting the validation set")
    for h in failed[-3:]:
        lines.append(f"{pad}holdout of experiment {h.get('experiment')} failed: {h.get('reason', '')}")
    return lines
