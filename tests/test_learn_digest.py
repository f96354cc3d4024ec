"""`--learn-from` for the llm, agent and hybrid proposers: a digest of other runs in their prompt,
never a record of this run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from autoresearch.config import load_config, parse_config
from autoresearch.ledger import Ledger
from autoresearch.proposers import Context, Proposal
from autoresearch.proposers.digest import TITLE, OtherRun, build_digest, read_runs
from builders import Scripted, assert_intact, open_session, set_toml
from conftest import git, make_experiment
from fake_llm_server import ScriptedLLMServer, reply

KEY = "sk-learn-test"
EDIT = "DESCRIPTION: X 3.0 -> 2.99\n\ntrain.py\n<<<<<<< SEARCH\nX = 3.0\n=======\nX = 2.99\n>>>>>>> REPLACE\n"


def _tune_like(value: float):
    """A scripted change that names its knob values the way tune's records do (so tune can learn them)."""
    def make(ctx: Context) -> Proposal:
        now = float(re.search(r"^X = (.*)$", ctx.files["train.py"], flags=re.M).group(1))
        text = re.sub(r"^X = .*$", f"X = {value}", ctx.files["train.py"], flags=re.M)
        return Proposal(f"X -> {value}", {"train.py": text}, {"params": {"X": value}, "base": {"X": now, "NOISE": 0.001}})
    return make


def earlier_run(root: Path, goal: str = "minimize") -> Path:
    """A real run: baseline (score 4), a small kept gain (X 2.98, score 3.92), a clear loss (X 3.1,
    score 4.41) that is discarded, and a crash."""
    make_experiment(root)
    if goal != "minimize":
        set_toml(root, 'goal = "minimize"', f'goal = "{goal}"')
    s = open_session(root)
    s.measure_baseline()
    if goal == "minimize":
        from autoresearch.loop import step

        p = Scripted(s.config, [_tune_like(2.98), _tune_like(3.1), "oops("])
        for _ in range(3):
            step(s, p)
    return root


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    # Built once for the module, before the function-scoped autouse fixture sets the keys and the
    # git identity: set them here for this run alone.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_KEY_DIR", str(tmp_path_factory.mktemp("keys-a")))
        mp.setenv("AUTORESEARCH_CACHE", str(tmp_path_factory.mktemp("cache-a")))
        for who in ("AUTHOR", "COMMITTER"):
            mp.setenv(f"GIT_{who}_NAME", "test")
            mp.setenv(f"GIT_{who}_EMAIL", "test@localhost")
        root = earlier_run(tmp_path_factory.mktemp("earlier") / "a")
    assert [r["status"] for r in Ledger(root / ".autoresearch").experiments()] == ["baseline", "keep", "discard", "crash"]
    return root


def llm_config(base_url: str, kind: str = "llm", **proposer):
    data = {
        "experiment": {"run": "python train.py", "editable": ["train.py"], "sandbox": "none"},
        "metric": {"name": "score", "goal": "minimize"},
        "proposer": {"kind": kind, "model": "m", "base_url": base_url, "api_key_env": "LEARN_KEY", "max_retries": 0, **proposer},
    }
    return parse_config(data, Path("autoresearch.toml"))


def context(root: Path, config, exp_id: int = 1) -> Context:
    history = [{"kind": "experiment", "id": 0, "status": "baseline", "metric": 4.0, "description": "baseline"}]
    run_dir = root / ".autoresearch" / "runs" / str(exp_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Context(config=config, root=root, worktree=root, files={"train.py": (root / "train.py").read_text()},
                   history=history, best=history[0], noise=0.001, run_dir=run_dir, experiment_id=exp_id)


def test_the_digest_shows_a_kept_change_with_its_gain_and_the_refuted_ones(run_a):
    config = load_config(run_a)
    warned: list[str] = []
    runs = read_runs([run_a], config, warn=warned.append)
    assert warned == [] and [r.source for r in runs] == [str(run_a)]
    text = build_digest(runs, config)
    assert "not in this run" in text and "never as results of this run" in text
    lines = text.splitlines()
    base, keep, disc, _ = Ledger(run_a / ".autoresearch").experiments()
    kept = next(ln for ln in lines if '"X -> 2.98"' in ln)
    m = re.fullmatch(r'- their #1 "X -> 2\.98": score=(\S+) \((\S+) vs the best before it, (\S+)% of its baseline\)', kept)
    assert m, kept
    # score 4 -> 3.92: a gain of about 0.08, i.e. -2% of that run's baseline
    assert float(m[1]) == pytest.approx(keep["metric"], rel=1e-5) and float(m[2]) == pytest.approx(keep["delta"], rel=1e-3)
    assert float(m[3]) == pytest.approx(100 * keep["delta"] / base["metric"], rel=1e-2) and -2.5 < float(m[3]) < -1.5
    assert lines.index("Kept there (largest gain first):") < lines.index(kept) < lines.index("Refuted there (not kept):")
    discarded = next(ln for ln in lines if '"X -> 3.1"' in ln)
    m = re.fullmatch(r'- their #2 discard "X -> 3\.1": score=(\S+) \((\S+) vs the best before it, (\S+)% of its baseline\)', discarded)
    assert m, discarded
    assert float(m[1]) == pytest.approx(disc["metric"], rel=1e-5) and float(m[2]) == pytest.approx(disc["metric"] - keep["metric"], rel=1e-3)
    crashed = next(ln for ln in lines if '"X -> oops("' in ln)
    assert crashed.startswith("- their #3 crash") and "SyntaxError" in crashed
    head = next(ln for ln in lines if ln.startswith("Run in "))
    assert f"baseline score={base['metric']:.6g}" in head and f"best score={keep['metric']:.6g}" in head
    assert "4 experiments (1 baseline, 1 crash, 1 discard, 1 keep)" in head


def test_the_digest_is_bounded_however_long_the_other_runs_are():
    config = parse_config({"experiment": {"run": "true", "editable": ["t.py"]}, "metric": {"name": "loss"}},
                          Path("autoresearch.toml"))
    records = [{"kind": "experiment", "id": 0, "status": "baseline", "metric": 10.0, "description": "baseline"}]
    best = 10.0
    for i in range(1, 300):
        status = ("keep", "discard", "crash", "over_budget")[i % 4]
        metric = best - 0.01 * i if status == "keep" else (best + i if status == "discard" else None)
        records.append({"kind": "experiment", "id": i, "status": status, "metric": metric, "description": f"idea {i} " + "x" * 300,
                        "reason": "the run took longer than the harness allows" if status == "over_budget" else "boom"})
        best = metric if status == "keep" else best
    runs = [OtherRun(f"/runs/{n}", {"kind": "start", "tag": n}, records) for n in ("p", "q", "r")]
    text = build_digest(runs, config, max_lines=25)
    body = text.split("\n\n", 1)[1].splitlines()
    assert len(body) <= 25 and body[-1].endswith("more lines about other runs left out)")
    assert all(len(ln) < 400 for ln in body)
    one = build_digest(runs[:1], config).splitlines()
    # the largest kept gain comes first, and every kind of refutation is shown
    kept = [ln for ln in one if ln.startswith("- their #") and "vs the best before it" in ln and "discard" not in ln]
    assert kept[0].startswith("- their #296 ")  # the last keep, by 2.96
    assert any(" over_budget " in ln for ln in one) and any(" crash " in ln for ln in one) and any(" discard " in ln for ln in one)
    assert build_digest([], config) == ""


def test_folders_that_are_not_runs_of_this_metric_are_skipped_each_with_one_sentence(tmp_path, run_a):
    other_goal = earlier_run(tmp_path / "maximizing", goal="maximize")
    damaged = tmp_path / "damaged" / ".autoresearch"
    damaged.mkdir(parents=True)
    (damaged / "ledger.jsonl").write_text('{"kind": "start", "metric": "score"\nnot json\n')
    config = load_config(run_a)
    warned: list[str] = []
    runs = read_runs([tmp_path / "missing", tmp_path, other_goal, damaged.parent, run_a], config, warn=warned.append)
    assert [r.source for r in runs] == [str(run_a)]
    assert len(warned) == 4 and all("\n" not in w and "Traceback" not in w for w in warned)
    assert "missing is not a folder" in warned[0]
    assert "has no run to learn from" in warned[1]
    assert "measures score (maximize), this run score (minimize)" in warned[2] and "same metric" in warned[2]
    assert "line 1 is not valid JSON" in warned[3] and "damaged" in warned[3]


def test_the_llm_prompt_sent_to_the_model_carries_the_digest_apart_from_this_runs_history(tmp_path, run_a, monkeypatch):
    from autoresearch.proposers.llm import LLMProposer

    monkeypatch.setenv("LEARN_KEY", KEY)
    b = make_experiment(tmp_path / "b")
    with ScriptedLLMServer(reply(EDIT), key=KEY) as srv:
        p = LLMProposer(llm_config(srv.openai_base_url), [])
        warned: list[str] = []
        assert p.learn_from([run_a, tmp_path / "nowhere"], warn=warned.append) is True
        ctx = context(b, p.config)
        prop = p.propose(ctx)
        p.close()
    assert len(warned) == 1 and "nowhere" in warned[0]
    assert prop.meta["learned_from"] == [str(run_a)]
    sent = srv.requests[0]["body"]["messages"][1]["content"]
    assert f"# {TITLE}" in sent and '"X -> 2.98": score=3.92' in sent and 'their #2 discard "X -> 3.1"' in sent
    history = sent.split("# History", 1)[1].split(f"# {TITLE}", 1)[0]
    assert "1 experiments so far" in history and "2.98" not in history  # this run's history is this run's
    assert sent.index(f"# {TITLE}") < sent.index("# Your task")
    assert f"# {TITLE}" in (ctx.run_dir / "prompt-1.md").read_text()


AGENT = r'''
import shutil, sys
from pathlib import Path
shutil.copy(sys.argv[1], sys.argv[2])
Path("train.py").write_text(Path("train.py").read_text().replace("X = 3.0", "X = 2.9"))
print("DESCRIPTION: X 3.0 -> 2.9")
'''


def test_the_agent_prompt_file_carries_the_digest(tmp_path, run_a):
    from autoresearch.proposers.agent import AgentProposer

    b = make_experiment(tmp_path / "b")
    tools = tmp_path / "agentbin"
    tools.mkdir()
    (tools / "agent.py").write_text(AGENT)
    seen = tools / "seen.md"
    config = parse_config({
        "experiment": {"run": "python train.py", "editable": ["train.py"]},
        "metric": {"name": "score", "goal": "minimize"},
        "proposer": {"kind": "agent", "sandbox": "none", "agent_paths": [str(tools)],
                     "command": f"{sys.executable} {tools / 'agent.py'} {{prompt_file}} {seen}"},
    }, Path("autoresearch.toml"))
    p = AgentProposer(config, [])
    assert p.learn_from([run_a]) is True
    ctx = context(b, config)
    prop = p.propose(ctx)
    assert prop.description == "X 3.0 -> 2.9" and prop.meta["learned_from"] == [str(run_a)]
    prompt = (ctx.run_dir / "agent-prompt-1.md").read_text()
    assert f"# {TITLE}" in prompt and '"X -> 2.98": score=3.92' in prompt and "crash" in prompt
    assert prompt.index("# History") < prompt.index(f"# {TITLE}") < prompt.index("# Your task")
    assert seen.read_text() == prompt  # what the agent read
    assert str(run_a) in prompt and ".autoresearch/ledger.jsonl" not in prompt  # named, never handed over


def test_hybrid_gives_its_model_the_digest_and_warm_starts_its_tune_part(tmp_path, run_a, monkeypatch):
    from autoresearch.proposers.hybrid import HybridProposer

    monkeypatch.setenv("LEARN_KEY", KEY)
    other_goal = earlier_run(tmp_path / "maximizing", goal="maximize")
    b = make_experiment(tmp_path / "b")
    config = llm_config("http://127.0.0.1:9/v1", kind="hybrid", tune_first=1, seed=0)
    h = HybridProposer(config, [])
    warned: list[str] = []
    assert h.learn_from([run_a, other_goal], warn=warned.append) is True
    assert len(warned) == 1 and "maximizing" in warned[0] and "same metric" in warned[0]  # said once, not by both parts
    assert '"X -> 2.98"' in h.llm.learned
    # tune's first turn is the other run's best, and only the run of this metric taught it
    prop = h.propose(context(b, config))
    h.close()
    assert prop.meta["via"] == "tune" and prop.meta["learned_from"] == [str(run_a)]
    assert prop.meta["strategy"] == "learned" and prop.meta["params"]["X"] == pytest.approx(2.98)


def test_a_loop_that_learns_from_another_run_records_only_its_own_experiments(tmp_path, run_a, monkeypatch):
    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress

    class Captured(Progress):
        def __init__(self):
            super().__init__(quiet=True)
            self.warnings: list[str] = []

        def warn(self, text: str) -> None:
            self.warnings.append(text)

    monkeypatch.setenv("LEARN_KEY", KEY)
    a_bytes = (run_a / ".autoresearch" / "ledger.jsonl").read_bytes()
    a_records = Ledger(run_a / ".autoresearch").experiments()
    b = make_experiment(tmp_path / "b")
    with ScriptedLLMServer(reply(EDIT), key=KEY) as srv:
        with open(b / "autoresearch.toml", "a") as fh:
            fh.write(f'\n[proposer]\nkind = "llm"\nmodel = "m"\nbase_url = "{srv.openai_base_url}"\napi_key_env = "LEARN_KEY"\n')
        git(b, "commit", "-qam", "llm")
        progress = Captured()
        summary = run_loop(b, max_experiments=1, progress=progress, learn_from=[run_a, tmp_path / "nowhere"])
    assert summary.experiments == 1
    assert len(progress.warnings) == 1 and "nowhere" in progress.warnings[0]
    assert not any("does not learn from other runs" in w for w in progress.warnings)
    # the prompt quoted the other run ...
    sent = srv.requests[0]["body"]["messages"][1]["content"]
    assert '"X -> 2.98": score=3.92' in sent
    # ... but this run's ledger holds its own baseline and its own experiment, nothing of the other's
    b_records = Ledger(b / ".autoresearch").experiments()
    assert [r["id"] for r in b_records] == [0, 1] and b_records[1]["description"] == "X 3.0 -> 2.99"
    theirs = {r["commit"] for r in a_records if r.get("commit")} | {r["description"] for r in a_records[1:]}
    dumped = (b / ".autoresearch" / "ledger.jsonl").read_text()
    assert not any(r.get("commit") in theirs or r["description"] in theirs for r in b_records[1:])
    assert "X -> 2.98" not in dumped and "oops(" not in dumped
    assert b_records[1]["proposal"]["learned_from"] == [str(run_a)]  # provenance: which run the prompt quoted
    assert (run_a / ".autoresearch" / "ledger.jsonl").read_bytes() == a_bytes  # read, never written
    assert_intact(b)
    assert json.loads(dumped.splitlines()[0])["kind"] == "start"
