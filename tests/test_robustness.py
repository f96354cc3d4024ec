"""Bad input, end to end: each test feeds the harness one thing a user, a proposer or an experiment
can get wrong, and checks that the run ends in an honest record, `verify` still passes (or names
the damage), and nothing prints a traceback. docs/robustness.md lists every row and its test.

Real git repositories, real subprocesses. Experiments that misbehave on purpose are bounded by
construction (fixed loop counts, alarms, pipes that close when the parent dies), so a broken
harness or sandbox cannot hurt the machine running the tests.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from autoresearch.loop import step
from autoresearch.proposers import Proposal

from builders import Scripted, assert_clean_exit, assert_intact, open_session, records, set_toml
from conftest import TRAIN_PY, cli, git, make_experiment


def alive(pids: list[int]) -> list[int]:
    """Pids still running (zombies waiting for init to reap them count as dead)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


# ---- configuration and folder state ------------------------------------------------------------


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.replace("[metric]", "colour = \"red\"\n[metric]"), "unknown key 'experiment.colour'"),
    (lambda t: t.replace("baseline_runs = 2", "baseline_runs = \"two\""), "judge.baseline_runs"),
    (lambda t: t.replace('editable = ["train.py"]', 'editable = "train.py"'), "experiment.editable"),
    (lambda t: t.replace('budget = "10s"', 'budget = "10 parsecs"'), "experiment.budget"),
    (lambda t: t.encode("utf-16"), "not UTF-8"),
    (lambda t: t.replace('editable = ["train.py"]', 'editable = ["model_*.py"]'), "matches no file committed"),
], ids=["unknown-key", "wrong-type", "string-not-list", "bad-duration", "utf-16", "glob-matches-nothing"])
def test_bad_config_is_one_sentence_from_the_cli(tmp_path, edit, needle):
    root = make_experiment(tmp_path / "e")
    new = edit((root / "autoresearch.toml").read_text())
    (root / "autoresearch.toml").write_bytes(new if isinstance(new, bytes) else new.encode())
    git(root, "commit", "-qam", "bad config")
    res = cli("run", root, "-n", "1")
    assert_clean_exit(res, 2)
    assert needle in res.stderr and "autoresearch.toml" in res.stderr
    assert not (root / ".autoresearch/ledger.jsonl").exists()  # nothing started


def test_repository_without_commits(tmp_path):
    root = tmp_path / "e"
    root.mkdir()
    (root / "train.py").write_text("print('score: 1')\n")
    (root / "autoresearch.toml").write_text('[experiment]\nrun = "python train.py"\neditable = ["train.py"]\n')
    git(root, "init", "-q", "-b", "main")
    res = cli("run", root, "-n", "1")
    assert_clean_exit(res, 2)
    assert "commit" in res.stderr


def test_run_command_that_does_not_exist(tmp_path):
    root = make_experiment(tmp_path / "e", run="no-such-command-xyz --epochs 3", baseline_runs=1)
    res = cli("run", root, "-n", "2")
    assert_clean_exit(res, 2)
    assert "the baseline failed (crash: run exited with status 127" in res.stderr
    rec = records(root)[0]
    assert rec["status"] == "crash" and "not found" in rec["log_tail"]
    assert_clean_exit(cli("verify", root), 0)
    # Fixing the command is enough: the same run goes on and measures its baseline.
    set_toml(root, "no-such-command-xyz --epochs 3", "python train.py", "fix the command")
    assert_clean_exit(cli("run", root, "-n", "1"), 0)
    assert [r["status"] for r in records(root)][:2] == ["crash", "baseline"]
    assert_clean_exit(cli("verify", root), 0)


def test_failing_setup_command(tmp_path):
    root = make_experiment(tmp_path / "e", baseline_runs=1)
    set_toml(root, "[experiment]\n", "[experiment]\nsetup = \"python -c 'import sys; print(42); sys.exit(3)'\"\n")
    res = cli("run", root, "-n", "1")
    assert_clean_exit(res, 2)
    assert "setup command" in res.stderr and "exit 3" in res.stderr and "setup.log" in res.stderr
    assert "42" in (root / ".autoresearch/setup.log").read_text()
    assert records(root) == []  # nothing ran, nothing is claimed
    assert_clean_exit(cli("verify", root), 0)


def test_torn_last_ledger_line_is_repaired_on_start(exp):
    assert_clean_exit(cli("run", exp, "-n", "1"), 0)
    path = exp / ".autoresearch/ledger.jsonl"
    before = path.read_bytes()
    torn = b'{"kind":"experiment","id":2,"sta'  # a write cut short by SIGKILL
    path.write_bytes(before + torn)
    res = cli("run", exp, "-n", "1")
    assert_clean_exit(res, 0)
    assert f"dropped a torn last line ({len(torn)} bytes" in res.stderr.replace("\n", " ")
    assert path.read_bytes().startswith(before)
    assert [r["id"] for r in records(exp)] == [0, 1, 2]
    assert_clean_exit(cli("verify", exp), 0)


# ---- what the experiment prints ----------------------------------------------------------------

NOISY_TRAIN = '''\
import os, sys
X = {x}
out = sys.stdout.buffer
out.write(bytes(range(256)) * 64)                       # every byte value, NUL included
out.write(b"\\n\\xff\\xfe\\xc3\\x28 invalid utf-8 \\xed\\xa0\\x80 lone surrogate\\n")
out.write(b"\\x1b[31mred\\x1b[0m \\r progress 50%\\r progress 100%\\n")
out.write(b"\\xe2\\x82" + b"y" * 100000 + b"\\n")          # a cut multibyte char, a 100 kB line
out.flush()
if X != 3.0:
    out.write(b"\\xff\\xfe bad bytes at the end\\n")        # and die on a line that is not UTF-8
    sys.exit(1)
print(f"score: {{(X - 1.0) ** 2}}")
'''


def test_binary_and_non_utf8_output(tmp_path):
    root = make_experiment(tmp_path / "e", train=NOISY_TRAIN.format(x=3.0), baseline_runs=1)
    s = open_session(root)
    base = s.measure_baseline()
    assert base["status"] == "baseline" and base["metric"] == 4.0  # found among the garbage
    rec = step(s, Scripted(s.config, [2.0]))
    assert rec["status"] == "crash" and "bad bytes at the end" in rec["reason"]
    assert "\x00" not in rec["log_tail"] and "bad bytes" in rec["log_tail"]
    assert (root / ".autoresearch/runs/1/run.log").read_bytes().count(b"\x00") == 64  # the log keeps the bytes
    assert_intact(root)
    show = cli("show", root, "1")
    assert_clean_exit(show, 0)
    assert "bad bytes at the end" in show.stdout
    assert_clean_exit(cli("log", root), 0)


GIGABYTE_TRAIN = '''\
import sys
X = 3.0
out = sys.stdout.buffer
chunk = b"loss 1.234 " * 95325 + b"\\n"                 # ~1 MiB lines
for i in range(1024):
    out.write(chunk)
out.write(b"x" * (1 << 20))                              # and a last MiB with no newline at all
print(f"\\nscore: {(X - 1.0) ** 2}", flush=True)
'''


def test_a_gigabyte_of_output_is_capped_and_its_tail_kept(tmp_path):
    root = make_experiment(tmp_path / "e", train=GIGABYTE_TRAIN, baseline_runs=1, timeout="120s")
    s = open_session(root)
    rec = s.measure_baseline()
    assert rec["status"] == "baseline" and rec["metric"] == 4.0  # the metric came from the kept tail
    run = rec["runs"][0]
    assert run["output_bytes"] > 1 << 30
    log = root / ".autoresearch/runs/0/run.log"
    cap = int(s.config.experiment.max_log_mb * 1024 * 1024)
    assert log.stat().st_size <= cap + 200
    with open(log, "rb") as fh:
        fh.seek(-4096, os.SEEK_END)
        end = fh.read()
    assert end.rstrip().endswith(b"score: 4.0")
    with open(log, "rb") as fh:
        fh.seek(cap // 2 - 100)
        middle = fh.read(400)
    assert b"bytes of output dropped; the tail follows" in middle
    assert_intact(root)


# ---- what the experiment does ------------------------------------------------------------------

FORK_TRAIN = '''\
import os, signal, sys, time
X = {x}
# Bounded on purpose: at most 1000 children, each blocked on a pipe that closes when the parent
# dies and each with an alarm, so even a broken sandbox or harness cannot hurt the machine.
if X != 3.0 or {always}:
    r, w = os.pipe()
    pids, refused = [], 0
    for _ in range(1000):
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            continue
        if pid == 0:
            os.close(w)
            signal.alarm(60)
            os.read(r, 1)
            os._exit(0)
        pids.append(pid)
    open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "pids"), "w").write(" ".join(map(str, pids)))
    print(f"METRIC forked={{len(pids)}}")
    print(f"METRIC refused={{refused}}")
    if not {always}:
        time.sleep(60)                                   # and then hang: only the timeout ends this
print(f"score: {{(X - 1.0) ** 2}}")
'''


def test_fork_of_1000_processes_is_capped_by_the_sandbox(tmp_path, monkeypatch):
    from autoresearch.sandbox import Limits, SandboxSpec, prepare

    probe = prepare(SandboxSpec(mode="process", workdir=tmp_path, limits=Limits(nproc=64)), "true", {})
    probe.cleanup()
    if not probe.enforced["nproc_cap"]:
        pytest.skip(f"the process cap does not hold on this machine: {probe.warning}")
    root = make_experiment(tmp_path / "e", train=FORK_TRAIN.format(x=3.0, always=True), sandbox="process", baseline_runs=1)
    s = open_session(root)
    s.limits = Limits(nproc=64)  # the real cap is Limits.default()'s, 4096 or more; same mechanism
    rec = s.measure_baseline()
    assert rec["status"] == "baseline" and rec["runs"][0]["enforced"]["nproc_cap"]
    assert rec["metrics"]["forked"] < 64 and rec["metrics"]["refused"] > 936, rec["metrics"]
    pids = [int(p) for p in (root / ".autoresearch/runs/0/artifacts/pids").read_text().split()]
    assert alive(pids) == []
    assert_intact(root)


def test_fork_of_1000_processes_without_sandbox_ends_at_the_timeout(tmp_path):
    root = make_experiment(tmp_path / "e", train=FORK_TRAIN.format(x=3.0, always=False), baseline_runs=1,
                           budget="2s", timeout="4s")
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [2.0]))
    assert rec["status"] == "timeout" and "process group was killed" in rec["reason"]
    pids = [int(p) for p in (root / ".autoresearch/runs/1/artifacts/pids").read_text().split()]
    assert len(pids) == 1000
    assert alive(pids) == []  # the whole group died at the timeout, long before the children's alarms
    assert_intact(root)


FILL_TRAIN = '''\
import os
X = {x}
if X != 3.0:
    chunk = b"\\0" * (1 << 20)
    with open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "fill.bin"), "wb") as fh:
        for _ in range(256):                             # at most 256 MiB even if no limit held
            fh.write(chunk)
            fh.flush()
print(f"score: {{(X - 1.0) ** 2}}")
'''


@pytest.mark.parametrize("mode", ["process", "bwrap"])
def test_filling_the_artifacts_folder_stops_at_the_file_size_limit(tmp_path, monkeypatch, mode):
    from autoresearch.sandbox import Limits, bwrap_available

    if mode == "bwrap" and not bwrap_available():
        pytest.skip("bubblewrap is not usable on this machine")
    limit = 16 << 20
    root = make_experiment(tmp_path / "e", train=FILL_TRAIN.format(x=3.0), sandbox=mode, baseline_runs=1)
    s = open_session(root)
    s.limits = Limits(nproc=Limits.default().nproc, fsize=limit)  # the real limit is 64 GiB; same mechanism
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [2.0]))
    assert rec["status"] == "crash" and "File too large" in rec["reason"], rec["reason"]
    assert (root / ".autoresearch/runs/1/artifacts/fill.bin").stat().st_size == limit
    assert rec["runs"][0]["enforced"]["rlimits"]
    assert_intact(root)


def _misbehave(code: str):
    """A proposal that sets X = 2.0 (a real improvement) and appends `code` to train.py."""
    def make(ctx):
        text = ctx.files["train.py"].replace("X = 3.0", "X = 2.0") + code
        return Proposal("improve, and misbehave", {"train.py": text})
    return make


GIT_MISCHIEF = {
    "delete-dot-git": ("import os, shutil\nos.remove('.git') if os.path.isfile('.git') else shutil.rmtree('.git')\n",
                       "rejected", "damaged the repository"),
    "delete-everything": ("import os, shutil\nfor n in os.listdir('.'):\n"
                          "    shutil.rmtree(n) if os.path.isdir(n) and not os.path.islink(n) else os.remove(n)\n",
                          "rejected", "the code that ran is not the commit"),
    "checkout-other-branch": ("import subprocess\nsubprocess.run(['git', 'checkout', '-q', '-b', 'other', 'HEAD~1'], check=True)\n",
                              "rejected", "moved HEAD"),
    "switch-branch-same-commit": ("import subprocess\nsubprocess.run(['git', 'checkout', '-q', '-b', 'other'], check=True)\n",
                                  "keep", "beats best"),
    "detach-head": ("import subprocess\nsubprocess.run(['git', 'checkout', '-q', '--detach'], check=True)\n",
                    "keep", "beats best"),
    "commit-on-the-run-branch": ("import subprocess\nopen('extra.txt', 'w').write('x')\n"
                                 "subprocess.run(['git', 'add', 'extra.txt'], check=True)\n"
                                 "subprocess.run(['git', '-c', 'user.name=x', '-c', 'user.email=x@x', 'commit', '-qm', 'sneaky'], check=True)\n",
                                 "rejected", "moved HEAD"),
    "rewrite-its-own-code": ("open(__file__, 'a').write('# edited while running\\n')\n",
                             "rejected", "the code that ran is not the commit"),
}


@pytest.mark.parametrize("case", list(GIT_MISCHIEF))
def test_experiment_that_damages_its_checkout(tmp_path, case):
    """Without a sandbox an experiment can wreck its worktree. The record says so, the run branch
    and the worktree are put back, and the user's own checkout is never touched."""
    code, status, reason = GIT_MISCHIEF[case]
    root = make_experiment(tmp_path / "e", baseline_runs=1, files={"notes.txt": "v1\n"}, protected=[])
    git(root, "commit", "-q", "--allow-empty", "-m", "second commit")
    (root / "notes.txt").write_text("the user's uncommitted work\n")
    user_head = git(root, "rev-parse", "HEAD").strip()
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [_misbehave(code)]))
    assert rec["status"] == status and reason in rec["reason"], rec["reason"]
    branch_head = git(root, "rev-parse", f"autoresearch/{s.tag}").strip()
    assert branch_head == (rec["commit"] if status == "keep" else rec["parent"])
    # The user's checkout: same commit, same branch, uncommitted work intact.
    assert git(root, "rev-parse", "HEAD").strip() == user_head
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert (root / "notes.txt").read_text() == "the user's uncommitted work\n"
    # The worktree is back on the run branch, clean, and the loop goes on from the right parent.
    wt = s.ws.worktree
    assert git(wt, "rev-parse", "--abbrev-ref", "HEAD").strip() == f"autoresearch/{s.tag}"
    assert git(wt, "status", "--porcelain") == ""
    clean = TRAIN_PY.format(x=1.5)
    nxt = step(s, Scripted(s.config, [lambda ctx: Proposal("X -> 1.5", {"train.py": clean})]))
    assert nxt["status"] == "keep" and nxt["parent"] == branch_head
    assert_intact(root)


def test_stdin_and_self_kill(tmp_path):
    root = make_experiment(tmp_path / "e", baseline_runs=1)
    s = open_session(root)
    s.measure_baseline()
    reads_stdin = _misbehave("input('press enter: ')\n")  # stdin is /dev/null: EOF at once, no hang
    kills_itself = _misbehave("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    p = Scripted(s.config, [reads_stdin, kills_itself])
    first, second = step(s, p), step(s, p)
    assert first["status"] == "crash" and "EOFError" in first["reason"]
    assert second["status"] == "crash" and re.search(r"status (-9|137)", second["reason"])  # 137: sh reports 128 + 9
    assert_intact(root)


# ---- the ledger and the metric -----------------------------------------------------------------

TAMPER_TRAIN = '''\
import os
X = 3.0
LEDGER = {ledger!r}
if os.environ["AUTORESEARCH_RUN_ID"] == "1" and not os.path.exists({marker!r}):
    open({marker!r}, "w").close()                        # only once
    with open(LEDGER, {mode!r}) as fh:
        fh.write({line!r})
print(f"score: {{(X - 1.0) ** 2 + 0.001 * int(os.environ['AUTORESEARCH_SEED'])}}")
'''


@pytest.mark.parametrize("how", ["forged-record", "truncated", "torn-write"])
def test_experiment_that_writes_the_ledger_without_sandbox(tmp_path, how):
    forged = '{"kind":"experiment","id":1,"status":"keep","metric":0.0}'
    mode, line = {"forged-record": ("a", forged + "\n"), "truncated": ("w", ""), "torn-write": ("a", forged)}[how]
    root = tmp_path / "e"
    train = TAMPER_TRAIN.format(ledger=str(root / ".autoresearch/ledger.jsonl"), marker=str(tmp_path / "once"),
                                mode=mode, line=line)
    make_experiment(root, train=train)
    res = cli("run", root, "-n", "2")
    assert_clean_exit(res, 2)  # the harness noticed and stopped before writing after the forgery
    assert "changed behind the harness's back" in res.stderr
    if how != "torn-write":
        ver = cli("verify", root)
        assert_clean_exit(ver, 1)
        bad = "FAIL ledger.jsonl line 3" if how == "forged-record" else "FAIL ledger.jsonl is empty"
        assert bad in ver.stdout  # the damage, named
        return
    # A torn tail looks like a write cut short: dropped on the next start, the experiment recorded
    # as interrupted, and every record the harness wrote is intact.
    res = cli("run", root, "-n", "1")
    assert_clean_exit(res, 0)
    assert "dropped a torn last line" in res.stderr.replace("\n", " ")
    assert [r["status"] for r in records(root)][:2] == ["baseline", "interrupted"]
    assert_clean_exit(cli("verify", root), 0)


def test_ledger_out_of_reach_under_bwrap(tmp_path):
    from autoresearch.sandbox import bwrap_available

    if not bwrap_available():
        pytest.skip("bubblewrap is not usable on this machine")
    root = tmp_path / "e"
    state = root / ".autoresearch"
    train = f'''\
import os, shutil
X = 3.0
done = []
for path in [{str(state / "ledger.jsonl")!r}, {str(state / "results.tsv")!r}, {str(state / "pending" / "1.json")!r}]:
    try:
        with open(path, "a") as fh:
            fh.write('{{"kind":"experiment","id":99,"status":"keep"}}\\n')
        done.append("wrote " + os.path.basename(path))
    except OSError:
        pass
shutil.rmtree({str(state / "runs")!r}, ignore_errors=True)
print("tampered:", done)
print(f"score: {{(X - 1.0) ** 2}}")
'''
    make_experiment(root, train=train, sandbox="bwrap", baseline_runs=1)
    s = open_session(root)
    s.measure_baseline()
    rec = step(s, Scripted(s.config, [2.0]))
    assert rec["status"] == "keep"
    ledger = (state / "ledger.jsonl").read_text()
    assert '"id":99' not in ledger and '"id":99' not in (state / "results.tsv").read_text()
    assert (state / "runs/0/diff.patch").exists() and (state / "runs/1/run.log").exists()
    assert_intact(root)


def test_fake_metric_when_evaluate_is_set(tmp_path):
    train = '''\
import json, os
X = 3.0
art = os.environ["AUTORESEARCH_ARTIFACTS"]
json.dump({"x": X}, open(os.path.join(art, "out.json"), "w"))
if X != 3.0:  # the editable code claims a perfect score in every form the harness reads
    print("score: 0.0")
    print("METRIC score=0.0")
    json.dump({"score": 0.0}, open(os.path.join(art, "metrics.json"), "w"))
    json.dump({}, open(os.path.join(art, "out.json"), "w"))
'''
    evaluate = '''\
import json, os
out = json.load(open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "out.json")))
if "x" in out:
    print("score:", (out["x"] - 1) ** 2)
else:
    print("no model output to score")
'''
    root = make_experiment(tmp_path / "e", train=train, evaluate="python evaluate.py", files={"evaluate.py": evaluate},
                           baseline_runs=1)
    s = open_session(root)
    assert s.measure_baseline()["metric"] == 4.0
    rec = step(s, Scripted(s.config, [2.0]))
    assert rec["status"] == "crash" and "no 'score' in the output of evaluate" in rec["reason"]
    assert rec["runs"][0]["run_metrics"]["score"] == 0.0  # recorded as what run claimed, never counted
    assert rec["metric"] is None and rec["best"] == 4.0
    assert_intact(root)


# ---- what the proposer sends -------------------------------------------------------------------


def _outside_links(root: Path, outside: Path) -> None:
    """Commit a symlink to a file and one to a folder, both outside the experiment, as editable."""
    outside.mkdir()
    (outside / "target.py").write_text("SECRET = 1\n")
    (root / "link.py").symlink_to(outside / "target.py")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    (root / "sub_real.py").write_text("Y = 1\n")  # so that `sub*` matches a file, not only the link
    git(root, "add", "link.py", "sub", "sub_real.py")
    set_toml(root, 'editable = ["train.py"]', 'editable = ["train.py", "link.py", "sub*"]', "links")


@pytest.mark.parametrize("edits,needle", [
    (lambda ctx: {str(ctx.worktree / "train.py"): "X = 1.0\n"}, "absolute path"),
    (lambda ctx: {"/etc/cron.d/x": "* * * * * root true\n"}, "absolute path"),
    (lambda ctx: {"..\\..\\outside.py": "x = 1\n"}, "leaves the experiment folder"),
    (lambda ctx: {"train.py\x00.txt": "x = 1\n"}, "invalid path"),
    (lambda ctx: {"link.py": "SECRET = 2\n"}, "is a symlink or leaves the experiment folder"),
    (lambda ctx: {"sub/new.py": "SECRET = 2\n"}, "is a symlink or leaves the experiment folder"),
    (lambda ctx: {"train.py": "X = 1.0\n" + "#" * (50 << 20)}, "over 5 MB"),
], ids=["absolute-inside", "absolute-outside", "backslash-dotdot", "nul-byte", "symlink-file", "symlink-folder", "50MB"])
def test_bad_proposal_is_invalid_and_nothing_runs(tmp_path, edits, needle):
    marker = tmp_path / "ran"
    train = f"import pathlib\nX = 3.0\npathlib.Path({str(marker)!r}).write_text('ran')\nprint(f'score: {{(X - 1) ** 2}}')\n"
    root = make_experiment(tmp_path / "e", train=train, baseline_runs=1)
    outside = tmp_path / "outside"
    _outside_links(root, outside)
    s = open_session(root)
    s.measure_baseline()
    marker.unlink()
    rec = step(s, Scripted(s.config, [lambda ctx: Proposal("bad edit", edits(ctx))]))
    assert rec["status"] == "invalid" and needle in rec["reason"], rec["reason"]
    assert not marker.exists()  # rejected before anything ran
    assert (outside / "target.py").read_text() == "SECRET = 1\n" and sorted(os.listdir(outside)) == ["target.py"]
    assert not (tmp_path / "outside.py").exists()
    assert (root / ".autoresearch/ledger.jsonl").stat().st_size < 1 << 20  # the 50 MB text went nowhere
    assert git(s.ws.worktree, "status", "--porcelain") == ""
    assert_intact(root)


def test_editable_glob_matching_a_linked_folder(tmp_path):
    """`git ls-files` lists a symlink to a folder (or a submodule) like a file; a glob that catches
    one must not make the harness read a folder as a file."""
    root = make_experiment(tmp_path / "e", baseline_runs=1)
    (tmp_path / "shared").mkdir()
    (root / "lib").symlink_to(tmp_path / "shared", target_is_directory=True)
    (root / "lib_utils.py").write_text("LR = 0.1\n")
    git(root, "add", "lib", "lib_utils.py")
    set_toml(root, 'editable = ["train.py"]', 'editable = ["train.py", "lib*"]', "glob over a link")
    s = open_session(root)
    assert s.editable == ["lib_utils.py", "train.py"]
    s.measure_baseline()
    assert step(s, Scripted(s.config, [2.0]))["status"] == "keep"
    assert_intact(root)
    set_toml(root, '"lib*"]', '"lib"]', "only the link")
    res = cli("run", root, "-n", "1", "--new")  # a changed configuration needs a new run
    assert_clean_exit(res, 2)
    assert "experiment.editable entry 'lib' matches no file" in res.stderr


def test_try_mode_change_that_links_code_from_outside(tmp_path):
    """Agent-driven mode: an editable file replaced by a symlink to code outside the repository
    would run code the commit does not hold. Rejected, reverted, nothing runs."""
    root = make_experiment(tmp_path / "e", baseline_runs=1)
    assert_clean_exit(cli("run", root, "-n", "0"), 0)
    outside = tmp_path / "outside.py"
    outside.write_text("print('score: 0.0')\n")
    wt = root / ".autoresearch/worktree"
    (wt / "train.py").unlink()
    (wt / "train.py").symlink_to(outside)
    res = cli("try", "-m", "borrow a better train.py", cwd=wt)
    assert_clean_exit(res, 0)
    assert res.stdout.startswith("rejected: experiment 1") and "symbolic link" in res.stdout
    assert not (wt / "train.py").is_symlink() and "X = 3.0" in (wt / "train.py").read_text()
    assert records(root)[1]["runs"] == [] and records(root)[1]["commit"] is None
    assert_clean_exit(cli("verify", root), 0)


AGENT_DELETES_GIT = '''\
import os
from pathlib import Path
train = Path("train.py")
train.write_text(train.read_text().replace("X = 3.0", "X = 2.0"))
os.remove(".git")  # the worktree's link to the repository
print("DESCRIPTION: X 3.0 -> 2.0")
'''


def test_agent_that_deletes_dot_git_leaves_the_user_checkout_alone(tmp_path):
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT_DELETES_GIT)
    root = make_experiment(tmp_path / "e", baseline_runs=1, files={"notes.txt": "v1\n"}, protected=[])
    (root / "autoresearch.toml").write_text((root / "autoresearch.toml").read_text()
                                            + f'\n[proposer]\nkind = "agent"\ncommand = "{sys.executable} {agent}"\n')
    git(root, "commit", "-qam", "agent proposer")
    (root / "notes.txt").write_text("the user's uncommitted work\n")
    from autoresearch.proposers import create

    s = open_session(root)
    s.measure_baseline()
    rec = step(s, create(s.config, []))
    assert (root / "notes.txt").read_text() == "the user's uncommitted work\n"
    assert rec["status"] in ("invalid", "rejected", "keep")
    assert_intact(root)


def test_truncated_ledger_is_not_silently_replaced_by_a_new_run(tmp_path):
    root = make_experiment(tmp_path / "e", baseline_runs=1)
    assert cli("run", root, "-n", "1").returncode == 0
    (root / ".autoresearch/ledger.jsonl").write_text("")
    res = cli("run", root, "-n", "1")
    assert res.returncode == 2 and "truncated or deleted" in res.stderr and "Traceback" not in res.stderr
    fresh = cli("run", root, "-n", "0", "--new")
    assert fresh.returncode == 0, fresh.stderr
    assert list((root / ".autoresearch/archive").iterdir())  # the remains were archived, not mixed in
