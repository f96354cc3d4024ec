"""Constraints on secondary metrics and the guard command: a candidate that wins on the metric but
breaks a bound, or fails the guard, is never kept, and the record says why."""

from __future__ import annotations

import pytest

from autoresearch.config import Constraint
from autoresearch.judge import constraint_violation
from autoresearch.loop import step

from builders import Scripted, assert_intact, open_session, records, set_toml
from conftest import make_experiment

# score falls as X nears 1; recall falls with it once X < 1.5 (the trade-off a constraint guards).
TRAIN = '''\
import os
X = 3.0
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
print(f"score: {(X - 1.0) ** 2 + 0.001 * seed}")
print(f"recall: {0.9 if X >= 1.5 else 0.6}")
print(f"error_rate: {0.0 if X != 2.0 else 0.01}")
'''


def test_constraint_reasons_name_the_metric_the_bound_and_the_value():
    runs = [{"recall": 0.6}, {"recall": 0.62}]
    assert constraint_violation([Constraint(name="recall", min=0.7)], runs, None) == \
        "constraint violated: recall 0.61 (mean of 2 runs) is below its minimum 0.7"
    assert constraint_violation([Constraint(name="recall", min=0.5)], runs, None) is None
    assert "above its maximum 0" in constraint_violation([Constraint(name="err", max=0.0)], [{"err": 0.01}], None)
    rel = [Constraint(name="recall", min_vs_baseline=-0.01)]
    assert "below the baseline's 0.9 -0.01 = 0.89" in constraint_violation(rel, [{"recall": 0.85}], {"recall": 0.9})
    assert constraint_violation(rel, [{"recall": 0.895}], {"recall": 0.9}) is None
    assert "reported no 'recall'" in constraint_violation([Constraint(name="recall", min=0.7)], [{}], None)
    with pytest.raises(ValueError):
        Constraint(name="recall")


def test_a_better_score_that_breaks_a_constraint_is_discarded_naming_it(tmp_path):
    root = make_experiment(tmp_path / "exp", train=TRAIN)
    set_toml(root, "[judge]", '[[metric.constraints]]\nname = "recall"\nmin_vs_baseline = -0.05\n'
             '[[metric.constraints]]\nname = "error_rate"\nmax = 0.0\n\n[judge]')
    s = open_session(root)
    s.measure_baseline()
    p = Scripted(s.config, [1.0, 2.0, 1.5])
    low_recall = step(s, p)  # score 0: far better, recall 0.6
    assert low_recall["status"] == "discard" and "constraint" in low_recall["flags"]
    assert low_recall["reason"] == "constraint violated: recall 0.6 is below the baseline's 0.9 -0.05 = 0.85"
    assert len(low_recall["runs"]) == 1  # no re-runs spent on it
    errors = step(s, p)
    assert errors["status"] == "discard" and "error_rate 0.01 is above its maximum 0" in errors["reason"]
    ok = step(s, p)
    assert ok["status"] == "keep", ok["reason"]
    assert_intact(root)


GUARD = '''\
import json, sys
text = open("train.py").read()
print(json.dumps({"checked": "train.py"}))
if "BROKEN" in text:
    print("test_service FAILED: the service no longer answers")
    sys.exit(1)
print("3 passed")
print("METRIC tests_run=3")
'''


def test_a_candidate_that_fails_the_guard_is_rejected_with_the_guards_output(tmp_path):
    root = make_experiment(tmp_path / "exp", files={"check.py": GUARD})
    set_toml(root, 'sandbox = "none"', 'sandbox = "none"\nguard = "python check.py"')
    s = open_session(root)
    base = s.measure_baseline()
    assert base["runs"][0]["guard"]["exit_code"] == 0 and base["runs"][0]["guard"]["log_sha256"]
    assert base["runs"][0]["metrics"]["tests_run"] == 3  # a guard's numbers may bear constraints

    def broken(ctx):
        from autoresearch.proposers import Proposal

        text = ctx.files["train.py"].replace("X = 3.0", "X = 1.0  # BROKEN")
        return Proposal("faster but broken", {"train.py": text})

    rec = step(s, Scripted(s.config, [broken]))
    assert rec["status"] == "rejected"
    assert "guard 'python check.py' exited with status 1: test_service FAILED" in rec["reason"]
    log = root / ".autoresearch" / "runs" / str(rec["id"]) / "guard.log"
    assert "the service no longer answers" in log.read_text()
    good = step(s, Scripted(s.config, [1.0]))
    assert good["status"] == "keep" and good["runs"][0]["guard"]["exit_code"] == 0
    assert [r["status"] for r in records(root)] == ["baseline", "rejected", "keep"]
    assert_intact(root)


def test_the_guard_sees_the_committed_code_not_what_run_left_behind(tmp_path):
    """`run` planting a module that the guard imports (a `json.py` that prints a pass and exits 0)
    changes nothing: the guard runs from a fresh export of the commit."""
    train = TRAIN + 'open("json.py", "w").write("import sys\\nprint(\\"3 passed\\")\\nsys.exit(0)\\n")\n'
    root = make_experiment(tmp_path / "exp", train=train, files={"check.py": GUARD})
    set_toml(root, 'sandbox = "none"', 'sandbox = "none"\nguard = "python check.py"')
    s = open_session(root)
    s.measure_baseline()

    def broken(ctx):
        from autoresearch.proposers import Proposal

        return Proposal("broken", {"train.py": ctx.files["train.py"].replace("X = 3.0", "X = 1.0  # BROKEN")})

    rec = step(s, Scripted(s.config, [broken]))
    assert rec["status"] == "rejected", rec["reason"]
