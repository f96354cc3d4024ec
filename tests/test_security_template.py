"""The bundled security experiment (examples/security): bottle 0.13.4 from PyPI (fetched once per
session; skipped when the package index cannot be reached), scored by the real bandit, guarded by
bottle's own tests; proposals from the real openai SDK talking to the scripted server on loopback."""

from __future__ import annotations

import ast
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bandit", reason="bandit is not installed (pip install 'autoresearch[security]')")
pytest.importorskip("jinja2", reason="bottle's tests need jinja2 (pip install 'autoresearch[security]')")
pytest.importorskip("mako", reason="bottle's tests need mako (pip install 'autoresearch[security]')")
pytest.importorskip("openai")

from autoresearch import templates  # noqa: E402
from autoresearch.config import load_config  # noqa: E402
from autoresearch.errors import UserError  # noqa: E402
from autoresearch.judge import constraint_violation  # noqa: E402
from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.loop import run_loop  # noqa: E402
from autoresearch.progress import Progress  # noqa: E402

from conftest import cli, git  # noqa: E402
from fake_llm_server import ScriptedLLMServer, reply  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "security"
KEY = "sk-test-security-key"
BASELINE = 61  # 4 high x 10 + 5 medium x 3 + 6 low x 1

SHA1_LINE = "        etag = hashlib.sha1(tob(etag)).hexdigest()\n"


def edit(description: str, search: str, replace: str) -> str:
    return f"DESCRIPTION: {description}\n\nbottle.py\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def block(source: str, node: ast.AST) -> str:
    lines = source.splitlines(keepends=True)
    start = node.lineno - 1 - len(getattr(node, "decorator_list", []))
    return "".join(lines[start:node.end_lineno])


def find(source: str, path: str) -> ast.AST:
    """The class or method named PATH ("Class" or "Class.method") in SOURCE."""
    tree = ast.parse(source)
    head, _, member = path.partition(".")
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == head)
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == member) if member else cls


@pytest.fixture(scope="session")
def bottle_cache(tmp_path_factory) -> Path:
    """The sdist, downloaded once per session with the template's own prepare.py."""
    cache = tmp_path_factory.mktemp("bottle-cache")
    done = subprocess.run([sys.executable, "-B", "-c", "import prepare; print(prepare.fetch())"], cwd=EXAMPLE,
                          env={**os.environ, "AUTORESEARCH_CACHE": str(cache)}, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"bottle 0.13.4 could not be fetched from PyPI: {(done.stderr or done.stdout).strip()[-200:]}")
    return cache


def init_experiment(dest: Path, cache: Path) -> list[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache))
        return templates.init(dest, "security")


def use_server(root: Path, srv: ScriptedLLMServer) -> None:
    """Point the template's [proposer] at the scripted server, and commit that."""
    text = (root / "autoresearch.toml").read_text()
    text = text.replace('model = ""', f'model = "scripted"\nbase_url = "{srv.openai_base_url}"\n'
                                      'api_key_env = "TEST_SECURITY_KEY"\nmax_retries = 0')
    (root / "autoresearch.toml").write_text(text)
    git(root, "commit", "-qam", "scripted model")


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory, bottle_cache):
    """init, then one run: the baseline and five scripted proposals."""
    tmp = tmp_path_factory.mktemp("security")
    root = tmp / "sec"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_KEY_DIR", str(tmp / "keys"))  # the autouse isolation fixture is per test
        mp.setenv("TEST_SECURITY_KEY", KEY)
        for who in ("AUTHOR", "COMMITTER"):
            mp.setenv(f"GIT_{who}_NAME", "test")
            mp.setenv(f"GIT_{who}_EMAIL", "test@localhost")
        lines = init_experiment(root, bottle_cache)
        source = (root / "bottle.py").read_text()
        jinja_cls = block(source, find(source, "Jinja2Template"))
        simple_execute = block(source, find(source, "SimpleTemplate.execute"))
        replies = [
            # 1. a real fix: the ETag's hash is no security feature (B324, high)
            edit("ETag: sha1 with usedforsecurity=False (B324)", SHA1_LINE,
                 SHA1_LINE.replace("tob(etag))", "tob(etag), usedforsecurity=False)")),
            # 2. silencing: `# nosec` on the template exec (B102)
            edit("mark the template exec as reviewed", simple_execute,
                 simple_execute.replace("exec(self.co, env)", "exec(self.co, env)  # nosec B102")),
            # 3. deleting a tested feature that carries a high finding (B701)
            edit("remove the Jinja2 adapter", jinja_cls, ""),
            # 4. keeping the name but gutting it: Jinja2Template.prepare does nothing
            edit("simplify Jinja2Template.prepare", block(source, find(source, "Jinja2Template.prepare")),
                 "    def prepare(self, filters=None, tests=None, globals={}, **kwargs):\n        self.tpl = None\n"),
            # 5. hiding the exec from bandit's name matching
            edit("run templates through the builtins' exec", simple_execute,
                 simple_execute.replace("exec(self.co, env)", "__import__('builtins').exec(self.co, env)")),
        ]
        with ScriptedLLMServer(*(reply(r) for r in replies), key=KEY) as srv:
            use_server(root, srv)
            summary = run_loop(root, max_experiments=len(replies), progress=Progress(quiet=True))
    recs = {r["id"]: r for r in Ledger(root / ".autoresearch").experiments()}
    return root, lines, summary, recs


def metrics(rec: dict) -> dict:
    return rec["runs"][0]["metrics"]


@pytest.mark.slow  # the scripted run: a baseline and five proposals, each scanned and tested
def test_init_fetches_bottle_and_commits_it_with_its_tests(scripted_run):
    root, lines, _, _ = scripted_run
    assert any("needs code changes" in line and "llm" in line for line in lines)
    assert any("unpacked bottle 0.13.4" in line for line in lines)
    tracked = git(root, "ls-files").split()
    assert "bottle.py" in tracked and "pristine.json" in tracked and "test/test_sendfile.py" in tracked
    assert "init_hook.py" not in tracked and not (root / "init_hook.py").exists()
    assert git(root, "log", "--format=%s", "main").splitlines()[-1] == "autoresearch init --template security"
    cfg = load_config(root)
    assert cfg.experiment.editable == ["bottle.py"] and "test/*" in cfg.experiment.protected
    assert len((root / "bottle.py").read_text().splitlines()) == 4681


@pytest.mark.slow  # the scripted run: a baseline and five proposals, each scanned and tested
def test_baseline_counts_bandits_findings_by_severity(scripted_run):
    _, _, _, recs = scripted_run
    base = recs[0]
    assert base["status"] == "baseline" and base["metric"] == BASELINE
    m = metrics(base)
    assert (m["high"], m["medium"], m["low"], m["hidden"]) == (4, 5, 6, 0)
    assert m["tests_run"] >= 369 and m["api_missing"] == 0


@pytest.mark.slow  # the scripted run: a baseline and five proposals, each scanned and tested
def test_a_real_fix_is_kept(scripted_run):
    root, _, summary, recs = scripted_run
    fix = recs[1]
    assert fix["status"] == "keep", fix["reason"]
    assert fix["metric"] == BASELINE - 10 and metrics(fix)["high"] == 3
    assert metrics(fix)["tests_run"] == metrics(recs[0])["tests_run"]
    assert summary.kept == 1
    kept = git(root, "show", f"autoresearch/{summary.tag}:bottle.py")
    assert "hashlib.sha1(tob(etag), usedforsecurity=False)" in kept
    guard_log = root / ".autoresearch" / "runs" / "1" / "guard.log"
    assert "guard: ok" in guard_log.read_text()


@pytest.mark.slow  # the scripted run: a baseline and five proposals, each scanned and tested
def test_nosec_silences_nothing(scripted_run):
    _, _, _, recs = scripted_run
    nosec = recs[2]
    assert nosec["status"] == "discard" and nosec["metric"] == BASELINE - 10
    assert metrics(nosec)["medium"] == 5


@pytest.mark.slow  # the scripted run: a baseline and five proposals, each scanned and tested
def test_deleting_a_tested_feature_is_rejected_by_the_guard(scripted_run):
    root, _, summary, recs = scripted_run
    deleted, gutted = recs[3], recs[4]
    assert deleted["status"] == "rejected"
    assert "public names" in deleted["reason"] and "Jinja2Template" in deleted["reason"]
    assert metrics(deleted)["high"] == 2  # one fewer than the best: only the guard stops it
    assert gutted["status"] == "rejected" and "tests fail" in gutted["reason"]
    log = (root / ".autoresearch" / "runs" / "4" / "guard.log").read_text()
    assert "| FAIL" in log or "| ERROR" in log
    assert "class Jinja2Template" in git(root, "show", f"autoresearch/{summary.tag}:bottle.py")


@pytest.mark.slow  # the scripted run: a baseline and five proposals, each scanned and tested
def test_hiding_a_call_from_bandit_costs_more_than_it_saves(scripted_run):
    _, _, _, recs = scripted_run
    hidden = recs[5]
    assert metrics(hidden)["hidden"] == 1 and metrics(hidden)["medium"] == 4
    assert hidden["status"] == "discard" and hidden["metric"] == BASELINE - 10 - 3 + 10


@pytest.mark.slow  # the scripted run: a baseline and five proposals, each scanned and tested
def test_fewer_tests_run_than_the_baseline_breaks_the_constraint(scripted_run):
    root, _, _, recs = scripted_run
    cfg = load_config(root)
    base = metrics(recs[0])
    assert constraint_violation(cfg.metric.constraints, [base], base) is None
    fewer = {**base, "tests_run": base["tests_run"] - 8}
    reason = constraint_violation(cfg.metric.constraints, [fewer], base)
    assert reason and "tests_run" in reason and "below the baseline" in reason


@pytest.mark.slow
@pytest.mark.parametrize("change, gone", [
    (("class CGIServer(ServerAdapter):", "CGIServer = None\nclass _CGIServer(ServerAdapter):"), "CGIServer"),
    (("    def prepare(self, filters=None, tests=None, globals={}, **kwargs):\n        from jinja2",
      "    prepare = None\n    def _prepare(self, filters=None, tests=None, globals={}, **kwargs):\n        from jinja2"),
     "Jinja2Template.prepare"),
])
def test_the_guard_sees_a_feature_replaced_by_a_plain_value(scripted_run, tmp_path, change, gone):
    root = scripted_run[0]
    exp = tmp_path / "exp"
    for name in ("guard.py", "pristine.json", "bottle.py"):
        (exp / name).parent.mkdir(exist_ok=True)
        (exp / name).write_text((root / name).read_text())
    source = (exp / "bottle.py").read_text()
    assert change[0] in source
    (exp / "bottle.py").write_text(source.replace(change[0], change[1], 1))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "bottle.py").write_text((exp / "bottle.py").read_text())
    done = subprocess.run([sys.executable, "guard.py"], cwd=exp, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AUTORESEARCH_ARTIFACTS": str(artifacts)})
    assert done.returncode == 1
    assert "no longer what they were" in done.stdout and gone in done.stdout and "METRIC tests_run" not in done.stdout


def test_the_scorer_counts_the_released_files_findings_and_ignores_nosec(tmp_path, bottle_cache):
    """The default suite's check of the template: init (bottle fetched and committed), then the
    protected scorer on the released bottle.py and on one with a `# nosec` added."""
    root = tmp_path / "sec"
    init_experiment(root, bottle_cache)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    env = {**os.environ, "AUTORESEARCH_ARTIFACTS": str(artifacts)}
    assert subprocess.run([sys.executable, "snapshot.py"], cwd=root, env=env, capture_output=True).returncode == 0
    done = subprocess.run([sys.executable, "evaluate.py"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^METRIC findings={BASELINE}(\.0+)?$", done.stdout, re.M), done.stdout
    source = (artifacts / "bottle.py").read_text()
    assert "exec(self.co, env)" in source
    (artifacts / "bottle.py").write_text(source.replace("exec(self.co, env)", "exec(self.co, env)  # nosec B102"))
    silenced = subprocess.run([sys.executable, "evaluate.py"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert re.search(rf"^METRIC findings={BASELINE}(\.0+)?$", silenced.stdout, re.M), silenced.stdout  # not fixed


def test_init_hook_runs_before_the_first_commit_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    examples = tmp_path / "examples"
    for name, hook in (("ok", "open('fetched.txt', 'w').write('x'); print('fetched it')"),
                       ("broken", "import sys; sys.exit('no network here')")):
        (examples / name).mkdir(parents=True)
        (examples / name / "autoresearch.toml").write_text('[experiment]\nrun = "true"\neditable = ["fetched.txt"]\n')
        (examples / name / "init_hook.py").write_text(hook + "\n")
    monkeypatch.setattr(templates, "examples_dir", lambda: examples)

    lines = templates.init(tmp_path / "good", "ok")
    assert "fetched it" in lines
    assert git(tmp_path / "good", "ls-files").split() == ["autoresearch.toml", "fetched.txt", "program.md"]

    with pytest.raises(UserError, match="set-up step .*no network here.*run `autoresearch init"):
        templates.init(tmp_path / "bad", "broken")
    assert not (tmp_path / "bad").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        templates.init(tmp_path / "empty", "broken")
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.slow
def test_init_and_a_short_run_from_the_command_line(tmp_path, bottle_cache):
    env = {"AUTORESEARCH_CACHE": str(bottle_cache), "TEST_SECURITY_KEY": KEY}
    done = cli("init", tmp_path / "sec", "--template", "security", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "needs code changes" in done.stdout
    root = tmp_path / "sec"

    # The template's own proposer config has no model: the baseline is measured, then one sentence.
    done = cli("run", root, "-n", "1", env=env, timeout=600)
    assert done.returncode == 2, done.stdout + done.stderr
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert "model" in err[-1] and "autoresearch.toml" in err[-1] and "Traceback" not in done.stderr

    with ScriptedLLMServer(reply(edit("ETag: sha1 with usedforsecurity=False (B324)", SHA1_LINE,
                                      SHA1_LINE.replace("tob(etag))", "tob(etag), usedforsecurity=False)"))),
                           key=KEY) as srv:
        use_server(root, srv)
        done = cli("run", root, "-n", "1", env=env, timeout=600)  # resumes: only the proposer changed
    assert done.returncode == 0, done.stdout + done.stderr
    recs = Ledger(root / ".autoresearch").experiments()
    assert [(r["status"], r["metric"]) for r in recs] == [("baseline", BASELINE), ("keep", BASELINE - 10)]
    done = cli("verify", root, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = (root / ".autoresearch" / "results.tsv").read_text().splitlines()
    assert results[0].split("\t")[1] == "findings" and len(results) == 3
    json.loads((root / "pristine.json").read_text())  # untouched and still what the guard reads
