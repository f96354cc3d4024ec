"""The loop end to end on real git repositories and real processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoresearch.errors import ProposalInvalid, UserError
from autoresearch.judge import KEEP_Z
from autoresearch.ledger import Ledger
from autoresearch.loop import Session, run_loop, step
from autoresearch.proposers import Proposal
from autoresearch.verify import verify_run

from builders import Scripted, open_session, statuses
from conftest import git, make_experiment


def test_keep_discard_crash_and_records(exp):
    s = open_session(exp)
    base = s.measure_baseline()
    assert base["status"] == "baseline" and base["metric"] == pytest.approx(4.0005)
    assert base["noise"] == pytest.approx(0.000707, rel=1e-2)
    p = Scripted(s.config, [2.0, 2.5, "oops(", 1.5])
    for _ in range(4):
        step(s, p)
    assert statuses(exp) == ["baseline", "keep", "discard", "crash", "keep"]
    recs = Ledger(exp / ".autoresearch").experiments()
    keep, discard, crash = recs[1], recs[2], recs[3]
    assert keep["metric"] == pytest.approx(1.0005) and "suspicious" in keep["flags"] and keep["delta"] < 0
    assert "needs" in discard["reason"]
    assert "exited with status 1" in crash["reason"] and "SyntaxError" in crash["log_tail"]
    # The branch holds exactly the kept commits; the user's checkout is untouched.
    head = git(exp, "rev-parse", "autoresearch/" + s.tag).strip()
    assert head == recs[4]["commit"]
    assert git(exp, "rev-parse", "HEAD").strip() == recs[0]["commit"]
    assert "X = 3.0" in (exp / "train.py").read_text()
    # Discarded and crashed experiments keep their diffs.
    assert "+X = 2.5" in (exp / ".autoresearch/runs/2/diff.patch").read_text()
    assert (exp / ".autoresearch/runs/3/run.log").read_text().count("SyntaxError") >= 1
    # results.tsv: the original five columns first.
    rows = (exp / ".autoresearch/results.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:5] == ["commit", "score", "memory_gb", "status", "description"]
    assert rows[2].split("\t")[3:5] == ["keep", "X -> 2.0"]
    assert [r["status"] for r in p.seen] == ["keep", "discard", "crash", "keep"]
    assert verify_run(exp).ok


def test_min_delta_absolute_blocks_small_gains(tmp_path):
    root = make_experiment(tmp_path / "e", x=1.2, min_delta="0.1")
    s = open_session(root)
    s.measure_baseline()  # 0.04
    step(s, Scripted(s.config, [1.05]))  # 0.0025: better, but by less than 0.1
    assert statuses(root)[-1] == "discard"


def test_maximize_goal(tmp_path):
    root = make_experiment(tmp_path / "e", x=3.0)
    text = (root / "autoresearch.toml").read_text().replace('goal = "minimize"', 'goal = "maximize"')
    (root / "autoresearch.toml").write_text(text)
    git(root, "commit", "-qam", "maximize")
    s = open_session(root)
    s.measure_baseline()
    p = Scripted(s.config, [2.0, 5.0])
    step(s, p)
    step(s, p)
    assert statuses(root) == ["baseline", "discard", "keep"]


def test_nan_and_missing_metric_are_crashes(tmp_path):
    root = make_experiment(tmp_path / "e")
    s = open_session(root)
    s.measure_baseline()

    def nan(ctx):
        return Proposal("prints nan", {"train.py": ctx.files["train.py"].replace('print(f"score', 'print("score: nan") or print(f"x')})

    def silent(ctx):
        return Proposal("prints nothing", {"train.py": "print('done')\n"})

    p = Scripted(s.config, [nan, silent])
    step(s, p)
    step(s, p)
    recs = Ledger(root / ".autoresearch").experiments()
    assert [r["status"] for r in recs[1:]] == ["crash", "crash"]
    assert "score is nan" in recs[1]["reason"]
    assert "no 'score' in the output" in recs[2]["reason"]


def test_change_outside_editable_is_rejected_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    root = make_experiment(tmp_path / "e", files={"prepare.py": "DATA = 1\n"})
    s = open_session(root)
    s.measure_baseline()

    def sneaky(ctx):
        return Proposal("edit the evaluation", {"prepare.py": f"open({str(marker)!r}, 'w')\n"})

    def escape(ctx):
        return Proposal("escape", {"../outside.py": "x = 1\n"})

    step(s, Scripted(s.config, [sneaky]))
    step(s, Scripted(s.config, [escape]))
    recs = Ledger(root / ".autoresearch").experiments()
    assert [r["status"] for r in recs[1:]] == ["invalid", "invalid"]
    assert "prepare.py is not editable" in recs[1]["reason"]
    assert "leaves the experiment folder" in recs[2]["reason"]
    assert not marker.exists()
    assert (s.ws.worktree / "prepare.py").read_text() == "DATA = 1\n"


def test_protected_file_changed_by_the_experiment_is_rejected(tmp_path):
    root = make_experiment(tmp_path / "e", files={"prepare.py": "DATA = 1\n"})
    s = open_session(root)
    s.measure_baseline()

    def tamper(ctx):
        code = ctx.files["train.py"] + "open('prepare.py', 'w').write('DATA = 2\\n')\n"
        return Proposal("tamper", {"train.py": code.replace("X = 3.0", "X = 1.0")})

    step(s, Scripted(s.config, [tamper]))
    rec = Ledger(root / ".autoresearch").experiments()[-1]
    assert rec["status"] == "rejected" and "protected file prepare.py" in rec["reason"]
    assert (s.ws.worktree / "prepare.py").read_text() == "DATA = 1\n"  # reset afterwards
    assert git(root, "rev-parse", "autoresearch/" + s.tag).strip() == rec["parent"]


def test_evaluate_is_the_only_source_of_the_primary_metric(tmp_path):
    evaluate = "import json, os\nprint('score:', json.load(open(os.environ['AUTORESEARCH_ARTIFACTS'] + '/out.json'))['x'])\n"
    train = ("import json, os\nX = 3.0\njson.dump({'x': (X - 1) ** 2}, open(os.environ['AUTORESEARCH_ARTIFACTS'] + '/out.json', 'w'))\n"
             "print('score: 0.0')  # a fake score printed by the editable code\n")
    root = make_experiment(tmp_path / "e", train=train, evaluate="python evaluate.py", files={"evaluate.py": evaluate}, baseline_runs=1)
    s = open_session(root)
    rec = s.measure_baseline()
    assert rec["metric"] == pytest.approx(4.0)
    assert rec["runs"][0]["run_metrics"]["score"] == 0.0  # recorded, never counted


def test_duplicate_proposal_is_refused_and_asked_again(exp):
    s = open_session(exp)
    s.measure_baseline()
    p = Scripted(s.config, [2.0, 2.0, 1.5])
    step(s, p)
    rec = step(s, p)  # 2.0 again: refused, then 1.5
    assert rec["description"] == "X -> 1.5"
    assert len(Ledger(exp / ".autoresearch").experiments()) == 3


def test_invalid_proposal_is_recorded(exp):
    s = open_session(exp)
    s.measure_baseline()

    def broken(ctx):
        raise ProposalInvalid("the model's edit did not apply")

    rec = step(s, Scripted(s.config, [broken]))
    assert rec["status"] == "invalid" and "did not apply" in rec["reason"]


def test_timeout_kills_grandchildren(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    train = (f"import subprocess, time\nX = 3.0\n"
             f"p = subprocess.Popen(['sleep', '300'])\nopen({str(pidfile)!r}, 'w').write(str(p.pid))\n"
             "time.sleep(300)\n")
    root = make_experiment(tmp_path / "e", train=train, budget="1s", timeout="2s", baseline_runs=1)
    s = open_session(root)
    started = time.monotonic()
    with pytest.raises(UserError, match="baseline failed"):
        s.measure_baseline()
    assert time.monotonic() - started < 60
    rec = Ledger(root / ".autoresearch").experiments()[0]
    assert rec["status"] == "timeout"
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_dirty_tree_is_refused(exp):
    (exp / "train.py").write_text("X = 7\n")
    with pytest.raises(UserError, match="uncommitted changes to train.py"):
        Session(exp).open()


def test_not_a_git_repo(tmp_path):
    (tmp_path / "autoresearch.toml").write_text('[experiment]\nrun = "true"\neditable = ["a.py"]\n')
    with pytest.raises(UserError, match="not inside a git repository"):
        Session(tmp_path)


def test_editable_glob_matching_nothing(tmp_path):
    root = make_experiment(tmp_path / "e")
    (root / "autoresearch.toml").write_text((root / "autoresearch.toml").read_text().replace('["train.py"]', '["model_*.py"]'))
    git(root, "commit", "-qam", "glob")
    with pytest.raises(UserError, match="'model_\\*.py' matches no file"):
        Session(root).open()


class Tiny(Scripted):
    def __init__(self, config, history):
        super().__init__(config, [2.0, 1.5, 1.2, 1.1, 1.05, 1.01][len(history) - 1:], history)


def test_run_loop_stops_and_resumes_with_same_ids(exp):
    from autoresearch import proposers

    proposers._KINDS["scripted"] = f"{__name__}:Tiny"
    try:
        s1 = run_loop(exp, max_experiments=2, proposer="scripted")
        s2 = run_loop(exp, max_experiments=1, proposer="scripted")
    finally:
        del proposers._KINDS["scripted"]
    assert (s1.experiments, s2.experiments) == (2, 1)
    assert [r["id"] for r in Ledger(exp / ".autoresearch").experiments()] == [0, 1, 2, 3]
    assert verify_run(exp).ok


def test_stale_pending_experiment_is_recorded_as_interrupted(exp):
    s = open_session(exp)
    s.measure_baseline()
    # Simulate a harness killed mid-experiment: candidate written, pending noted, no record.
    s.ws.write_edits({"train.py": "X = 2.0\nprint('score: 1')\n"}, ["train.py"])
    cand = s.ws.commit_candidate("half done", ["train.py"])
    s.intents.write(1, id=1, parent=cand.parent, commit=cand.commit, tree=cand.tree, diff_sha256=cand.diff_sha256,
                      description="half done", proposer="scripted", proposal={}, start="t", pgid=None)
    again = Session(exp)
    again.open()
    recs = Ledger(exp / ".autoresearch").experiments()
    assert [r["status"] for r in recs] == ["baseline", "interrupted"]
    assert "X = 3.0" in (again.ws.worktree / "train.py").read_text()
    assert verify_run(exp).ok


def test_keep_recorded_but_branch_not_moved_is_finished_on_resume(exp):
    s = open_session(exp)
    s.measure_baseline()
    original_keep = s.ws.keep
    s.ws.keep = lambda *a, **k: (_ for _ in ()).throw(SystemExit("killed between ledger and branch"))
    with pytest.raises(SystemExit):
        step(s, Scripted(s.config, [2.0]))
    s.ws.keep = original_keep
    again = Session(exp)
    again.open()
    rec = Ledger(exp / ".autoresearch").experiments()[-1]
    assert rec["status"] == "keep"
    assert git(exp, "rev-parse", "autoresearch/" + again.tag).strip() == rec["commit"]
    assert verify_run(exp).ok


def test_confirm_reruns_a_winner(tmp_path):
    root = make_experiment(tmp_path / "e")
    (root / "autoresearch.toml").write_text((root / "autoresearch.toml").read_text() + "confirm = true\n")
    git(root, "commit", "-qam", "confirm")
    s = open_session(root)
    s.measure_baseline()
    step(s, Scripted(s.config, [2.95]))
    rec = Ledger(root / ".autoresearch").experiments()[-1]
    assert rec["status"] == "keep" and len(rec["runs"]) == 2 and [r["seed"] for r in rec["runs"]] == [0, 1]


def test_ledger_records_are_chained_and_signed(exp):
    s = open_session(exp)
    s.measure_baseline()
    lines = (exp / ".autoresearch/ledger.jsonl").read_bytes().splitlines()
    header, first = json.loads(lines[0]), json.loads(lines[1])
    assert header["kind"] == "start" and len(header["public_key"]) == 64
    assert first["prev"] != "0" * 64 and first["sig"]
    assert header["host"]["cores"] if "cores" in header["host"] else header["host"]


def test_bwrap_sandbox_hides_ledger_key_and_hidden_files_from_run(tmp_path):
    from autoresearch.sandbox import bwrap_available
    from autoresearch.signing import key_dir

    if not bwrap_available():
        pytest.skip("bubblewrap is not usable on this machine")
    probe = f'''\
import os, socket
X = 3.0
seen = []
for path in ["../ledger.jsonl", "../../ledger.jsonl", {str(key_dir())!r}, "val.txt", {str(tmp_path / "e" / "val.txt")!r}]:
    try:
        data = open(path).read() if not os.path.isdir(path) else os.listdir(path)
        if data:
            seen.append(path)
    except OSError:
        pass
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
    seen.append("network")
except OSError as err:
    pass
import subprocess
if "secret" in subprocess.run(["git", "show", "HEAD:val.txt"], capture_output=True, text=True).stdout:
    seen.append("git object store")
try:
    open("prepare.py", "w").write("changed")
    seen.append("wrote prepare.py")
except OSError:
    pass
print("seen:", seen)
print("score:", len(seen))
'''
    evaluate = "print('score:', 0 if open('val.txt').read() == 'secret answers' else 99)\n"
    root = make_experiment(tmp_path / "e", train=probe, sandbox="bwrap", baseline_runs=1, evaluate="python evaluate.py",
                           files={"prepare.py": "P = 1\n", "val.txt": "secret answers", "evaluate.py": evaluate},
                           protected=["prepare.py", "evaluate.py"])
    text = (root / "autoresearch.toml").read_text().replace('protected = ', 'hidden = ["val.txt"]\nprotected = ')
    (root / "autoresearch.toml").write_text(text)
    git(root, "commit", "-qam", "hidden")
    s = open_session(root)
    rec = s.measure_baseline()  # run must see nothing; evaluate (the protected scorer) can read val.txt
    log = (root / ".autoresearch/runs/0/run.log").read_text()
    assert "seen: []" in log, log
    assert rec["metric"] == 0  # evaluate did read the hidden file
    assert rec["runs"][0]["sandbox"] == "bwrap" and rec["runs"][0]["enforced"]["no_network"]


def test_proposer_api_key_never_reaches_the_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    train = "import os\nX = 3.0\nprint('score:', 1 if 'sk-test-secret' in str(os.environ) else 0)\n"
    root = make_experiment(tmp_path / "e", train=train, baseline_runs=1)  # sandbox "none": nothing else strips it
    rec = open_session(root).measure_baseline()
    assert rec["metric"] == 0


def test_noise_is_pooled_over_every_repeated_measurement(tmp_path):
    # seed noise 0.001 per seed step: baseline seeds 0,1 -> std 0.000707; a confirmed keep adds its pair
    root = make_experiment(tmp_path / "e")
    (root / "autoresearch.toml").write_text((root / "autoresearch.toml").read_text() + "confirm = true\n")
    git(root, "commit", "-qam", "confirm")
    s = open_session(root)
    s.measure_baseline()
    assert s.noise() == pytest.approx(0.000707, rel=1e-2)
    step(s, Scripted(s.config, [2.9]))
    rec = Ledger(root / ".autoresearch").experiments()[-1]
    assert rec["status"] == "keep" and rec["min_delta_used"] == pytest.approx(KEEP_Z * 0.000707, rel=1e-2)  # x se, 2 runs each
    assert s.noise() == pytest.approx(0.000707, rel=1e-2)  # two pairs, same spread


def test_the_record_type_round_trips_every_record_the_loop_writes(exp):
    from autoresearch.record import ADVANCES_BEST, ExperimentRecord, History

    s = open_session(exp)
    s.measure_baseline()
    step(s, Scripted(s.config, [2.0]))
    step(s, Scripted(s.config, ["oops("]))
    recs = Ledger(exp / ".autoresearch").experiments()
    for rec in recs:
        again = ExperimentRecord.from_json(rec).to_json()
        assert {k: v for k, v in rec.items() if k not in ("prev", "sig")} == again
    history = History(recs)
    assert history.best["id"] == 1 and history.best["status"] in ADVANCES_BEST
    assert history.baseline["id"] == 0 and history.next_id == 3 and history.cost == 0.0
