"""What other runs of the same experiment learned, read from their ledgers (`--learn-from`).

Two steps, neither holding state. `read_run` / `read_runs` read another run's ledger (read-only)
and accept it only when it measures the same metric with the same goal; `build_digest`, a pure
function, turns the accepted runs into a short, line-capped prompt section: per run, its baseline
and best, the kept changes with their gains (relative to that run's baseline) and the most
informative refuted ones (discarded, crashed, timed out, over budget, rejected, stopped early).
The section says plainly that none of it was measured here.
Nothing read here ever becomes a record of this run: the proposers only show the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import Config
from ..errors import UserError
from ..record import FAILED, STOPPED_EARLY

TITLE = "Learned from other runs (not measured in this run)"
MAX_LINES = 40  # the whole section, over all other runs together
KEPT_EACH = 6  # kept changes shown per run, largest gain first
REFUTED_EACH = 8  # refuted changes shown per run
DESC_CAP = 120  # characters of a description
REASON_CAP = 110  # characters of a failure's reason

# Statuses that say a change did not work there (besides "discard"). "invalid" and "interrupted"
# never ran, and a "suspicious" result is one the judge did not trust: none of them teach anything.
_FAILED = FAILED | STOPPED_EARLY

Warn = Callable[[str], None]


@dataclass(frozen=True)
class OtherRun:
    """Another run's ledger as read: its start header and experiment records (never this run's)."""

    source: str  # the experiment folder, as given
    header: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def path(self) -> Path:
        return Path(self.source)


def read_run(folder: Path, config: Config) -> OtherRun:
    """The run recorded in FOLDER/.autoresearch/ledger.jsonl, or a UserError saying in one sentence
    why it cannot be learned from (no such folder, no ledger, a damaged one, another metric)."""
    from ..ledger import Ledger, LedgerError

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give the folder of an earlier `autoresearch run` to learn from")
    ledger = Ledger(folder / ".autoresearch")
    try:
        if not ledger.exists():
            raise UserError(f"{folder} has no run to learn from (no {ledger.path}); give the folder of an earlier `autoresearch run`")
        raw = ledger.load()
    except LedgerError as err:
        raise UserError(f"cannot learn from {folder}: {err}") from None
    except OSError as err:
        raise UserError(f"cannot learn from {folder}: {ledger.path} is unreadable ({err.strerror or err})") from None
    header = raw[0] if raw and isinstance(raw[0], dict) and raw[0].get("kind") == "start" else None
    if header is None:
        raise UserError(f"{ledger.path} does not start with a run header, so it is damaged or not an autoresearch ledger; "
                        "learn from another folder")
    if header.get("metric") != config.metric.name or header.get("goal") != config.metric.goal:
        raise UserError(f"{ledger.path} measures {header.get('metric')} ({header.get('goal')}), this run "
                        f"{config.metric.name} ({config.metric.goal}); learn only from runs of the same metric")
    records = [r for r in raw if isinstance(r, dict) and r.get("kind") == "experiment" and isinstance(r.get("id"), int)]
    return OtherRun(str(folder), header, records)


def read_runs(folders: list[Path], config: Config, warn: Warn | None = None) -> list[OtherRun]:
    """The runs of FOLDERS that can be learned from; each folder skipped is named, with why, to WARN."""
    out: list[OtherRun] = []
    for folder in folders:
        try:
            out.append(read_run(Path(folder), config))
        except UserError as err:
            if warn is not None:
                warn(f"not learning from {folder}: {err}")
    return out


# ---- the digest ----------------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _one_line(text: Any, cap: int) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= cap else s[: cap - 1] + "…"


@dataclass(frozen=True)
class _Entry:
    rec: dict[str, Any]
    delta: float | None  # metric minus the best before it, in that run
    gain: float  # improvement in the goal's direction (positive = better), 0 when unknown


def _walk(run: OtherRun, maximize: bool) -> tuple[float | None, float | None, list[_Entry]]:
    """(baseline, final best, entries) of one run, deltas against the best standing at each step."""
    sign = 1.0 if maximize else -1.0
    records = sorted(run.records, key=lambda r: r["id"])
    baseline = next((_num(r.get("metric")) for r in records if r.get("status") == "baseline"), None)
    best = baseline
    entries: list[_Entry] = []
    for rec in records:
        status = rec.get("status")
        if status == "baseline":
            best = _num(rec.get("metric")) if best is None else best
            continue
        metric = _num(rec.get("metric"))
        delta = _num(rec.get("delta"))  # the judge's own, when recorded
        if delta is None and metric is not None and best is not None:
            delta = metric - best
        entries.append(_Entry(rec, delta, sign * delta if delta is not None else 0.0))
        if status == "keep" and metric is not None:
            best = metric
    return baseline, best, entries


def _versus(delta: float | None, baseline: float | None) -> str:
    if delta is None:
        return ""
    rel = f", {100 * delta / abs(baseline):+.3g}% of its baseline" if baseline else ""
    return f" ({delta:+.4g} vs the best before it{rel})"


def _interleave(a: list[_Entry], b: list[_Entry], n: int) -> list[_Entry]:
    """Up to N entries taking from A and B in turn, so both kinds of refutation get shown."""
    out: list[_Entry] = []
    ia = ib = 0
    while len(out) < n and (ia < len(a) or ib < len(b)):
        if ia < len(a):
            out.append(a[ia])
            ia += 1
        if len(out) < n and ib < len(b):
            out.append(b[ib])
            ib += 1
    return out


def _unique(entries: list[_Entry]) -> list[_Entry]:
    seen: set[str] = set()
    out = []
    for e in entries:
        key = _one_line(e.rec.get("description"), DESC_CAP)
        if key and key not in seen:
            seen.add(key)
            out.append(e)
    return out


def run_lines(run: OtherRun, config: Config, *, kept_each: int = KEPT_EACH, refuted_each: int = REFUTED_EACH) -> list[str]:
    """The digest's lines for one other run."""
    name = config.metric.name
    baseline, best, entries = _walk(run, config.maximize)
    counts: dict[str, int] = {}
    for r in run.records:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    head = f"Run in {run.source} (tag {run.header.get('tag', '?')}): {len(run.records)} experiments ({summary})"
    if baseline is not None:
        head += f"; baseline {name}={_fmt(baseline)}"
        if best is not None and best != baseline:
            head += f", best {name}={_fmt(best)}"
            if baseline:
                head += f" ({100 * (best - baseline) / abs(baseline):+.3g}% vs that baseline)"
    lines = [head + "."]
    kept = _unique(sorted((e for e in entries if e.rec.get("status") == "keep"), key=lambda e: (-e.gain, e.rec["id"])))
    if kept:
        lines.append("Kept there (largest gain first):")
        for e in kept[:kept_each]:
            metric = _num(e.rec.get("metric"))
            shown = f"{name}={_fmt(metric)}" if metric is not None else "kept"
            lines.append(f'- their #{e.rec["id"]} "{_one_line(e.rec.get("description"), DESC_CAP)}": {shown}{_versus(e.delta, baseline)}')
        if len(kept) > kept_each:
            lines.append(f"- ({len(kept) - kept_each} smaller kept changes left out)")
    # Clear losses first, then the near misses; failures in the order they happened.
    discarded = _unique(sorted((e for e in entries if e.rec.get("status") == "discard"), key=lambda e: (e.gain, e.rec["id"])))
    failed = _unique([e for e in entries if e.rec.get("status") in _FAILED])
    refuted = _interleave(discarded, failed, refuted_each)
    if refuted:
        lines.append("Refuted there (not kept):")
        for e in sorted(refuted, key=lambda e: e.rec["id"]):
            status = e.rec.get("status")
            desc = _one_line(e.rec.get("description"), DESC_CAP)
            if status == "discard":
                metric = _num(e.rec.get("metric"))
                shown = f"{name}={_fmt(metric)}" if metric is not None else "no metric"
                why = " — better, but not by more than the noise" if e.gain > 0 else ""
                lines.append(f'- their #{e.rec["id"]} discard "{desc}": {shown}{_versus(e.delta, baseline)}{why}')
            else:
                reason = _one_line(e.rec.get("reason"), REASON_CAP)
                lines.append(f'- their #{e.rec["id"]} {status} "{desc}"' + (f": {reason}" if reason else ""))
        left = len(discarded) + len(failed) - len(refuted)
        if left > 0:
            lines.append(f"- ({left} more refuted changes left out)")
    if not kept and not refuted:
        lines.append("(no change was kept or refuted there yet)")
    return lines


def build_digest(runs: list[OtherRun], config: Config, *, max_lines: int = MAX_LINES) -> str:
    """The prompt section about RUNS, at most MAX_LINES lines of runs; "" when there is none."""
    if not runs:
        return ""
    goal = "higher is better" if config.maximize else "lower is better"
    intro = (f"Earlier runs of this experiment (same metric: {config.metric.name}, {goal}) found the following. "
             "Their numbers were measured in those runs, on their own baselines, code and machines, not in this "
             "run: treat them as hints about what to try or avoid, never as results of this run. Nothing here is "
             "counted in this run's history; every change you make is measured again.")
    # Share the caps between runs, so one long run cannot crowd out the others.
    n = len(runs)
    kept_each, refuted_each = max(2, KEPT_EACH // n), max(2, REFUTED_EACH // n)
    body: list[str] = []
    for run in runs:
        if body:
            body.append("")
        body.extend(run_lines(run, config, kept_each=kept_each, refuted_each=refuted_each))
    if len(body) > max_lines:
        left = len(body) - (max_lines - 1)
        body = body[: max_lines - 1] + [f"({left} more lines about other runs left out)"]
    return intro + "\n\n" + "\n".join(body)


def sources(runs: list[OtherRun]) -> list[str]:
    return sorted({r.source for r in runs})
