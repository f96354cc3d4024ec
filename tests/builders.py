"""Builders the tests share: a scripted proposer, sessions, records, and the checks most tests end with."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from autoresearch.ledger import Ledger
from autoresearch.loop import Session
from autoresearch.proposers import Proposal, Proposer
from autoresearch.verify import verify_run

from conftest import git, make_experiment


class Scripted(Proposer):
    """Each propose() returns the next scripted change: a number for X in train.py, or a callable on
    the context that returns a Proposal."""

    name = "scripted"

    def __init__(self, config, values=(), history=()):
        super().__init__(config, list(history))
        self.values = list(values)
        self.seen: list[dict] = []

    def propose(self, ctx):
        value = self.values.pop(0)
        if callable(value):
            return value(ctx)
        text = re.sub(r"^X = .*$", f"X = {value}", ctx.files["train.py"], flags=re.M)
        return Proposal(f"X -> {value}", {"train.py": text}, {"params": {"X": value}})

    def observe(self, record):
        self.seen.append(record)


def edit(**values):
    """A proposal that sets each upper-case knob NAME = VALUE in train.py (the line that starts so)."""
    def propose(ctx):
        text = ctx.files["train.py"]
        for name, value in values.items():
            text = "\n".join(f"{name} = {value}" if line.startswith(f"{name} = ") else line for line in text.splitlines()) + "\n"
        return Proposal(", ".join(f"{k} -> {v}" for k, v in values.items()), {"train.py": text}, {"params": values})
    return propose


def open_session(root: Path) -> Session:
    s = Session(root)
    s.open()
    return s


def build_run(root: Path) -> Session:
    """baseline, keep, discard, crash: every way an experiment can land. Returns the open session."""
    from autoresearch.loop import step

    make_experiment(root)
    s = open_session(root)
    s.measure_baseline()
    p = Scripted(s.config, [2.0, 2.5, "oops("])
    for _ in range(3):
        step(s, p)
    return s


def records(root: Path) -> list[dict]:
    return Ledger(root / ".autoresearch").experiments()


def statuses(root: Path) -> list[str]:
    return [r["status"] for r in records(root)]


def assert_intact(root: Path) -> None:
    rep = verify_run(root)
    assert rep.ok, "\n".join(rep.lines)


def assert_clean_exit(res: subprocess.CompletedProcess, code: int) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == code, out
    assert "Traceback" not in out, out
    if code == 2:  # a user error is one sentence on stderr
        assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr


def set_toml(root: Path, old: str, new: str, message: str = "config") -> None:
    path = root / "autoresearch.toml"
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new, 1))
    git(root, "commit", "-qam", message)
