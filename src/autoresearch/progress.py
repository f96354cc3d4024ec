"""What the loop prints while it works: one line per experiment, best so far, time left.

Colour on a terminal, plain lines when piped, nothing at all with quiet=True (library use, tests).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .record import STATUS_STYLE


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Activity:
    """What the harness is doing right now, rendered as one status line (rich calls `__rich__` on
    each refresh, so the line stays current while the process it describes writes output)."""

    def __init__(self, label: str, phase: str, budget_s: float | None, eta_s: float | None) -> None:
        self.label, self.phase, self.budget_s, self.eta_s = label, phase, budget_s, eta_s
        self.started = time.monotonic()
        self.last_line = ""

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [self.label, self.phase]
        parts.append(f"{fmt_duration(elapsed)} / {fmt_duration(self.budget_s)}" if self.budget_s else fmt_duration(elapsed))
        if self.eta_s is not None:  # a guess: once it has passed, the first result comes when this phase ends
            left = self.eta_s - elapsed
            parts.append(f"first result in ~{fmt_duration(left)}" if left >= 1 else f"first result when {self.phase} ends")
        line = " | ".join(parts)
        if self.last_line:
            line += f" | {self.last_line}"
        return line

    def __rich__(self) -> str:
        return self.text()


class _Lines:
    """The live status lines, one per worker slot, as rich renders them on each refresh."""

    def __init__(self, activities: dict[str, "Activity"]):
        self.activities = activities

    def __rich__(self) -> str:
        return "\n".join(a.text() for a in list(self.activities.values()))


class Progress:
    # Piped output: a status line once a process has run this long (quick ones print none), then
    # one this often.
    PLAIN_FIRST_S = 5.0
    PLAIN_EVERY_S = 30.0

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=False, highlight=False, soft_wrap=True)
        self._started = time.monotonic()
        self._max_time: float | None = None
        self._max_exp: int | None = None
        self._done = 0
        self._metric = ""
        self._activities: dict[str, Activity] = {}  # slot ("" without workers) -> what runs there
        self._lock = threading.RLock()
        self._live = None
        self._ticker: threading.Thread | None = None
        self._stop_ticker = threading.Event()

    def _print(self, text: str, style: str | None = None) -> None:
        if not self.quiet:
            self.console.print(text, style=style, markup=False)

    def info(self, text: str) -> None:
        self._print(text, "dim")

    def warn(self, text: str) -> None:
        if not self.quiet:
            Console(stderr=True, highlight=False).print(f"warning: {text}", style="yellow", markup=False)

    def start(self, *, tag: str, worktree: Path, recorded: int, metric: str, goal: str, proposer: str,
              max_experiments: int | None, max_time: float | None) -> None:
        self._started = time.monotonic()
        self._max_time, self._max_exp, self._metric = max_time, max_experiments, metric
        verb = "resuming" if recorded else "starting"
        limits = []
        if max_experiments is not None:
            limits.append(f"{max_experiments} experiments")
        if max_time is not None:
            limits.append(fmt_duration(max_time))
        until = f", stopping after {' or '.join(limits)}" if limits else ", until Ctrl-C"
        self._print(
            f"{verb} run {tag} in {worktree} ({recorded} experiments recorded; metric "
            f"{metric}, {goal}; proposer {proposer}{until})",
            "bold",
        )

    # ---- the live status line ------------------------------------------------------------------
    def begin(self, label: str, phase: str, *, budget_s: float | None = None, eta_s: float | None = None,
              slot: str = "") -> None:
        """A process starts: show one live line per worker slot (a terminal) or a plain line now and
        every ~30 s (piped)."""
        with self._lock:
            if self.quiet:
                return
            self._activities[slot] = Activity(f"{slot} {label}" if slot else label, phase, budget_s, eta_s)
            if self.console.is_terminal:
                if self._live is None:
                    from rich.live import Live

                    self._live = Live(_Lines(self._activities), console=self.console, refresh_per_second=2, transient=True)
                    self._live.start()
            elif self._ticker is None:
                self._stop_ticker.clear()
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()

    def output(self, line: str, slot: str = "") -> None:
        """The running process's last line of output (called from the runner's reader thread)."""
        activity = self._activities.get(slot)
        if activity is not None:
            line = " ".join(line.split())
            activity.last_line = line if len(line) <= 100 else line[:99] + "…"

    def end(self, slot: str | None = None) -> None:
        """The process of SLOT ended (None: all of them)."""
        with self._lock:
            if slot is None:
                self._activities.clear()
            else:
                self._activities.pop(slot, None)
            if self._activities:
                return
            if self._live is not None:
                self._live.stop()
                self._live = None
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            self._stop_ticker.set()
            ticker.join(timeout=2)

    def measured(self, label: str, metric: str, value: float | None, run_s: float, evaluate_s: float | None,
                 slot: str = "") -> None:
        """One repeat's number as soon as it exists; only for repeats long enough to have shown a
        status line, so quick experiments keep one line each."""
        if run_s + (evaluate_s or 0.0) < self.PLAIN_FIRST_S:
            return
        what = f"{metric} {value:.6g}" if value is not None else f"no {metric}"
        took = f"run {fmt_duration(run_s)}" + (f", evaluate {fmt_duration(evaluate_s)}" if evaluate_s is not None else "")
        self._print(f"{slot + ' ' if slot else ''}{label}: {what} ({took})", "dim")

    @property
    def _activity(self) -> "Activity | None":
        return next(iter(self._activities.values()), None)

    def _tick(self) -> None:
        wait = self.PLAIN_FIRST_S
        while not self._stop_ticker.wait(wait):
            for activity in list(self._activities.values()):
                self._print(activity.text(), "dim")
            wait = self.PLAIN_EVERY_S

    # ---- verdicts --------------------------------------------------------------------------------
    def experiment_done(self, record: dict[str, Any]) -> None:
        self.end("")  # the one-worker line; other workers' lines go on
        status = record["status"]
        value = record.get("metric")
        name = self._metric or "metric"
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
        self._print("  ".join(parts) + "  | " + " | ".join(tail), STATUS_STYLE.get(status, (None,))[0])

    def finish(self, summary: "LoopSummary") -> None:
        self.end()
        best = f"{summary.best:.6g}" if isinstance(summary.best, (int, float)) else "n/a"
        base = f"{summary.baseline:.6g}" if isinstance(summary.baseline, (int, float)) else "n/a"
        self._print(
            f"stopped ({summary.stopped_by}): {summary.experiments} experiments this session, {summary.kept} kept; "
            f"best {best} (baseline {base}); branch autoresearch/{summary.tag}",
            "bold",
        )
        for line in summary.notes:
            self._print(line)


@dataclass
class LoopSummary:
    tag: str
    experiments: int
    kept: int
    best: float | None
    baseline: float | None
    stopped_by: str
    notes: list[str] = field(default_factory=list)  # e.g. the chain head, to compare later


def default_progress(quiet: bool = False) -> Progress:
    return Progress(quiet=quiet, console=Console(highlight=False, soft_wrap=True, force_terminal=None if sys.stdout.isatty() else False))
