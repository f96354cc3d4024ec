"""The `agent` proposer with small scripts standing in for coding-agent CLIs, in real git repos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.config import parse_config
from autoresearch.errors import ProposalInvalid, UserError
from autoresearch.proposers import Context
from autoresearch.proposers.agent import AgentProposer

TRAIN = "LR = 0.04\nEPOCHS = 3\n"
PREPARE = "DATA = 'val'\n"

# One script, several behaviours; it edits files in its working directory like an agent would.
AGENT = r'''
import json, os, subprocess, sys, time
from pathlib import Path
prompt = Path(sys.argv[1]).read_text() if len(sys.argv) > 1 and sys.argv[1] != "-" else sys.stdin.read()
mode = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("AGENT_MODE", "edit")
Path(os.environ["AGENT_SEEN"]).write_text(prompt)
train = Path("train.py")
if mode == "edit":
    train.write_text(train.read_text().replace("LR = 0.04", "LR = 0.02"))
    print("Thinking...\nDESCRIPTION: halve LR 0.04 -> 0.02")
elif mode == "protected":
    train.write_text(train.read_text().replace("EPOCHS = 3", "EPOCHS = 4"))
    Path("prepare.py").write_text("DATA = 'test'  # peek at the test split\n")
    Path("notes.txt").write_text("scratch\n")
    Path("sub").mkdir()
    Path("sub/cache.bin").write_bytes(b"\0\1")
    Path(".aider.chat.history.md").write_text("chat\n")
    print("DESCRIPTION: more epochs")
elif mode == "only_protected":
    Path("prepare.py").unlink()
elif mode == "commit":
    train.write_text("LR = 0.01\nEPOCHS = 3\n")
    subprocess.run(["git", "commit", "-qam", "agent commit"], check=True)
elif mode == "nothing":
    print("I could not think of anything.")
elif mode == "fail":
    print("fatal: no credentials", file=sys.stderr)
    sys.exit(3)
elif mode == "sleep":
    train.write_text("LR = 0.5\n")
    time.sleep(60)
elif mode == "syntax":
    train.write_text("LR = (0.04\n")
elif mode == "env":  # what of the environment and the home folder the agent sees
    home = Path.home()
    def read(p):
        try:
            return Path(p).read_text()
        except OSError as e:
            return f"{type(e).__name__}"
    (home / ".agentconf" / "written-by-agent").write_text("kept\n")
    train.write_text(train.read_text().replace("LR = 0.04", "LR = 0.03"))
    print("SEEN " + json.dumps({"env": sorted(os.environ), "npmrc": read(home / ".npmrc"), "conf": read(home / ".agentconf/settings"),
                                "ssh": read(home / ".ssh/id_ed25519")}))
elif mode == "symlink":  # make the harness read a file the agent itself cannot
    train.unlink()
    train.symlink_to(os.environ["AGENT_LINK_TARGET"])
elif mode == "claude_json":
    train.write_text(train.read_text().replace("EPOCHS = 3", "EPOCHS = 5"))
    print(json.dumps({"type": "result", "result": "Done.\nDESCRIPTION: EPOCHS 3 -> 5", "total_cost_usd": 0.0123,
                      "usage": {"input_tokens": 100, "cache_read_input_tokens": 900, "output_tokens": 40}}))
'''


# The harness's own checks (revert, violations, undoing a commit) matter most where the agent is not
# confined (sandbox = "none", or "process" without bubblewrap), so they are tested unconfined.
UNCONFINED = "none"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make_repo(tmp_path: Path, sub: str = "") -> Path:
    repo = tmp_path / "repo"
    exp = repo / sub if sub else repo
    exp.mkdir(parents=True)
    (exp / "train.py").write_text(TRAIN)
    (exp / "prepare.py").write_text(PREPARE)
    (exp / "program.md").write_text("Make val_loss small. AGENT-PROGRAM\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    git(repo, "config", "user.name", "t")
    git(repo, "config", "user.email", "t@t")
    return exp


def make_config(**proposer):
    data = {
        "experiment": {"run": "python train.py", "editable": ["train.py"], "protected": ["prepare.py"]},
        "metric": {"name": "val_loss"},
        "proposer": {"kind": "agent", **proposer},
    }
    return parse_config(data, Path("autoresearch.toml"))


@pytest.fixture
def agent_script(tmp_path, monkeypatch):
    # The fake agent's own folder: listed in agent_paths, so it is in sight of the confined agent.
    (tmp_path / "agentbin").mkdir()
    script = tmp_path / "agentbin" / "fake_agent.py"
    script.write_text(AGENT)
    monkeypatch.setenv("AGENT_SEEN", str(tmp_path / "agentbin" / "seen-prompt.md"))
    return script


def ctx_for(exp: Path, config, run_dir: Path, feedback: str = "") -> Context:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Context(config=config, root=exp, worktree=exp, files={"train.py": (exp / "train.py").read_text()},
                   history=[{"id": 0, "status": "baseline", "metric": 1.0, "description": "baseline"}],
                   best={"id": 0, "metric": 1.0}, noise=None, run_dir=run_dir, experiment_id=1, feedback=feedback)


def propose(tmp_path, exp, mode, agent_script, **proposer):
    proposer.setdefault("agent_paths", [str(agent_script.parent)])
    cfg = make_config(command=f"{sys.executable} {agent_script} {{prompt_file}} {mode}", **proposer)
    return AgentProposer(cfg, []).propose(ctx_for(exp, cfg, tmp_path / "runs" / mode))


def assert_pristine(exp: Path, head: str):
    assert git(exp, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(exp, "rev-parse", "HEAD").strip() == head
    assert (exp / "train.py").read_text() == TRAIN


def test_edit_becomes_the_proposal_and_worktree_is_restored(tmp_path, agent_script):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    prop = propose(tmp_path, exp, "edit", agent_script)
    assert prop.edits == {"train.py": "LR = 0.02\nEPOCHS = 3\n"}
    assert prop.description == "halve LR 0.04 -> 0.02"
    assert prop.meta["exit_code"] == 0 and prop.meta["agent"] == "custom" and "violations" not in prop.meta
    assert_pristine(exp, head)
    seen = (tmp_path / "agentbin" / "seen-prompt.md").read_text()
    assert "AGENT-PROGRAM" in seen and "train.py" in seen and "DESCRIPTION:" in seen
    run_dir = tmp_path / "runs" / "edit"
    assert "DESCRIPTION: halve" in (run_dir / "agent.stdout").read_text()
    assert (run_dir / "agent-prompt-1.md").read_text() == seen


def test_changes_outside_editable_are_reverted_and_recorded(tmp_path, agent_script):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    prop = propose(tmp_path, exp, "protected", agent_script, sandbox=UNCONFINED)
    assert prop.edits == {"train.py": "LR = 0.04\nEPOCHS = 4\n"}
    violations = {v["path"]: v["change"] for v in prop.meta["violations"]}
    assert violations == {"prepare.py": "modified", "notes.txt": "created", "sub/cache.bin": "created"}
    assert (exp / "prepare.py").read_text() == PREPARE
    assert not (exp / "notes.txt").exists() and not (exp / ".aider.chat.history.md").exists()
    assert_pristine(exp, head)


def test_only_outside_changes_is_invalid(tmp_path, agent_script):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    with pytest.raises(ProposalInvalid, match="changed no editable file.*prepare.py") as info:
        propose(tmp_path, exp, "only_protected", agent_script, sandbox=UNCONFINED)
    assert info.value.meta["violations"] == [{"path": "prepare.py", "change": "deleted"}]
    assert_pristine(exp, head)


def test_agent_commit_is_undone_but_kept_as_proposal(tmp_path, agent_script):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    prop = propose(tmp_path, exp, "commit", agent_script, sandbox=UNCONFINED)
    assert prop.edits == {"train.py": "LR = 0.01\nEPOCHS = 3\n"}
    assert prop.description == "agent edit of train.py"
    assert_pristine(exp, head)


@pytest.mark.parametrize("mode,match", [("nothing", "changed no editable file"), ("fail", "exited with code 3: fatal: no credentials"),
                                        ("syntax", "does not compile")])
def test_failures_are_invalid(tmp_path, agent_script, mode, match):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    with pytest.raises(ProposalInvalid, match=match):
        propose(tmp_path, exp, mode, agent_script)
    assert_pristine(exp, head)


def test_timeout_kills_agent_and_reverts(tmp_path, agent_script):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    with pytest.raises(ProposalInvalid, match="did not finish within agent_timeout = 1 s") as info:
        propose(tmp_path, exp, "sleep", agent_script, agent_timeout=1)
    assert info.value.meta["exit_code"] is None
    assert_pristine(exp, head)


def test_experiment_in_a_subfolder(tmp_path, agent_script):
    exp = make_repo(tmp_path, sub="exp")
    head = git(exp, "rev-parse", "HEAD").strip()
    (tmp_path / "repo" / "README").write_text("outside\n")  # an untracked file the agent did not make
    prop = propose(tmp_path, exp, "protected", agent_script, sandbox=UNCONFINED)
    assert prop.edits == {"train.py": "LR = 0.04\nEPOCHS = 4\n"}
    assert {v["path"] for v in prop.meta["violations"]} == {"prepare.py", "notes.txt", "sub/cache.bin"}
    assert (tmp_path / "repo" / "README").exists()  # pre-existing changes are left alone
    assert git(exp, "status", "--porcelain", "--untracked-files=all").strip() == "?? README"
    assert git(exp, "rev-parse", "HEAD").strip() == head


def test_claude_template_with_stand_in_cli(tmp_path, agent_script, monkeypatch):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    # Record the arguments, then behave like `claude -p --output-format json` reading the prompt on stdin.
    claude.write_text(f"#!/bin/sh\necho \"$@\" > {agent_script.parent}/claude-args\nexec {sys.executable} {agent_script} - claude_json\n")
    claude.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = make_config(agent="claude", model="claude-sonnet-4-5", agent_paths=[str(agent_script.parent)])
    prop = AgentProposer(cfg, []).propose(ctx_for(exp, cfg, tmp_path / "runs" / "claude"))
    assert prop.edits == {"train.py": "LR = 0.04\nEPOCHS = 5\n"}
    assert prop.description == "EPOCHS 3 -> 5"
    assert prop.meta["cost_usd"] == pytest.approx(0.0123)
    assert prop.meta["usage"] == {"input_tokens": 1000, "output_tokens": 40}
    args = (agent_script.parent / "claude-args").read_text()
    assert "-p" in args and "--model claude-sonnet-4-5" in args and "acceptEdits" in args
    assert "AGENT-PROGRAM" in (tmp_path / "agentbin" / "seen-prompt.md").read_text()  # the prompt came on stdin
    assert_pristine(exp, head)


def test_config_errors_are_one_sentence(monkeypatch):
    with pytest.raises(UserError, match="needs agent"):
        AgentProposer(make_config(), [])
    with pytest.raises(UserError, match="not a known agent"):
        AgentProposer(make_config(agent="cursor"), [])
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="`codex` command, which is not on PATH"):
        AgentProposer(make_config(agent="codex"), [])


QUICKSTART_AGENT = r'''
import re, sys
from pathlib import Path
prompt = Path(sys.argv[1]).read_text()
n = int(re.search(r"Make experiment #(\d+)", prompt).group(1))
train = Path("train.py")
text = train.read_text()
line = next(ln for ln in text.splitlines() if ln.startswith("LEARNING_RATE"))
value = float(line.split("=")[1].split("#")[0])
new = value * [1, 3.0, 1.5, 0.5, 1.2, 0.8][n]
train.write_text(text.replace(line, f"LEARNING_RATE = {new:.6g}  # Adam step size"))
if n == 2:  # an over-eager agent also "fixes" the protected data preparation
    try:
        Path("prepare.py").write_text(Path("prepare.py").read_text() + "\n# tweaked by the agent\n")
    except OSError:  # confined: the file is read-only
        pass
    Path("scratch.txt").write_text("notes\n")
print(f"DESCRIPTION: LEARNING_RATE {value:g} -> {new:.6g}")
'''


@pytest.mark.slow  # 11 s: a real agent process per experiment; the default suite keeps try with an agent (test_cli)
def test_loop_on_quickstart_with_agent(tmp_path):
    from autoresearch.ledger import Ledger
    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress
    from fake_llm_server import quickstart_copy

    (tmp_path / "agentbin").mkdir()
    script = tmp_path / "agentbin" / "agent.py"
    script.write_text(QUICKSTART_AGENT)
    root = quickstart_copy(tmp_path / "qs", f'''
kind = "agent"
command = "{sys.executable} {script} {{prompt_file}}"
agent_timeout = "60s"
agent_paths = ["{script.parent}"]
''')
    prepare = (root / "prepare.py").read_text()
    summary = run_loop(root, max_experiments=5, progress=Progress(quiet=True))
    assert summary.experiments == 5
    recs = Ledger(root / ".autoresearch").experiments()
    assert [r["status"] != "invalid" for r in recs[1:]] == [True] * 5
    assert recs[1]["description"] == "LEARNING_RATE 0.001 -> 0.003" and recs[1]["proposer"] == "agent"
    # the protected edit was reverted before the harness saw it, so the experiment itself ran normally
    assert recs[2]["description"].startswith("LEARNING_RATE") and recs[2]["status"] in ("keep", "discard")
    confined = recs[2]["proposal"]["confined"]
    assert all(r["proposal"]["confined"] == confined for r in recs[1:])
    expected = {"scratch.txt"} if confined else {"prepare.py", "scratch.txt"}  # confined: the write failed
    assert {v["path"] for v in recs[2]["proposal"]["violations"]} == expected
    assert all("violations" not in r["proposal"] for r in recs[3:])
    assert (root / "prepare.py").read_text() == prepare
    worktree = root / ".autoresearch" / "worktree"
    assert (worktree / "prepare.py").read_text() == prepare and not (worktree / "scratch.txt").exists()


from autoresearch import sandbox as _sandbox

needs_bwrap = pytest.mark.skipif(not _sandbox.bwrap_available(),
                                 reason="bubblewrap does not work here; install it: apt-get install -y bubblewrap")


@needs_bwrap
def test_a_confined_agent_cannot_touch_protected_files_and_the_record_says_it_was_confined(tmp_path, agent_script):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    with pytest.raises(ProposalInvalid, match="Read-only file system") as info:
        propose(tmp_path, exp, "protected", agent_script)  # its first write outside editable fails
    assert info.value.meta["confined"] is True and info.value.meta["sandbox"] == "bwrap"
    assert "not_enforced" not in info.value.meta
    assert (exp / "prepare.py").read_text() == PREPARE
    assert_pristine(exp, head)


@needs_bwrap
def test_a_confined_agent_cannot_commit(tmp_path, agent_script):
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    with pytest.raises(ProposalInvalid, match="exited with code 1"):
        propose(tmp_path, exp, "commit", agent_script)
    assert_pristine(exp, head)


def test_the_process_fallback_says_what_is_not_enforced(tmp_path, agent_script, capsys):
    exp = make_repo(tmp_path)
    prop = propose(tmp_path, exp, "edit", agent_script, sandbox="process")
    assert prop.meta["confined"] is False and prop.meta["sandbox"] == "process"
    assert "signing key" in prop.meta["not_enforced"] and "leave processes behind" in prop.meta["not_enforced"]
    assert 'warning: [proposer] sandbox = "process", so the agent runs under process limits only' in capsys.readouterr().err


@needs_bwrap
def test_the_agent_sees_its_own_key_and_config_but_no_other_secret_or_home_file(tmp_path, agent_script, monkeypatch):
    home = tmp_path / "home"
    (home / ".agentconf").mkdir(parents=True)
    (home / ".agentconf/settings").write_text("model = x\n")
    (home / ".npmrc").write_text("//registry.npmjs.org/:_authToken=npm_SECRET\n")
    (home / ".ssh").mkdir()
    (home / ".ssh/id_ed25519").write_text("PRIVATE KEY\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MY_AGENT_KEY", "sk-agent")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_other")
    exp = make_repo(tmp_path)
    prop = propose(tmp_path, exp, "env", agent_script, agent_env=["MY_AGENT_KEY"],
                   agent_paths=[str(agent_script.parent), "~/.agentconf"])
    out = (tmp_path / "runs" / "env" / "agent.stdout").read_text()
    seen = json.loads(next(ln for ln in out.splitlines() if ln.startswith("SEEN "))[5:])
    assert "MY_AGENT_KEY" in seen["env"] and "GITHUB_TOKEN" not in seen["env"]
    assert seen["conf"] == "model = x\n" and "npm_SECRET" not in seen["npmrc"] and "PRIVATE" not in seen["ssh"]
    assert (home / ".agentconf/written-by-agent").read_text() == "kept\n"  # its own config is read-write
    assert prop.meta["confined"] is True


def test_an_editable_file_replaced_by_a_symlink_is_refused_and_never_read(tmp_path, agent_script, monkeypatch):
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("SECRET-OUTSIDE\n")
    monkeypatch.setenv("AGENT_LINK_TARGET", str(secret))
    exp = make_repo(tmp_path)
    head = git(exp, "rev-parse", "HEAD").strip()
    with pytest.raises(ProposalInvalid, match="changed no editable file") as info:
        propose(tmp_path, exp, "symlink", agent_script)
    assert info.value.meta["violations"] == [{"path": "train.py", "change": "replaced an editable file with a symlink"}]
    assert "SECRET-OUTSIDE" not in json.dumps(info.value.meta)
    assert_pristine(exp, head)
