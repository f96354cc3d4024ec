"""Proposers change the editable files of an experiment and say what they tried.

A proposer never runs, scores or records anything: the loop hands it a `Context`, it returns a
`Proposal` (full new text of the files it changed, plus a description), and after the harness has
judged the experiment the loop calls `observe` with the ledger record. New proposers plug in by
adding a module and a line to `_KINDS`; the core does not change.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config


@dataclass
class Context:
    config: Config
    root: Path  # the experiment folder (holds autoresearch.toml, program.md)
    worktree: Path  # the run's checkout at the current best; only the `agent` proposer writes here
    files: dict[str, str]  # editable path (relative, posix) -> current text
    history: list[dict[str, Any]]  # ledger experiment records so far, oldest first
    best: dict[str, Any] | None  # the record holding the current best (baseline or last keep)
    noise: float | None  # run-to-run std of the metric at the current best (the judge's estimate)
    run_dir: Path  # .autoresearch/runs/<id>/: save prompts and replies here
    experiment_id: int
    feedback: str = ""  # why the previous proposal for this id was refused (e.g. a duplicate)
    # Experiments running right now on other workers (id, description, proposal): not yet measured,
    # so not in `history`; propose something else than they try.
    in_flight: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Proposal:
    description: str
    edits: dict[str, str]  # editable path -> full new text; only changed files need appear
    meta: dict[str, Any] = field(default_factory=dict)  # stored in the ledger record under "proposal"


class Proposer(ABC):
    """One proposer per run. Built from the config and the ledger history, so it resumes."""

    name: str = "proposer"

    def __init__(self, config: Config, history: list[dict[str, Any]]):
        self.config = config

    @abstractmethod
    def propose(self, ctx: Context) -> Proposal:
        """Return the next change. Raise errors.ProposalInvalid if no valid change could be made."""

    def observe(self, record: dict[str, Any]) -> None:
        """Called with the ledger record of each experiment this proposer proposed, after judging."""

    def learn_from(self, dirs: list[Path], warn: Any = None) -> bool:
        """Learn from the ledgers of other runs (read-only; nothing of theirs is recorded here).
        WARN, when given, is told in one sentence about each folder skipped and why. tune warm-starts
        its sampler; llm and agent show a digest of them in their prompt (proposers/digest.py);
        hybrid does both. Returns False where a proposer does not learn from other runs."""
        return False

    def close(self) -> None:
        """Release resources (HTTP clients, studies)."""


_KINDS = {
    "tune": "autoresearch.proposers.tune:TuneProposer",
    "llm": "autoresearch.proposers.llm:LLMProposer",
    "agent": "autoresearch.proposers.agent:AgentProposer",
    "hybrid": "autoresearch.proposers.hybrid:HybridProposer",
}


def create(config: Config, history: list[dict[str, Any]], *, learn_from: list[Path] | None = None,
           warn: Any = None) -> Proposer:
    """Instantiate the proposer named by [proposer] kind; heavy dependencies load only here.
    LEARN_FROM: experiment folders of other runs whose trials may warm-start it."""
    module_name, cls_name = _KINDS[config.proposer.kind].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    proposer = cls(config, history)
    if learn_from and not proposer.learn_from(list(learn_from), warn=warn) and warn is not None:
        warn(f"the {proposer.name} proposer does not learn from other runs yet; --learn-from is ignored")
    return proposer
