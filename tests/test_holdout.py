"""Holdout re-validation (holdout.py): kept winners are re-scored on a second hidden split that the
loop never optimises on, at stop and every `holdout_every` keeps, from their saved artifacts.

The experiment here is tiny: train.py saves its prediction X to the artifacts; the protected
evaluate.py scores it against data/val.txt, or with --holdout against data/holdout.txt, which is
hidden from `run`. A proposer that moves X towards the validation targets overfits them when the
holdout's targets lie elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoresearch import proposers
from autoresearch.holdout import due, gain_lines, gains
from autoresearch.ledger import Ledger
from autoresearch.loop import run_loop
from autoresearch.progress import Progress
from autoresearch.sandbox import bwrap_available
from autoresearch.verify import rerun, verify_run

from builders import Scripted, assert_clean_exit, assert_intact, records, set_toml
from conftest import cli, make_experiment

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap does not work on this machine")

TRAIN = textwrap.dedent("""\
    import os
    X = 3.0
    open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "pred.txt"), "w").write(repr(X))
    print("trained")
""")

EVALUATE = textwrap.dedent("""\
    import os, sys, time
    split = "holdout" if "--holdout" in sys.argv else "val"
    if split == "holdout" and os.environ.get("HOLDOUT_MARK"):
        open(os.environ["HOLDOUT_MARK"], "a").write(os.environ["AUTORESEARCH_RUN_ID"] + "\\n")
        time.sleep(float(os.environ.get("HOLDOUT_SLEEP", "0")))
    targets = [float(v) for v in open(f"data/{split}.txt").read().split()]
    pred = float(open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "pred.txt")).read())
    print(f"score: {sum((pred - t) ** 2 for t in targets) / len(targets)}")
""")

HOLDOUT_TOML = 'holdout = "python evaluate.py --holdout"\nhidden = ["data/holdout.txt"]\nsandbox = '


def holdout_experiment(path: Path, *, holdout: str = "3.0 3.0", every: int | None = None, train: str = TRAIN,
                       sandbox: str = "none", configured: bool = True) -> Path:
    """Validation targets 1.0: X = 3 -> 2 -> 1.5 improves validation. Holdout targets as given."""
    root = make_experiment(path, train=train, evaluate="python evaluate.py", baseline_runs=2, min_delta="0.01",
                           sandbox=sandbox, protected=["evaluate.py", "data/val.txt"],
                           files={"evaluate.py": EVALUATE, "data/val.txt": "1.0 1.0\n", "data/holdout.txt": holdout + "\n"})
    if configured:
        set_toml(root, "sandbox = ", HOLDOUT_TOML, "holdout")
    if every is not None:
        set_toml(root, "[judge]\n", f"[judge]\nholdout_every = {every}\n", "holdout_every")
    return root


class Towards(Scripted):
    """X -> 2.0, 1.5, 1.2, 1.1: each a keep on validation; resumes where the history left off."""

    seen_kinds: list[str] = []

    def __init__(self, config, history):
        super().__init__(config, [2.0, 1.5, 1.2, 1.1, 1.05][len(history) - 1:], history)

    def propose(self, ctx):
        Towards.seen_kinds += [r.get("kind") for r in ctx.history]
        return super().propose(ctx)


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setitem(proposers._KINDS, "towards", f"{__name__}:Towards")
    Towards.seen_kinds = []
    return "towards"


def all_records(root: Path) -> list[dict]:
    return Ledger(root / ".autoresearch").records()


def holdouts(root: Path) -> list[dict]:
    return [r for r in all_records(root) if r.get("kind") == "holdout"]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """One run whose two keeps fit the validation targets and move away from the holdout's."""
    root = tmp_path_factory.mktemp("overfit") / "e"
    with pytest.MonkeyPatch.context() as mp:  # (module scope: before the per-test key folder exists)
        mp.setenv("AUTORESEARCH_KEY_DIR", str(tmp_path_factory.mktemp("keys")))
        mp.setitem(proposers._KINDS, "towards", f"{__name__}:Towards")
        holdout_experiment(root)
        summary = run_loop(root, max_experiments=2, proposer="towards", progress=Progress(quiet=True))
    return root, summary


def test_a_loop_that_overfits_validation_shows_a_validation_gain_and_no_holdout_gain(overfit):
    root, summary = overfit
    assert [r["status"] for r in records(root)] == ["baseline", "keep", "keep"]
    held = {h["experiment"]: h for h in holdouts(root)}
    assert sorted(held) == [0, 1, 2]  # the baseline as the reference, then each kept winner
    assert held[0]["values"] == [0.0, 0.0] and held[0]["metric"] == 0.0  # both baseline repeats, the mean
    assert held[2]["metric"] == 2.25 and held[2]["validation_metric"] == 0.25
    g = gains(all_records(root))
    assert g.best_id == 2 and g.val_delta == -3.75 and g.hold_delta == 2.25 and g.overfit
    assert any("OVERFIT" in line for line in summary.notes)  # said at the stop too

    res = cli("status", root)
    assert_clean_exit(res, 0)
    assert "validation 4 -> 0.25 (-3.75, -93.75%); holdout 0 -> 2.25 (+2.25" in res.stdout, res.stdout
    assert "OVERFIT: the holdout gain is much smaller than the validation gain (no gain at all)" in res.stdout


def test_the_report_sets_the_holdout_gain_beside_the_validation_gain(overfit):
    from autoresearch.views import write_report

    root, _ = overfit
    shown = "\n".join(write_report(root))  # what `autoresearch report` prints
    assert "OVERFIT" in shown and "validation 4 -> 0.25" in shown and "holdout 0 -> 2.25" in shown
    page = (root / ".autoresearch" / "report.html").read_text()
    assert '<section id="holdout"' in page and "OVERFIT" in page and "holdout 0 -&gt; 2.25" in page


def test_a_gain_that_holds_on_the_holdout_is_not_called_overfitting(tmp_path, scripted):
    root = holdout_experiment(tmp_path / "e", holdout="1.2 0.8")
    run_loop(root, max_experiments=2, proposer=scripted, progress=Progress(quiet=True))
    lines = gain_lines(all_records(root))
    assert not gains(all_records(root)).overfit
    assert "no sign of overfitting" in "\n".join(lines) and "OVERFIT" not in "\n".join(lines)


def test_status_says_so_when_no_holdout_is_configured(tmp_path, scripted):
    root = holdout_experiment(tmp_path / "e", configured=False)
    run_loop(root, max_experiments=1, proposer=scripted, progress=Progress(quiet=True))
    assert holdouts(root) == []
    res = cli("status", root)
    assert_clean_exit(res, 0)
    assert "no holdout configured" in res.stdout


def test_nothing_of_the_holdout_enters_keep_decisions_or_the_proposer(tmp_path, scripted):
    def decisions(root):
        keys = ("id", "status", "metric", "delta", "best", "noise_used", "min_delta_used", "reason")
        return [{k: r.get(k) for k in keys} for r in records(root)]

    plain = holdout_experiment(tmp_path / "plain", configured=False)
    run_loop(plain, max_experiments=3, proposer=scripted, progress=Progress(quiet=True))
    # a holdout every keep that prints absurd scores changes nothing the judge or proposer sees
    held = holdout_experiment(tmp_path / "held", holdout="-1e9", every=1)
    run_loop(held, max_experiments=3, proposer=scripted, progress=Progress(quiet=True))
    assert len(holdouts(held)) == 4
    assert decisions(held) == decisions(plain)
    assert set(Towards.seen_kinds) == {"experiment"}  # the proposer's history holds experiments only
    tsv = (held / ".autoresearch" / "results.tsv").read_text().splitlines()
    assert len(tsv) == 1 + 4  # header and one row per experiment; no holdout rows


def test_every_k_keeps_rescores_between_experiments_and_the_records_verify(tmp_path, scripted):
    root = holdout_experiment(tmp_path / "e", every=2)
    run_loop(root, max_experiments=3, proposer=scripted, progress=Progress(quiet=True))
    order = [(r["kind"], r.get("id", r.get("experiment"))) for r in all_records(root)[1:]]
    assert order == [("experiment", 0), ("experiment", 1), ("experiment", 2),
                     ("holdout", 0), ("holdout", 1), ("holdout", 2),  # after the 2nd keep
                     ("experiment", 3), ("holdout", 3)]  # the 3rd keep, at stop
    assert [h["trigger"] for h in holdouts(root)] == ["every 2 keeps (2 so far)"] * 3 + ["at stop"]
    rep = verify_run(root)
    assert rep.ok, "\n".join(rep.lines)
    shown = "\n".join(rep.lines)
    assert "holdout: experiment 3 (keep): score 0.04 on validation, 3.24 on the holdout" in shown, shown
    assert "holdout: experiment 0 (baseline): score 4 on validation, 0 on the holdout (mean of 2 repeats)" in shown
    # re-measuring a kept result still works beside the holdout records
    again, results = rerun(root, ids=[3])
    assert again.ok and results[0].measured == pytest.approx(0.04)
    # a holdout log altered afterwards is caught
    (root / ".autoresearch/runs/3/holdout.log").write_text("score: 0.0\n")
    rep = verify_run(root)
    assert not rep.ok and "holdout record of experiment 3: holdout.log does not match" in "\n".join(rep.lines)


def test_resume_after_a_stop_does_not_rescore_twice(tmp_path, scripted):
    root = holdout_experiment(tmp_path / "e")
    mark = tmp_path / "scored.txt"
    os.environ["HOLDOUT_MARK"] = str(mark)
    try:
        run_loop(root, max_experiments=1, proposer=scripted, progress=Progress(quiet=True))
        assert mark.read_text().split() == ["0-holdout", "0-2-holdout", "1-holdout"]
        run_loop(root, max_experiments=0, proposer=scripted, progress=Progress(quiet=True))
        assert len(mark.read_text().split()) == 3  # nothing new to score
        run_loop(root, max_experiments=1, proposer=scripted, progress=Progress(quiet=True))
        assert mark.read_text().split()[3:] == ["2-holdout"]  # only the new keep
    finally:
        del os.environ["HOLDOUT_MARK"]
    assert [h["experiment"] for h in holdouts(root)] == [0, 1, 2]
    assert due(all_records(root)) == []
    assert_intact(root)


def test_a_failing_holdout_is_recorded_once_and_never_stops_the_loop(tmp_path, scripted):
    root = holdout_experiment(tmp_path / "e")
    (root / "data/holdout.txt").write_text("not a number\n")
    subprocess.run(["git", "commit", "-qam", "broken holdout"], cwd=root, check=True)
    run_loop(root, max_experiments=1, proposer=scripted, progress=Progress(quiet=True))
    held = holdouts(root)
    assert [h["status"] for h in held] == ["failed", "failed"] and "exited 1" in held[0]["reason"]
    run_loop(root, max_experiments=0, proposer=scripted, progress=Progress(quiet=True))
    assert len(holdouts(root)) == 2  # a failure is an answer too: not retried at every stop
    assert "holdout of experiment 0 failed" in "\n".join(gain_lines(all_records(root)))
    assert_intact(root)


def _start(root: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    # SIGINT back to the default handler, however pytest itself was started (see test_cli.py)
    return subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_during_a_holdout_run_stops_cleanly_and_records_nothing_half_done(tmp_path):
    root = holdout_experiment(tmp_path / "e")
    mark = tmp_path / "scored.txt"
    proc = _start(root, "-n", "0", env={"HOLDOUT_MARK": str(mark), "HOLDOUT_SLEEP": "60"})
    deadline = time.monotonic() + 60
    while not (mark.exists() and mark.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), proc.communicate(timeout=5)[0]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "holdout: stopped by Ctrl-C" in out
    assert holdouts(root) == [] and [r["status"] for r in records(root)] == ["baseline"]
    lines = (root / ".autoresearch/ledger.jsonl").read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)  # every line whole
    assert cli("verify", root).returncode == 0
    # the next stop scores it, once
    res = cli("run", root, "-n", "0", "-q")
    assert_clean_exit(res, 0)
    assert [h["experiment"] for h in holdouts(root)] == [0] and holdouts(root)[0]["status"] == "ok"


SPY = textwrap.dedent("""\
    import os, subprocess
    X = 3.0
    seen = []
    for label, path in (("checkout", "data/holdout.txt"), ("folder", os.environ["EXP_ROOT"] + "/data/holdout.txt")):
        try:
            seen.append((label, open(path).read().strip()))
        except OSError:
            pass
    shown = subprocess.run(["git", "show", "HEAD:data/holdout.txt"], capture_output=True, text=True)
    if shown.returncode == 0:
        seen.append(("git", shown.stdout.strip()))
    print("SPY:", seen)
    open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "pred.txt"), "w").write(repr(X))
""")


@pytest.mark.parametrize("sandbox", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_run_cannot_read_the_holdout_split_under_the_sandbox(tmp_path, monkeypatch, sandbox):
    root = tmp_path / "e"
    monkeypatch.setenv("EXP_ROOT", str(root))
    holdout_experiment(root, train=SPY, sandbox=sandbox)
    run_loop(root, max_experiments=0, progress=Progress(quiet=True))
    log = (root / ".autoresearch/runs/0/run.log").read_text()
    if sandbox == "none":  # the control: the spy works where nothing confines it
        assert "('checkout', '3.0 3.0')" in log and "('git', '3.0 3.0')" in log, log
    else:
        assert "SPY: []" in log, log
    # while the holdout command, confined like evaluate, reads it
    assert [h["status"] for h in holdouts(root)] == ["ok"] and holdouts(root)[0]["metric"] == 0.0
    assert all(run["sandbox"] for run in holdouts(root)[0]["runs"])


QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def test_the_quickstart_scores_its_saved_predictions_on_a_holdout_split(tmp_path):
    env = {**os.environ, "AUTORESEARCH_ARTIFACTS": str(tmp_path / "artifacts"), "AUTORESEARCH_SEED": "0"}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=QUICKSTART, env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=60)
    assert run("train.py").returncode == 0
    val, held = run("evaluate.py"), run("evaluate.py", "--holdout")
    assert val.returncode == 0 and held.returncode == 0, val.stderr + held.stderr
    v = float(val.stdout.split("val_loss:")[1])
    h = float(held.stdout.split("METRIC val_loss=")[1])
    assert 0 < v < 1 and 0 < h < 1 and v != h
    from autoresearch.config import load_config

    cfg = load_config(QUICKSTART)
    assert cfg.experiment.holdout == "python evaluate.py --holdout"


def test_what_a_proposer_reads_of_the_run_never_shows_the_holdout(overfit, capsys):
    """drive's `status` and `show` (an agent's view, the MCP tools too) call the views without the
    holdout; only the user's command line asks for it."""
    from autoresearch.views import print_experiment, print_status

    root, _ = overfit
    print_status(root)
    print_experiment(root, 2)
    agent = capsys.readouterr().out
    assert "score" in agent and "holdout" not in agent.lower()
    print_status(root, holdout=True)
    print_experiment(root, 2, holdout=True)
    user = capsys.readouterr().out
    assert "OVERFIT" in user and "holdout:     2.25  (validation 0.25; never used to keep or discard)" in user
