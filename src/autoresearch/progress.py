"""What the loop prints while it works: one line per experiment, best so far, time left.

Colour on a terminal, plain lines when piped, nothing at all with quiet=True (library use, tests).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:  # pragma: no cover
    from .loop import LoopSummary, Measured, Session

STATUS_STYLE = {
    "baseline": "bold cyan",
    "keep": "bold green",
    "discard": "dim",
    "crash": "red",
    "timeout": "red",
    "rejected": "magenta",
    "invalid": "yellow",
    "interrupted": "yellow",
    "over_budget": "red",
    "suspicious": "magenta",
}


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=False, highlight=False, soft_wrap=True)
        self._started = time.monotonic()
        self._max_time: float | None = None
        self._max_exp: int | None = None
        self._done = 0

    def _print(self, text: str, style: str | None = None) -> None:
        if not self.quiet:
            self.console.print(text, style=style, markup=False)

    def info(self, text: str) -> None:
        self._print(text, "dim")

    def warn(self, text: str) -> None:
        if not self.quiet:
            Console(stderr=True, highlight=False).print(f"warning: {text}", style="yellow", markup=False)

    def start(self, session: "Session", max_experiments: int | None, max_time: float | None) -> None:
        self._started = time.monotonic()
        self._max_time, self._max_exp = max_time, max_experiments
        n = len(session.ledger.experiments())
        verb = "resuming" if n else "starting"
        limits = []
        if max_experiments is not None:
            limits.append(f"{max_experiments} experiments")
        if max_time is not None:
            limits.append(fmt_duration(max_time))
        until = f", stopping after {' or '.join(limits)}" if limits else ", until Ctrl-C"
        self._print(
            f"{verb} run {session.tag} in {session.ws.worktree} ({n} experiments recorded; metric "
            f"{session.config.metric.name}, {session.config.metric.goal}; proposer {session.config.proposer.kind}{until})",
            "bold",
        )

    def deadline(self, started: float, max_time: float | None, done: int, max_experiments: int | None) -> None:
        self._done = done

    def run_done(self, exp_id: int, n: int, measured: "Measured") -> None:
        pass  # one line per experiment is enough; run-level detail lives in runs/<id>/

    def experiment_done(self, record: dict[str, Any], session: "Session") -> None:
        status = record["status"]
        value = record.get("metric")
        name = session.config.metric.name
        parts = [f"[{record['id']:>4}] {status:<11}"]
        if isinstance(value, (int, float)):
            parts.append(f"{name} {value:.6g}")
            if isinstance(record.get("delta"), (int, float)):
                parts.append(f"({record['delta']:+.4g})")
        parts.append(record.get("description", "")[:70])
        if status not in ("keep", "discard", "baseline"):
            parts.append(f"— {record.get('reason', '')[:100]}")
        best = record.get("best")
        tail = []
        if isinstance(best, (int, float)):
            tail.append(f"best {best:.6g}")
        wall = sum(r.get("wall_s") or 0 for r in record.get("runs", []))
        tail.append(fmt_duration(wall))
        if self._max_time is not None:
            tail.append(f"{fmt_duration(self._max_time - (time.monotonic() - self._started))} left")
        self._print("  ".join(parts) + "  | " + " | ".join(tail), STATUS_STYLE.get(status))

    def finish(self, summary: "LoopSummary") -> None:
        best = f"{summary.best:.6g}" if isinstance(summary.best, (int, float)) else "n/a"
        base = f"{summary.baseline:.6g}" if isinstance(summary.baseline, (int, float)) else "n/a"
        self._print(
            f"stopped ({summary.stopped_by}): {summary.experiments} experiments this session, {summary.kept} kept; "
            f"best {best} (baseline {base}); branch autoresearch/{summary.tag}",
            "bold",
        )


def default_progress(quiet: bool = False) -> Progress:
    return Progress(quiet=quiet, console=Console(highlight=False, soft_wrap=True, force_terminal=None if sys.stdout.isatty() else False))
