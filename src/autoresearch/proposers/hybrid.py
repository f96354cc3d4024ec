"""`hybrid`: structure from the model, numbers from the search.

The `llm` proposer makes structural changes. After each one the harness keeps, `tune` spends
`tune_steps` experiments on the numeric knobs of the new code (its study rebuilds itself when
the knobs change), then the model gets the next turn. `tune_steps = 0` is the plain `llm`
proposer. Which of the two made a proposal is stored as meta["via"], so a resumed run picks up
where the mix stood. With `--learn-from`, the model's prompt holds the digest of the other runs and
tune warm-starts from those of them that are runs of this metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..config import Config
from ..errors import ConfigError, ProposalInvalid
from . import Context, Proposal, Proposer


def _via(rec: dict[str, Any]) -> str | None:
    via = (rec.get("proposal") or {}).get("via")
    if via in ("llm", "tune"):
        return via
    return rec.get("proposer") if rec.get("proposer") in ("llm", "tune") else None


class HybridProposer(Proposer):
    name = "hybrid"

    def __init__(
        self,
        config: Config,
        history: list[dict[str, Any]],
        *,
        llm: Proposer | None = None,
        tune_factory: Callable[[Config, list[dict[str, Any]]], Proposer] | None = None,
    ):
        super().__init__(config, history)
        if llm is None:
            from .llm import LLMProposer

            llm = LLMProposer(config, history)
        self.llm = llm
        self._tune_factory = tune_factory
        self._tune: Proposer | None = None
        self.tune_steps = max(0, config.proposer.tune_steps)
        # Optional: tune experiments on the baseline code before the model's first turn.
        self.tune_first = max(0, config.proposer.tune_first)
        self.remaining = self._replay(history)
        self._last: Proposer | None = None
        self._history = history
        self._learn_dirs: list[Path] = []  # other runs tune warm-starts from, once it exists

    def learn_from(self, dirs: list[Path], warn: Any = None) -> bool:
        """The model gets the digest of other runs; tune, the trials of those the digest accepted
        (so a folder skipped with a warning here cannot fail the run later, when tune starts)."""
        from .digest import read_runs

        told = self.llm.learn_from(dirs, warn=warn)
        self._learn_dirs = [run.path for run in read_runs(dirs, self.config, warn=None if told else warn)]
        if self._tune is not None and self._learn_dirs:
            self._tune.learn_from(self._learn_dirs)
        return True

    def _replay(self, history: list[dict[str, Any]]) -> int:
        """Tune experiments still owed, from the records of earlier sessions."""
        remaining = self.tune_first
        for rec in history:
            if rec.get("status") == "baseline":
                continue
            via = _via(rec)
            if via == "tune":
                remaining = max(0, remaining - 1)
            elif via == "llm":
                remaining = self.tune_steps if rec.get("status") == "keep" else remaining
        return remaining

    @property
    def tune(self) -> Proposer:
        if self._tune is None:
            if self._tune_factory is not None:
                self._tune = self._tune_factory(self.config, self._history)
            else:
                from .tune import TuneProposer

                self._tune = TuneProposer(self.config, self._history)
            if self._learn_dirs:
                self._tune.learn_from(self._learn_dirs)
        return self._tune

    def propose(self, ctx: Context) -> Proposal:
        self._history = ctx.history
        if self.remaining > 0:
            self._last = self.tune
            try:
                prop = self.tune.propose(ctx)
            except (ProposalInvalid, ConfigError):
                # No knobs left in the new code, or the search space is used up: the model's turn.
                self.remaining = 0
            else:
                prop.meta = {**prop.meta, "via": "tune"}
                return prop
        self._last = self.llm
        try:
            prop = self.llm.propose(ctx)
        except ProposalInvalid as err:
            err.meta = {**err.meta, "via": "llm"}
            raise
        prop.meta = {**prop.meta, "via": "llm"}
        return prop

    def observe(self, record: dict[str, Any]) -> None:
        last, self._last = self._last, None
        if last is None:
            return
        last.observe(record)
        if last is self.llm:
            if record.get("status") == "keep":
                self.remaining = self.tune_steps
        elif record.get("status") != "interrupted":
            self.remaining = max(0, self.remaining - 1)

    def close(self) -> None:
        self.llm.close()
        if self._tune is not None:
            self._tune.close()
