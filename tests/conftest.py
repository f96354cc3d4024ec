"""Shared fixtures: real git repositories in temporary folders, real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_keys(tmp_path_factory, monkeypatch):
    """Each test signs with keys in its own folder, never the user's config."""
    monkeypatch.setenv("AUTORESEARCH_KEY_DIR", str(tmp_path_factory.mktemp("keys")))
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@localhost")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@localhost")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


# A tiny experiment: score = (X - 1)^2 plus a little seed noise, printed as `score: value`.
TRAIN_PY = '''\
import os
X = {x}
NOISE = 0.001
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
print("training...")
print(f"score: {{(X - 1.0) ** 2 + NOISE * seed}}")
'''

TOML = '''\
[experiment]
run = "{run}"
evaluate = "{evaluate}"
budget = "{budget}"
timeout = "{timeout}"
editable = ["train.py"]
protected = {protected}
sandbox = "{sandbox}"

[metric]
name = "score"
goal = "minimize"

[judge]
baseline_runs = {baseline_runs}
min_delta = {min_delta}
'''


def make_experiment(path: Path, *, x: float = 3.0, run: str = "python train.py", evaluate: str = "",
                    budget: str = "10s", timeout: str = "30s", baseline_runs: int = 2, min_delta: str = '"auto"',
                    protected: list[str] | None = None, files: dict[str, str] | None = None,
                    train: str | None = None, sandbox: str = "none") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.py").write_text(train if train is not None else TRAIN_PY.format(x=x))
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(textwrap.dedent(text))
    prot = protected if protected is not None else sorted(files or {})
    (path / "autoresearch.toml").write_text(TOML.format(
        run=run, evaluate=evaluate, budget=budget, timeout=timeout, baseline_runs=baseline_runs,
        min_delta=min_delta, sandbox=sandbox, protected="[" + ", ".join(f'"{p}"' for p in prot) + "]"))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "experiment")
    return path


@pytest.fixture
def exp(tmp_path):
    return make_experiment(tmp_path / "exp")


def cli(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
