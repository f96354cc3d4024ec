"""Pruning hopeless runs on their intermediate values, and screening candidates at a short budget:
both only ever stop work early, never keep anything."""

from __future__ import annotations

import pytest

from autoresearch.config import PruneConfig
from autoresearch.loop import step
from autoresearch.prune import Rule, parse_progress_line, value_at

from builders import Scripted, assert_intact, edit, open_session, records, set_toml
from conftest import make_experiment

# The curve falls from final + 5 to final over 20 steps; LIE, when set, is printed instead of it.
# SCREEN_CHEAT > 0: the code scores that at a short budget, whatever X is (it games the screen).
CURVE_TRAIN = '''\
import os, time
X = {x}
LIE = 0.0
SCREEN_CHEAT = 0.0
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
budget = float(os.environ["AUTORESEARCH_BUDGET_S"])
final = (X - 1.0) ** 2 + 0.001 * seed
for i in range(1, 21):
    p = i / 20
    value = final + (1 - p) * 5 + 0.01 * seed
    print(f"METRIC loss={{LIE if LIE else value}} progress={{p}}", flush=True)
    time.sleep(0.02)
if SCREEN_CHEAT and budget < 5:
    final = SCREEN_CHEAT
print(f"score: {{final}}")
'''


def curve_experiment(root, *, rule="best-repeats", extra=""):
    make_experiment(root, train=CURVE_TRAIN.format(x=3.0))
    set_toml(root, "min_delta = \"auto\"\n", f"min_delta = \"auto\"\n{extra}\n[judge.prune]\nmetric = \"loss\"\nafter = 0.2\nrule = \"{rule}\"\nmin_runs = 2\n")
    return root


def test_progress_lines_parse_and_other_lines_do_not():
    assert parse_progress_line("METRIC loss=2.5 progress=0.25", "loss") == (0.25, 2.5)
    assert parse_progress_line("  METRIC loss = 1e-3  progress = 1.0 ", "loss") == (1.0, 0.001)
    assert parse_progress_line("METRIC loss=2.5", "loss") is None  # a final value, not a point of a curve
    assert parse_progress_line("METRIC acc=2.5 progress=0.5", "loss") is None
    assert parse_progress_line("METRIC loss=nan progress=0.5", "loss") is None
    assert value_at([[0.1, 5.0], [0.3, 3.0]], 0.2) == pytest.approx(4.0)
    assert value_at([[0.1, 5.0], [0.3, 3.0]], 0.9) is None  # the curve says nothing past its end


def test_the_rule_stops_only_what_is_worse_than_every_repeat_of_the_best_by_k_spreads():
    best = {"id": 0, "status": "baseline", "runs": [{"curve": [[0.2, 3.0], [0.5, 2.0]]}, {"curve": [[0.2, 3.2], [0.5, 2.2]]}]}
    rule = Rule.from_records(PruneConfig(metric="loss", k=3), "minimize", [best], best)
    assert rule.check_best_repeats(0.5, 2.2 + 3 * 0.2 - 0.01) is None  # within 3 x the spread of 0.2
    assert "worse than every repeat of the best" in rule.check_best_repeats(0.5, 2.2 + 3 * 0.2 + 0.01)
    maxim = Rule.from_records(PruneConfig(metric="loss", k=3), "maximize", [best], best)
    assert maxim.check_best_repeats(0.5, 1.0) is not None and maxim.check_best_repeats(0.5, 5.0) is None
    assert Rule.from_records(PruneConfig(metric=""), "minimize", [best], best) is None  # pruning off


def test_a_hopeless_run_is_stopped_early_recorded_pruned_with_its_curve_and_never_kept(tmp_path):
    root = curve_experiment(tmp_path / "exp")
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [edit(X=5.0)]))
    assert rec["status"] == "pruned", rec["reason"]
    assert rec["pruned"]["rule"] == "best-repeats" and rec["pruned"]["metric"] == "loss"
    assert 0.2 <= rec["pruned"]["at"] < 0.5 and "worse than every repeat" in rec["reason"]
    curve = rec["runs"][0]["curve"]
    assert 4 <= len(curve) < 20  # stopped long before its 20 points
    assert rec["metric"] is None and rec["best"] == records(root)[0]["metric"]
    assert s.ws.branch_head(s.tag) == records(root)[0]["commit"]  # the branch did not move
    assert_intact(root)


def test_great_intermediate_values_gain_nothing_the_final_score_decides(tmp_path):
    """A train.py that prints excellent intermediate values but trains a worse model is not pruned
    (it lied its way past the rule) and still not kept: the curve only ever stops runs."""
    root = curve_experiment(tmp_path / "exp")
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [edit(X=5.0, LIE=0.0001)]))
    assert rec["status"] == "discard", rec["reason"]
    assert rec["metric"] == pytest.approx(16.0)
    # ... and bad intermediate values on better code stop it: never a keep from a curve.
    rec = step(s, Scripted(s.config, [edit(X=1.0, LIE=100.0)]))
    assert rec["status"] == "pruned"
    assert [r["status"] for r in records(root)].count("keep") == 0


def test_an_honest_better_run_is_not_pruned_and_is_kept(tmp_path):
    root = curve_experiment(tmp_path / "exp")
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [edit(X=1.0)]))
    assert rec["status"] == "keep", rec["reason"]
    assert all(len(run["curve"]) == 20 for run in rec["runs"])


@pytest.mark.parametrize("rule,name", [("median", "MedianPruner"), ("halving", "SuccessiveHalvingPruner")])
def test_optunas_pruners_stop_a_worse_run(tmp_path, rule, name):
    root = curve_experiment(tmp_path / "exp", rule=rule)
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [edit(X=5.0)]))
    assert rec["status"] == "pruned" and name in rec["reason"], rec["reason"]
    assert rec["pruned"]["rule"] == rule
    rec = step(s, Scripted(s.config, [edit(X=1.0)]))
    assert rec["status"] == "keep", rec["reason"]


def test_tune_learns_a_pruned_trial_as_pruned(tmp_path):
    from autoresearch.proposers.tune import TuneProposer

    root = curve_experiment(tmp_path / "exp")
    s = open_session(root)
    s.measure_baseline()
    step(s, Scripted(s.config, [edit(X=5.0)]))
    rec = records(root)[-1]
    assert rec["status"] == "pruned"
    tp = TuneProposer(s.config, records(root))
    tp._dims = {}  # an empty space: the record fits it, so only its state and values matter
    frozen = tp._frozen(rec, {})
    assert frozen.state.name == "PRUNED" and frozen.intermediate_values


# ---- screening ------------------------------------------------------------------------------------

def screened_experiment(root):
    make_experiment(root, train=CURVE_TRAIN.format(x=3.0))
    set_toml(root, "min_delta = \"auto\"\n", "min_delta = \"auto\"\nscreen = \"2s\"\npromote = 0.02\n")
    return root


def test_screening_runs_short_first_and_only_promising_candidates_run_the_full_budget(tmp_path):
    root = screened_experiment(tmp_path / "exp")
    s = open_session(root)
    base = s.measure_baseline()
    assert len(base["screen"]["runs"]) == 2 and base["screen"]["runs"][0]["budget_s"] == 2.0
    out = step(s, Scripted(s.config, [edit(X=5.0)]))
    assert out["status"] == "screened_out" and out["runs"] == [] and out["metric"] is None
    assert out["screen"]["metric"] == pytest.approx(16.0) and out["screen"]["promoted"] is False
    assert "never ran the full budget" in out["reason"]
    win = step(s, Scripted(s.config, [edit(X=1.0)]))
    assert win["screen"]["promoted"] is True and win["status"] == "keep", win["reason"]
    assert win["runs"] and all("budget_s" not in r for r in win["runs"])  # the keep came from full-budget runs
    assert (root / ".autoresearch" / "runs" / str(win["id"]) / "run-screen.log").is_file()
    assert_intact(root)


def test_a_screening_score_never_decides_a_keep(tmp_path):
    """Code that scores brilliantly at the short budget only (it games the screen) is promoted,
    measured at the full budget, and discarded on that."""
    root = screened_experiment(tmp_path / "exp")
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [edit(X=5.0, SCREEN_CHEAT=0.001)]))
    assert rec["screen"]["promoted"] is True and rec["screen"]["metric"] == pytest.approx(0.001)
    assert rec["status"] == "discard" and rec["metric"] == pytest.approx(16.0)


def test_verify_says_which_experiments_were_pruned_or_screened(tmp_path):
    from autoresearch.verify import verify_run

    root = curve_experiment(tmp_path / "exp", extra='screen = "2s"\npromote = 0.02')
    s = open_session(root)
    s.measure_baseline()
    step(s, Scripted(s.config, [edit(X=5.0)]))  # screened out
    step(s, Scripted(s.config, [edit(X=2.9, LIE=50.0)]))  # screens fine, then its curve stops it
    rep = verify_run(root)
    assert rep.ok, "\n".join(rep.lines)
    text = "\n".join(rep.lines)
    assert "judged: experiment 1: screened at 2 s: 16, not promoted" in text
    assert "judged: experiment 2: pruned by best-repeats on loss" in text
