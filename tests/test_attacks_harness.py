"""Attacks on the harness from the experiment's side: each cheat an attack suite won with, written as
the attacker would, must fail to win and be recorded with its reason.

The experiments here are tiny: `score` is read from a protected `evaluate.py` that imports a
protected `prepare.py`, so the only way to a better score is to cheat the evaluation.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from autoresearch.trymode import try_change
from autoresearch.proposers import Proposal
from autoresearch.sandbox import bwrap_available
from autoresearch.verify import rerun

from builders import Scripted, assert_intact, open_session, records, set_toml
from conftest import git, make_experiment

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap does not work on this machine")

PREPARE = "def honest_score():\n    return 4.0\n"
EVALUATE = textwrap.dedent("""\
    import json  # a module an attacker could shadow
    from prepare import honest_score
    print("score:", honest_score())
""")

# train.py variants: each does its honest work (nothing) and then tries one cheat.
PLANT_PYC = textwrap.dedent('''\
    import importlib.util, os, sys
    X = 3.0
    if X < 3.0:  # the candidate: plant a bytecode cache for prepare.py that returns a great score
        src = "prepare.py"
        st = os.stat(src)
        code = compile("def honest_score():\\n    return 0.0\\n", src, "exec")
        import importlib._bootstrap_external as be
        data = be._code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size)
        os.makedirs("__pycache__", exist_ok=True)
        open(importlib.util.cache_from_source(src), "wb").write(data)
    print("score: 99")
''')

SHADOW_MODULE = textwrap.dedent('''\
    X = 3.0
    if X < 3.0:  # the candidate: a json.py beside evaluate.py prints the score and exits
        open("json.py", "w").write("import os, sys\\nprint('score: 0.0')\\nos._exit(0)\\n")
    print("score: 99")
''')


def cheat_experiment(tmp_path, train: str, **kw):
    return make_experiment(tmp_path / "e", train=train, evaluate="python evaluate.py", baseline_runs=1,
                           files={"prepare.py": PREPARE, "evaluate.py": EVALUATE}, **kw)


def lower_x(ctx):
    return Proposal("X -> 2.0", {"train.py": ctx.files["train.py"].replace("X = 3.0", "X = 2.0")})


@pytest.mark.parametrize("train", [PLANT_PYC, SHADOW_MODULE], ids=["planted-pyc", "shadowing-module"])
@pytest.mark.parametrize("sandbox", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_what_run_writes_beside_the_evaluator_never_decides_the_score(tmp_path, train, sandbox):
    root = cheat_experiment(tmp_path, train, sandbox=sandbox)
    s = open_session(root)
    assert s.measure_baseline()["metric"] == 4.0
    from autoresearch.loop import step

    rec = step(s, Scripted(s.config, [lower_x]))
    assert rec["metric"] == 4.0 and rec["status"] == "discard", rec
    # and a re-measurement agrees with the record: the poison is planted again, and ignored again
    rep, results = rerun(root, ids=[0])
    assert rep.ok and results[0].measured == 4.0


@pytest.mark.parametrize("sandbox", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_the_evaluator_runs_from_a_fresh_copy_of_the_protected_files_only(tmp_path, sandbox):
    probe = textwrap.dedent("""\
        import os, pathlib
        here = sorted(p.name for p in pathlib.Path('.').iterdir())
        try:
            open('prepare.py', 'a').write('# changed')
            wrote = 'wrote'
        except OSError:
            wrote = 'read-only'
        print('files:', here, wrote)
        print('score: 1')
    """)
    root = make_experiment(tmp_path / "e", evaluate="python evaluate.py", baseline_runs=1, sandbox=sandbox,
                           files={"prepare.py": PREPARE, "evaluate.py": probe})
    s = open_session(root)
    s.measure_baseline()
    log = (root / ".autoresearch/runs/0/evaluate.log").read_text()
    assert "files: ['evaluate.py', 'prepare.py']" in log, log  # no train.py, no __pycache__
    if sandbox == "bwrap":  # (as root without a sandbox, file modes do not stop a write)
        assert "read-only" in log, log


# State that outlives an experiment: weights in an ignored folder, continued by the next one.
CARRY_STATE = textwrap.dedent('''\
    import os
    X = 3.0
    state = "__pycache__/weights.txt"
    steps = int(open(state).read()) if os.path.exists(state) else 0
    os.makedirs("__pycache__", exist_ok=True)
    open(state, "w").write(str(steps + 100))
    print("score:", 4.0 - steps / 100)
''')


@pytest.mark.parametrize("sandbox", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_state_left_in_an_ignored_folder_never_reaches_the_next_experiment(tmp_path, sandbox):
    root = make_experiment(tmp_path / "e", train=CARRY_STATE, baseline_runs=2, sandbox=sandbox,
                           files={".gitignore": "__pycache__/\n"})
    s = open_session(root)
    base = s.measure_baseline()
    assert [r["metrics"]["score"] for r in base["runs"]] == [4.0, 4.0]  # each repeat starts clean too
    from autoresearch.loop import step

    rec = step(s, Scripted(s.config, [lower_x]))
    assert rec["metric"] == 4.0 and rec["status"] == "discard"
    rep, results = rerun(root, ids=[0])
    assert results[0].measured == 4.0


def test_a_declared_cache_survives_and_its_hash_is_recorded(tmp_path):
    train = CARRY_STATE.replace("__pycache__", ".cache")
    root = make_experiment(tmp_path / "e", train=train, baseline_runs=2, files={".gitignore": ".cache/\n"})
    set_toml(root, "sandbox = ", 'cache = [".cache"]\nsandbox = ', "declare the cache")
    s = open_session(root)
    base = s.measure_baseline()
    assert [r["metrics"]["score"] for r in base["runs"]] == [4.0, 3.0]  # declared, so it carries
    first, second = (r["cache_sha256"] for r in base["runs"])
    assert first["before"] == {".cache": None} and first["after"][".cache"] == second["before"][".cache"]
    assert second["after"][".cache"] != second["before"][".cache"]
    from autoresearch.verify import verify_run

    shown = "\n".join(verify_run(root).lines)
    assert "cache: experiment 0 repeat 1: .cache absent -> " in shown and "cache: experiment 0 repeat 2: .cache " in shown, shown


STRETCH = textwrap.dedent('''\
    import os, time
    X = 3.0
    budget = float(os.environ["AUTORESEARCH_BUDGET_S"])
    time.sleep(budget * (1.3 if X < 3.0 else 1.0))  # the candidate trains 1.3x longer than it may
    print("score:", 4.0 if X >= 3.0 else 3.0)
''')


@pytest.mark.slow  # 28 s of wall clock: the budget must be long enough for 10% + 2 s to be less than a third
def test_a_run_that_stretches_its_budget_by_a_third_is_over_budget(tmp_path):
    root = make_experiment(tmp_path / "e", train=STRETCH, budget="12s", timeout="60s", baseline_runs=1)
    s = open_session(root)
    base = s.measure_baseline()
    from autoresearch.loop import step

    rec = step(s, Scripted(s.config, [lower_x]))
    assert rec["status"] == "over_budget", rec
    assert "allowance" in rec["reason"]
    run = rec["runs"][0]
    assert run["wall_s"] > run["wall_allowance_s"] >= base["runs"][0]["wall_s"]
    assert "baseline median wall" in run["wall_allowance_rule"]


def test_a_run_within_the_budget_is_never_over_budget_because_the_baseline_finished_early(tmp_path):
    train = "import time\nX = 3.0\ntime.sleep(0 if X >= 3.0 else 4)\nprint('score:', X)\n"
    root = make_experiment(tmp_path / "e", train=train, budget="6s", timeout="30s", baseline_runs=1)
    s = open_session(root)
    s.measure_baseline()
    from autoresearch.loop import step

    assert step(s, Scripted(s.config, [lower_x]))["status"] == "keep"


@needs_bwrap
def test_run_does_not_see_credentials_in_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for rel in (".npmrc", ".cargo/credentials", ".config/some-cloud/token", "notes.txt"):
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    train = textwrap.dedent(f"""\
        import os
        X = 3.0
        seen = []
        for rel in (".npmrc", ".cargo/credentials", ".config/some-cloud/token", "notes.txt"):
            try:
                if open(os.path.join({str(home)!r}, rel)).read():
                    seen.append(rel)
            except OSError:
                pass
        print("seen:", seen)
        print("score:", len(seen))
    """)
    root = make_experiment(tmp_path / "e", train=train, baseline_runs=1, sandbox="bwrap")
    rec = open_session(root).measure_baseline()
    assert rec["metric"] == 0, (root / ".autoresearch/runs/0/run.log").read_text()


@needs_bwrap
def test_a_rerun_cannot_read_the_main_worktree_or_the_ledger(tmp_path):
    train = textwrap.dedent("""\
        import os, pathlib
        X = 3.0
        state = pathlib.Path(os.environ["AUTORESEARCH_ARTIFACTS"]).parents[2]
        here = pathlib.Path.cwd().resolve()
        seen = [p.name for p in (state / "worktree", state / "ledger.jsonl")
                if p.exists() and p.resolve() != here and any(True for _ in (p.iterdir() if p.is_dir() else [p]))]
        print("seen:", seen)
        print("score:", len(seen))
    """)
    root = make_experiment(tmp_path / "e", train=train, baseline_runs=1, sandbox="bwrap")
    assert open_session(root).measure_baseline()["metric"] == 0
    rep, results = rerun(root, ids=[0])
    assert results[0].measured == 0, "\n".join(rep.lines)


def test_a_rejected_try_puts_the_whole_change_back(tmp_path):
    root = make_experiment(tmp_path / "e", baseline_runs=1, files={"prepare.py": PREPARE})
    s = open_session(root)
    s.measure_baseline()
    wt = root / ".autoresearch/worktree"
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("X = 3.0", "X = 1.0"))
    (wt / "prepare.py").write_text("def honest_score():\n    return 0.0\n")
    rec = try_change(wt, "better X, and a better scorer")
    assert rec["status"] == "rejected" and "the whole change was reverted" in rec["reason"]
    assert "X = 3.0" in (wt / "train.py").read_text() and (wt / "prepare.py").read_text() == PREPARE
    assert git(wt, "status", "--porcelain") == ""


def test_try_runs_in_a_clean_checkout_and_leaves_the_agents_own_files_alone(tmp_path):
    train = "import os\nX = 3.0\nprint('score:', 99 if os.path.exists('notes/ideas.txt') else (X - 1) ** 2)\n"
    root = make_experiment(tmp_path / "e", train=train, baseline_runs=1, files={".gitignore": "notes/\n"})
    open_session(root).measure_baseline()
    wt = root / ".autoresearch/worktree"
    (wt / "notes").mkdir()
    (wt / "notes/ideas.txt").write_text("what I tried so far")  # the agent's own (ignored) scratch file
    (wt / "train.py").write_text(train.replace("X = 3.0", "X = 2.0"))
    rec = try_change(wt, "X -> 2")
    assert rec["status"] == "keep" and rec["metric"] == 1.0, rec  # the notes were not in the experiment's checkout
    assert (wt / "notes/ideas.txt").read_text() == "what I tried so far"


def test_try_refuses_a_configuration_changed_after_the_run_started(tmp_path):
    root = make_experiment(tmp_path / "e", baseline_runs=1, evaluate="python evaluate.py",
                           files={"prepare.py": PREPARE, "evaluate.py": EVALUATE})
    open_session(root).measure_baseline()
    # the agent drops the protected scorer so that train.py's own printed number would count
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('evaluate = "python evaluate.py"', 'evaluate = ""'))
    wt = root / ".autoresearch/worktree"
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("X = 3.0", "X = 1.0"))
    from autoresearch.errors import UserError

    with pytest.raises(UserError, match=r"changed since the run started \(experiment\.evaluate\)"):
        try_change(wt, "X -> 1")
    assert len(records(root)) == 1


def test_a_fixed_configuration_before_any_baseline_is_recorded_and_the_run_goes_on(tmp_path):
    root = make_experiment(tmp_path / "e", run="no-such-command", baseline_runs=1)
    s = open_session(root)
    with pytest.raises(Exception):
        s.measure_baseline()
    set_toml(root, "no-such-command", "python train.py", "fix the command")
    s2 = open_session(root)
    assert s2.measure_baseline()["status"] == "baseline"
    kinds = [r["kind"] for r in s2.ledger.records()]
    assert kinds == ["start", "experiment", "config", "experiment"]
    assert s2.ledger.records()[2]["changed"] == ["experiment.run"]
    # verify still holds
    from builders import assert_intact

    assert_intact(root)


def test_env_of_the_evaluator_has_its_own_bytecode_cache(tmp_path):
    probe = "import os, sys\nprint('prefix:', sys.pycache_prefix)\nprint('score: 1')\n"
    root = make_experiment(tmp_path / "e", evaluate="python evaluate.py", baseline_runs=1,
                           files={"prepare.py": PREPARE, "evaluate.py": probe})
    open_session(root).measure_baseline()
    log = (root / ".autoresearch/runs/0/evaluate.log").read_text()
    assert f"prefix: {os.path.realpath(root / '.autoresearch/evaluator/pycache')}" in log or \
        f"prefix: {root / '.autoresearch/evaluator/pycache'}" in log, log


# An evaluator that runs what the candidate built (a service, a test suite: the api and security
# templates do) lets candidate code run inside evaluate's sandbox. That code plants a bytecode
# cache entry for `json` in the evaluator's cache; every later evaluation that imports json would
# run it and print a planted score.
RUNS_THE_ARTIFACT = textwrap.dedent("""\
    import os, subprocess, sys
    subprocess.run([sys.executable, os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "service.py")])
    import json  # after the candidate's code ran: a planted cache entry would be read here
    from prepare import honest_score
    print("score:", honest_score() + float(open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "x")).read()))
""")
PLANTS_FOR_LATER = textwrap.dedent('''\
    import os
    X = 3.0
    art = os.environ["AUTORESEARCH_ARTIFACTS"]
    open(os.path.join(art, "x"), "w").write(str((X - 3.0) ** 2))
    service = "print('serving')\\n"
    if X == 2.0:  # the attacker's service: plant json's bytecode in the evaluator's cache
        service += (
            "import importlib.util, importlib._bootstrap_external as be, json, os\\n"
            "src = json.__file__; st = os.stat(src)\\n"
            "code = compile(\\"print('score: 0.0'); import os; os._exit(0)\\", src, 'exec')\\n"
            "target = importlib.util.cache_from_source(src)\\n"
            "try:\\n"
            "    os.makedirs(os.path.dirname(target), exist_ok=True)\\n"
            "    open(target, 'wb').write(be._code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size))\\n"
            "    print('planted', target)\\n"
            "except OSError as err:\\n"
            "    print('could not plant:', err)\\n")
    open(os.path.join(art, "service.py"), "w").write(service)
''')


@needs_bwrap
def test_candidate_code_run_by_the_evaluator_cannot_plant_bytecode_for_later_evaluations(tmp_path):
    from autoresearch.loop import step

    root = make_experiment(tmp_path / "e", train=PLANTS_FOR_LATER, evaluate="python evaluate.py", baseline_runs=1,
                           files={"prepare.py": PREPARE, "evaluate.py": RUNS_THE_ARTIFACT}, sandbox="bwrap")
    s = open_session(root)
    s.measure_baseline()
    attack = step(s, Scripted(s.config, [lambda ctx: Proposal("X -> 2.0", {"train.py": ctx.files["train.py"].replace("X = 3.0", "X = 2.0")})]))
    later = step(s, Scripted(s.config, [lambda ctx: Proposal("X -> 3.5", {"train.py": ctx.files["train.py"].replace("X = 3.0", "X = 3.5")})]))
    assert "could not plant" in (root / f".autoresearch/runs/{attack['id']}/evaluate.log").read_text()
    assert attack["metric"] == pytest.approx(5.0) and attack["status"] == "discard"  # 4 + (2 - 3)^2
    assert later["metric"] == pytest.approx(4.25) and later["status"] == "discard"
    assert_intact(root)


def test_verify_says_per_experiment_which_guarantees_held(tmp_path):
    from conftest import cli

    root = make_experiment(tmp_path / "e", baseline_runs=1)
    assert cli("run", root, "-n", "0").returncode == 0
    wt = root / ".autoresearch/worktree"
    (wt / "train.py").write_text((wt / "train.py").read_text().replace("X = 3.0", "X = 2.0"))
    assert cli("try", "-m", "X -> 2", cwd=wt).returncode == 0  # an unconfined agent's shell
    out = cli("verify", root).stdout
    assert "guarantees: experiment 0: sandbox none (not enforced: " in out, out
    assert "guarantees: experiment 1: sandbox none (not enforced: " in out and "proposer try NOT confined" in out, out
