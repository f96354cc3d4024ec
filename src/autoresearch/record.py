"""The experiment record as a type: its status words and their groups, the record itself, and
`History`, the questions every part asks of the records (best, baseline, noise, tried, cost).

Records live in the ledger as JSON objects; `ExperimentRecord` builds them (one constructor per
way an experiment ends) and `History` reads them. Readers that only need a field still read the
dicts, but the status groups and "which record is the best" have this one definition.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Iterable


class Status(StrEnum):
    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OVER_BUDGET = "over_budget"
    REJECTED = "rejected"
    INVALID = "invalid"
    INTERRUPTED = "interrupted"
    SUSPICIOUS = "suspicious"
    PRUNED = "pruned"  # a prune rule stopped it on its intermediate values
    SCREENED_OUT = "screened_out"  # its short screening run was too far from the best's
    CONFLICT = "conflict"  # a winner whose change no longer applies to the best that moved meanwhile


ADVANCES_BEST = frozenset({Status.BASELINE, Status.KEEP})
MEASURED = frozenset({Status.BASELINE, Status.KEEP, Status.DISCARD, Status.SUSPICIOUS})  # a full-budget metric
JUDGED = frozenset({Status.BASELINE, Status.KEEP, Status.DISCARD})  # honest repeats: the noise is measured on them
STOPPED_EARLY = frozenset({Status.PRUNED, Status.SCREENED_OUT})
FAILED = frozenset({Status.CRASH, Status.TIMEOUT, Status.OVER_BUDGET, Status.REJECTED})  # ran, no usable metric
NEVER_RAN = frozenset({Status.INVALID, Status.INTERRUPTED, Status.CONFLICT})

# Status -> colour, shared by the terminal (rich colour names) and the HTML report and dashboard (CSS).
STATUS_STYLE = {
    "baseline": ("bold blue", "#1f6feb"),
    "keep": ("bold green", "#1a7f37"),
    "discard": ("dim", "#8c959f"),
    "crash": ("red", "#cf222e"),
    "timeout": ("red", "#cf222e"),
    "over_budget": ("yellow", "#bf8700"),
    "rejected": ("magenta", "#8250df"),
    "suspicious": ("magenta", "#8250df"),
    "invalid": ("yellow", "#bf8700"),
    "interrupted": ("yellow", "#bf8700"),
    "pruned": ("cyan", "#0a7f8c"),
    "screened_out": ("cyan", "#0a7f8c"),
    "conflict": ("yellow", "#bf8700"),
}


@dataclass
class ExperimentRecord:
    """One experiment's record. `to_json` gives the ledger's object; fields beyond the common ones
    (the runs' details, noise, screening, pruning) travel in `extra` under their own keys."""

    id: int
    status: str
    reason: str
    description: str
    proposer: str
    proposal: dict[str, Any]
    parent: str | None
    commit: str | None
    tree: str | None
    diff_sha256: str | None
    metric: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    delta: float | None = None
    flags: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    memory_gb: float = 0.0
    command: str = ""
    start: str | None = None
    end: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": "experiment", **asdict(self)}
        out.update(out.pop("extra"))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExperimentRecord":
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("kind", "prev", "sig", "hash")}
        return cls(**known, extra=extra)


class History:
    """The experiment records of one run, oldest first, and what the loop asks of them."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        self.records = [r for r in records if r.get("kind", "experiment") == "experiment"]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def best(self) -> dict[str, Any] | None:
        """The record holding the current best: the last keep, else the baseline."""
        return next((r for r in reversed(self.records) if r.get("status") in ADVANCES_BEST), None)

    @property
    def best_metric(self) -> float | None:
        best = self.best
        return best["metric"] if best else None

    @property
    def baseline(self) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("status") == Status.BASELINE), None)

    def baseline_means(self) -> dict[str, float]:
        """The baseline's mean of each recorded metric (the reference of *_vs_baseline constraints)."""
        values: dict[str, list[float]] = {}
        for run in (self.baseline or {}).get("runs") or []:
            for key, v in (run.get("metrics") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values.setdefault(key, []).append(float(v))
        return {k: statistics.fmean(v) for k, v in values.items()}

    def baseline_walls(self) -> list[float]:
        """The baseline's measured wall times (what a candidate's wall time is judged against)."""
        return [r["wall_s"] for r in (self.baseline or {}).get("runs", []) if isinstance(r.get("wall_s"), (int, float))]

    @property
    def tried_trees(self) -> dict[str, int]:
        """Tree hash -> the experiment that ran that exact code (interrupted ones may run again)."""
        return {r["tree"]: r["id"] for r in self.records if r.get("tree") and r.get("status") != Status.INTERRUPTED}

    @property
    def cost(self) -> float:
        """What the proposer's API calls cost so far, as the proposals recorded it."""
        return sum(float((r.get("proposal") or {}).get("cost_usd") or 0.0) for r in self.records)

    @property
    def next_id(self) -> int:
        return max((int(r["id"]) for r in self.records), default=-1) + 1

    def ids(self) -> set[int]:
        return {int(r["id"]) for r in self.records}
