"""Crash safety: SIGKILL the real `autoresearch run` at random points, restart it, check the record.

The driver and the checks live in benchmarks/fault_injection.py (which prints the full summary);
here the default suite runs about 10 kills and the slow suite at least 50 kills over at least 50
experiments.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "benchmarks" / "fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _kill_and_restart(tmp_path: Path, *, experiments: int, min_kills: int, seed: int):
    fi = _driver()
    root = fi.make_experiment(tmp_path / "exp", seed=seed)
    env = {"AUTORESEARCH_KEY_DIR": os.environ["AUTORESEARCH_KEY_DIR"]}
    summary, snapshots = fi.inject(root, experiments=experiments, min_kills=min_kills, seed=seed, env=env,
                                   log=lambda *_: None)
    fi.check(root, summary, snapshots, env=env)
    print("\n".join(summary.lines()))  # shown with -s
    assert summary.kills >= min_kills and summary.experiments >= experiments
    assert summary.restarts == summary.kills + summary.clean_exits + 1
    return summary


@pytest.mark.slow  # 18 s; the default suite keeps SIGKILL with four workers (test_workers.py)
def test_sigkill_at_random_points_loses_nothing(tmp_path):
    summary = _kill_and_restart(tmp_path, experiments=12, min_kills=10, seed=11)
    assert summary.problems == [] and summary.records_lost == 0, "\n".join(summary.lines())


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~80 s alone; much more on a loaded machine
def test_fifty_kills_over_fifty_experiments(tmp_path):
    summary = _kill_and_restart(tmp_path, experiments=50, min_kills=50, seed=0)
    assert summary.problems == [] and summary.records_lost == 0, "\n".join(summary.lines())
