"""The command line as a user runs it: real subprocesses, exit codes, messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, git, make_experiment

SLOW_TRAIN = '''\
import os, time
X = 3.0
NOISE = 0.001
time.sleep(float(os.environ.get("SLEEP", "0")) if not os.environ["AUTORESEARCH_RUN_ID"].startswith("0") else 0)
print(f"score: {(X - 1.0) ** 2 + NOISE * int(os.environ['AUTORESEARCH_SEED'])}")
'''


def ledger_lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / ".autoresearch/ledger.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("command", ["", "init", "run", "try", "status", "log", "show", "report", "verify"])
def test_every_command_explains_itself(command):
    res = cli(*([command] if command else []), "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and len(res.stdout.splitlines()) > 4


def test_run_log_show_verify(exp):
    res = cli("run", exp, "--max-experiments", "3")
    assert res.returncode == 0, res.stderr
    assert "baseline" in res.stdout and "stopped (max-experiments)" in res.stdout
    log = cli("log", exp)
    assert log.returncode == 0 and len(log.stdout.splitlines()) == 4
    show = cli("show", exp, "1")
    assert show.returncode == 0 and "experiment 1:" in show.stdout and "--- diff ---" in show.stdout
    ver = cli("verify", exp)
    assert ver.returncode == 0 and "OK: the record is intact" in ver.stdout


def test_verify_names_the_record_edited_by_hand(exp):
    assert cli("run", exp, "-n", "2").returncode == 0
    path = exp / ".autoresearch/ledger.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["metric"] = 0.0  # a better number than was measured
    lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    res = cli("verify", exp)
    assert res.returncode == 1
    assert "line 3 (experiment 1)" in res.stdout and "signature" in res.stdout


def test_verify_catches_a_removed_record(exp):
    assert cli("run", exp, "-n", "2").returncode == 0
    path = exp / ".autoresearch/ledger.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    res = cli("verify", exp)
    assert res.returncode == 1 and "line 3" in res.stdout


def test_verify_catches_results_tsv_edits(exp):
    assert cli("run", exp, "-n", "1").returncode == 0
    tsv = exp / ".autoresearch/results.tsv"
    rows = tsv.read_text().splitlines()
    cells = rows[2].split("\t")
    cells[1] = "0.000001"  # a better number than was measured
    tsv.write_text("\n".join(rows[:2] + ["\t".join(cells)] + rows[3:]) + "\n")
    res = cli("verify", exp)
    assert res.returncode == 1 and "results.tsv" in res.stdout


@pytest.mark.parametrize("setup,args,needle", [
    (lambda p: (p / "autoresearch.toml").write_text("[experiment\n"), ["run"], "not valid TOML"),
    (lambda p: None, ["show", "{p}", "99"], "no experiment 99"),
    (lambda p: (p / "autoresearch.toml").unlink(), ["run"], "autoresearch.toml not found"),
])
def test_user_errors_exit_2_with_one_sentence(tmp_path, setup, args, needle):
    root = make_experiment(tmp_path / "e")
    if "show" in args:
        assert cli("run", root, "-n", "0").returncode == 0
    setup(root)
    res = cli(*[a.replace("{p}", str(root)) for a in args], *([] if "{p}" in " ".join(args) else [root]))
    assert res.returncode == 2, res.stdout + res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_not_a_repository_is_a_clear_error(tmp_path):
    (tmp_path / "autoresearch.toml").write_text('[experiment]\nrun = "true"\neditable = ["a.py"]\n')
    res = cli("run", tmp_path)
    assert res.returncode == 2 and "not inside a git repository" in res.stderr


def test_init_quickstart_makes_a_repository(tmp_path):
    res = cli("init", tmp_path / "myexp", "--template", "quickstart")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "myexp/autoresearch.toml").exists() and (tmp_path / "myexp/program.md").exists()
    assert git(tmp_path / "myexp", "status", "--porcelain") == ""
    again = cli("init", tmp_path / "myexp")
    assert again.returncode == 2 and "not empty" in again.stderr
    bad = cli("init", tmp_path / "other", "--template", "nope")
    assert bad.returncode == 2 and "unknown template" in bad.stderr


def test_try_mode_agent_driven(exp):
    assert cli("run", exp, "-n", "0").returncode == 0
    wt = exp / ".autoresearch/worktree"
    # an agent edits the editable file and asks the harness to judge it
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("X = 3.0", "X = 1.5"))
    res = cli("try", "-m", "lower X", cwd=wt)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("keep: experiment 1 metric 0.25")
    # the same code again is refused: never rerun identical code
    (wt / "train.py").write_text((wt / "train.py").read_text())
    res = cli("try", "-m", "nothing", cwd=wt)
    assert res.returncode == 2 and "no change to the editable files" in res.stderr
    # a worse change is discarded and the file reset
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("X = 1.5", "X = 9"))
    res = cli("try", "-m", "raise X", cwd=wt)
    assert res.stdout.startswith("discard: experiment 2")
    assert "X = 1.5" in (wt / "train.py").read_text()
    # touching a file outside `editable` is rejected and reverted, nothing runs
    (wt / "autoresearch.toml").write_text("tampered")
    res = cli("try", "-m", "edit config", cwd=wt)
    assert res.stdout.startswith("rejected: experiment 3") and "autoresearch.toml" in res.stdout
    assert (wt / "autoresearch.toml").read_text() != "tampered"
    assert [r.get("proposer") for r in ledger_lines(exp)[2:]] == ["try", "try", "try"]
    assert cli("verify", exp).returncode == 0


def test_try_outside_the_run_branch_is_refused(exp):
    assert cli("run", exp, "-n", "0").returncode == 0
    res = cli("try", "-m", "x", cwd=exp)
    assert res.returncode == 2 and "not the run branch" in res.stderr


def _start(root: Path, *args: str, sleep: float) -> subprocess.Popen:
    # A shell starts background jobs (`pytest &`) with SIGINT ignored, and Python then installs no
    # Ctrl-C handler; give the harness the default so the Ctrl-C tests hold however pytest was started.
    return subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "SLEEP": str(sleep)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_running(root: Path, exp_id: int, timeout: float = 60) -> None:
    pending = root / f".autoresearch/pending/{exp_id}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(pending.read_text())
            if data.get("id") == exp_id and data.get("pgid"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"experiment {exp_id} never started")


def test_resume_after_sigkill_of_the_harness(tmp_path):
    root = make_experiment(tmp_path / "e", train=SLOW_TRAIN)
    proc = _start(root, "-n", "5", sleep=30)
    _wait_for_running(root, 1)
    pgid = json.loads((root / ".autoresearch/pending/1.json").read_text())["pgid"]
    proc.kill()
    proc.wait()
    res = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", str(root), "-n", "1"],
                         capture_output=True, text=True, env={**os.environ, "SLEEP": "0"}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "interrupted" in res.stderr + res.stdout
    from autoresearch.runner import group_alive

    assert not group_alive(pgid)  # the orphaned experiment was killed (zombies awaiting init don't count)
    recs = [r for r in ledger_lines(root) if r["kind"] == "experiment"]
    assert [r["id"] for r in recs] == [0, 1, 2]
    assert recs[1]["status"] == "interrupted" and recs[2]["status"] != "interrupted"
    assert cli("verify", root).returncode == 0


def test_ctrl_c_stops_cleanly(tmp_path):
    root = make_experiment(tmp_path / "e", train=SLOW_TRAIN)
    proc = _start(root, sleep=30)
    _wait_for_running(root, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    recs = [r for r in ledger_lines(root) if r["kind"] == "experiment"]
    assert recs[-1]["status"] == "interrupted" and "Ctrl-C" in recs[-1]["reason"] and recs[-1]["id"] == 1
    assert not list((root / ".autoresearch/pending").glob("*.json"))
    assert cli("verify", root).returncode == 0
    assert "X = 3.0" in (root / ".autoresearch/worktree/train.py").read_text()


def test_second_harness_on_the_same_folder_is_refused(tmp_path):
    root = make_experiment(tmp_path / "e", train=SLOW_TRAIN)
    proc = _start(root, sleep=30)
    try:
        _wait_for_running(root, 1)
        res = cli("run", root, "-n", "1")
        assert res.returncode == 2 and "already running" in res.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_verify_rerun_reproduces_kept_results(exp):
    assert cli("run", exp, "-n", "3").returncode == 0
    res = cli("verify", exp, "--rerun", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "re-measured" in res.stdout and "agrees" in res.stdout


def test_verify_rerun_catches_a_result_that_does_not_reproduce(tmp_path):
    # The experiment reads a number from outside the repository: the record can't be reproduced.
    outside = tmp_path / "luck.txt"
    outside.write_text("0.5")
    train = f"X = 3.0\nprint('score:', float(open({str(outside)!r}).read()) + X)\n"
    root = make_experiment(tmp_path / "e", train=train, baseline_runs=1)
    assert cli("run", root, "-n", "0").returncode == 0
    outside.write_text("7.5")
    res = cli("verify", root, "--rerun-ids", "0")
    assert res.returncode == 1 and "DISAGREES" in res.stdout


def test_export_and_verify_bundle_elsewhere(exp, tmp_path):
    assert cli("run", exp, "-n", "2").returncode == 0
    bundle = tmp_path / "evidence.tar.gz"
    assert cli("export", exp, "-o", bundle).returncode == 0
    ok = cli("verify", "--bundle", bundle, cwd=tmp_path)
    assert ok.returncode == 0 and "OK: the evidence is intact" in ok.stdout
    # tamper with one patch inside the bundle
    import tarfile
    work = tmp_path / "x"
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    (work / "runs/1/diff.patch").write_text("forged")
    forged = tmp_path / "forged.tar.gz"
    with tarfile.open(forged, "w:gz") as tar:
        for f in sorted(work.rglob("*")):
            if f.is_file():
                tar.add(f, arcname=str(f.relative_to(work)))
    bad = cli("verify", "--bundle", forged, cwd=tmp_path)
    assert bad.returncode == 1 and "runs/1/diff.patch" in bad.stdout
