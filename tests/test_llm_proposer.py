"""The `llm` proposer through the real openai/anthropic SDKs against a scripted server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoresearch.config import parse_config
from autoresearch.errors import ProposalInvalid, UserError
from autoresearch.proposers import Context
from autoresearch.proposers.edits import EditError, apply_edits, check_syntax, parse_json_reply, parse_reply
from autoresearch.proposers.llm import LLMProposer
from autoresearch.proposers.prompt import build_prompt, format_history
from fake_llm_server import ScriptedLLMServer, hang, reply, status

KEY = "sk-test-SECRET-1234"
TRAIN = "import math\n\nLR = 0.04\nEPOCHS = 3\n\n\ndef lr_at(step):\n    return LR * math.cos(step)\n"
PREPARE = "# protected data preparation\nDATA = 'val split'\n" + "x = 1\n" * 3000

GOOD = """DESCRIPTION: lower LR 0.04 -> 0.03

train.py
<<<<<<< SEARCH
LR = 0.04
=======
LR = 0.03
>>>>>>> REPLACE
"""
BAD_SEARCH = """DESCRIPTION: lower LR

train.py
<<<<<<< SEARCH
LR = 0.4
=======
LR = 0.03
>>>>>>> REPLACE
"""


def make_config(**proposer):
    data = {
        "experiment": {"run": "python train.py", "editable": ["train.py"], "protected": ["prepare.py"], "budget": 60},
        "metric": {"name": "val_loss", "goal": "minimize"},
        "proposer": {"kind": "llm", "model": "test-model", "api_key_env": "TEST_LLM_KEY", "max_retries": 2, **proposer},
    }
    return parse_config(data, Path("autoresearch.toml"))


def make_ctx(tmp_path: Path, config, *, history=None, feedback="", exp_id=1, files=None) -> Context:
    root = tmp_path / "exp"
    root.mkdir(exist_ok=True)
    (root / "program.md").write_text("# Program\nMake val_loss small. PROGRAM-MARKER\n")
    (root / "prepare.py").write_text(PREPARE)
    (root / "train.py").write_text(TRAIN)
    history = history if history is not None else [
        {"kind": "experiment", "id": 0, "status": "baseline", "metric": 1.5, "description": "baseline", "reason": "first run"}
    ]
    run_dir = root / ".autoresearch" / "runs" / str(exp_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    best = [r for r in history if r["status"] in ("baseline", "keep")][-1] if history else None
    return Context(config=config, root=root, worktree=root, files=dict(files or {"train.py": TRAIN}), history=history,
                   best=best, noise=0.01, run_dir=run_dir, experiment_id=exp_id, feedback=feedback)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", KEY)


def proposer_for(server, provider="openai", **kw):
    base = server.openai_base_url if provider == "openai" else server.url
    p = LLMProposer(make_config(provider=provider, base_url=base, **kw), [])
    p.retry_backoff = 0.0
    return p


PROVIDERS = ["openai", "anthropic"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_good_edit(tmp_path, key_env, provider):
    with ScriptedLLMServer(reply(GOOD, input_tokens=1000, output_tokens=50), key=KEY) as srv:
        p = proposer_for(srv, provider, price_input_per_mtok=3.0, price_output_per_mtok=15.0)
        ctx = make_ctx(tmp_path, p.config)
        prop = p.propose(ctx)
        p.close()
    assert prop.description == "lower LR 0.04 -> 0.03"
    assert prop.edits == {"train.py": TRAIN.replace("LR = 0.04", "LR = 0.03")}
    assert prop.meta["usage"] == {"input_tokens": 1000, "output_tokens": 50}
    assert prop.meta["cost_usd"] == pytest.approx((1000 * 3 + 50 * 15) / 1e6)
    assert prop.meta["latency_s"] >= 0 and prop.meta["turns"] == 1
    prompt = (ctx.run_dir / "prompt-1.md").read_text()
    assert "PROGRAM-MARKER" in prompt and "LR = 0.04" in prompt and "protected data preparation" in prompt
    assert "first 6000 of" in prompt  # protected file is size-capped
    assert (ctx.run_dir / "reply-1.md").read_text() == GOOD
    # the key is handed to the SDK only: never in a prompt, a reply or the meta
    for f in ctx.run_dir.iterdir():
        assert KEY not in f.read_text()
    assert KEY not in json.dumps(prop.meta)
    req = srv.requests[0]
    assert req["body"]["model"] == "test-model" and req["body"]["temperature"] == 0.7
    if provider == "anthropic":
        assert req["path"] == "/v1/messages" and req["body"]["max_tokens"] == 8000 and "system" in req["body"]
    else:
        assert req["path"] == "/v1/chat/completions" and req["body"]["messages"][0]["role"] == "system"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_then_repaired(tmp_path, key_env, provider):
    with ScriptedLLMServer(reply(BAD_SEARCH), reply(GOOD), key=KEY) as srv:
        p = proposer_for(srv, provider)
        ctx = make_ctx(tmp_path, p.config)
        prop = p.propose(ctx)
    assert prop.edits["train.py"].count("LR = 0.03") == 1
    assert prop.meta["turns"] == 2 and "does not match" in prop.meta["repairs"][0]
    second = srv.requests[1]["body"]["messages"]
    last = second[-1]["content"]
    assert second[-1]["role"] == "user" and "could not be applied" in last
    assert "LR = 0.04" in last  # the closest real lines are shown
    assert second[-2]["role"] == "assistant" and second[-2]["content"] == BAD_SEARCH
    assert (ctx.run_dir / "prompt-2.md").exists() and (ctx.run_dir / "reply-2.md").exists()


def test_gives_up_after_repair_turns(tmp_path, key_env):
    with ScriptedLLMServer(reply("no idea"), reply(BAD_SEARCH), reply(BAD_SEARCH), reply(GOOD), key=KEY) as srv:
        p = proposer_for(srv, repair_turns=2)
        ctx = make_ctx(tmp_path, p.config)
        with pytest.raises(ProposalInvalid) as info:
            p.propose(ctx)
    assert len(srv.requests) == 3
    assert "after 3 replies" in str(info.value) and "does not match" in str(info.value)
    assert info.value.meta["usage"]["input_tokens"] > 0 and info.value.meta["turns"] == 3


def test_non_editable_and_syntax_errors_are_repaired(tmp_path, key_env):
    outside = GOOD.replace("train.py\n<<<", "prepare.py\n<<<")
    broken = GOOD.replace("LR = 0.03", "LR = (0.03")
    with ScriptedLLMServer(reply(outside), reply(broken), reply(GOOD), key=KEY) as srv:
        p = proposer_for(srv, repair_turns=2)
        prop = p.propose(make_ctx(tmp_path, p.config))
    assert "prepare.py is not editable" in prop.meta["repairs"][0]
    assert "no longer compiles" in prop.meta["repairs"][1] and "line 3" in prop.meta["repairs"][1]
    assert prop.edits["train.py"] == TRAIN.replace("LR = 0.04", "LR = 0.03")


def test_repeated_idea_is_refused_and_feedback_is_shown(tmp_path, key_env):
    other = GOOD.replace("DESCRIPTION: lower LR 0.04 -> 0.03", "DESCRIPTION: more epochs").replace(
        "LR = 0.04\n=======\nLR = 0.03", "EPOCHS = 3\n=======\nEPOCHS = 4")
    third_idea = other.replace("EPOCHS = 4", "EPOCHS = 6").replace("more epochs", "even more epochs")
    with ScriptedLLMServer(reply(GOOD), reply(GOOD), reply(other), reply(other), reply(third_idea), key=KEY) as srv:
        p = proposer_for(srv)
        first = p.propose(make_ctx(tmp_path, p.config, exp_id=1))
        p.observe({"id": 1, "status": "discard"})
        # The same change again: refused inside the proposer, the model is told which experiment it repeats.
        second = p.propose(make_ctx(tmp_path, p.config, exp_id=2))
        assert "identical to experiment #1 (discard)" in second.meta["repairs"][0]
        assert second.description == "more epochs"
        # The loop found the tree identical to one run earlier: its feedback goes into the next prompt.
        third = p.propose(make_ctx(tmp_path, p.config, exp_id=2, feedback="The proposal 'more epochs' is identical to experiment 5."))
    assert first.edits != second.edits
    assert "identical to experiment 5" in srv.requests[3]["body"]["messages"][-1]["content"]
    assert "already ran" in third.meta["repairs"][0] and third.description == "even more epochs"
    # numbering continues within the same run folder
    assert sorted(f.name for f in (tmp_path / "exp/.autoresearch/runs/2").glob("prompt-*.md")) == ["prompt-1.md", "prompt-2.md", "prompt-3.md", "prompt-4.md"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("code", [429, 500])
def test_transient_error_then_success(tmp_path, key_env, provider, code):
    with ScriptedLLMServer(status(code), reply(GOOD), key=KEY) as srv:
        p = proposer_for(srv, provider)
        prop = p.propose(make_ctx(tmp_path, p.config))
    assert prop.description.startswith("lower LR")
    assert [r.get("step") for r in srv.requests] == ["status", "reply"]


def test_hang_past_timeout_then_success(tmp_path, key_env):
    with ScriptedLLMServer(hang(5), reply(GOOD), key=KEY) as srv:
        p = proposer_for(srv, request_timeout=0.5)
        prop = p.propose(make_ctx(tmp_path, p.config))
    assert prop.edits and len(srv.requests) == 2


def test_persistent_outage_is_invalid_not_a_crash(tmp_path, key_env):
    with ScriptedLLMServer(default=status(503), key=KEY) as srv:
        p = proposer_for(srv, max_retries=1)
        with pytest.raises(ProposalInvalid) as info:
            p.propose(make_ctx(tmp_path, p.config))
    assert "kept failing" in str(info.value) and "503" in str(info.value)
    assert len(srv.requests) == 2 * 4  # SDK tries x our rounds


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_key_stops_with_one_sentence(tmp_path, monkeypatch, provider):
    monkeypatch.setenv("TEST_LLM_KEY", "wrong-key-value")
    with ScriptedLLMServer(reply(GOOD), key=KEY) as srv:
        p = proposer_for(srv, provider)
        with pytest.raises(UserError) as info:
            p.propose(make_ctx(tmp_path, p.config))
    msg = str(info.value)
    assert "$TEST_LLM_KEY" in msg and "401" in msg and "wrong-key-value" not in msg
    assert msg.count(". ") == 0 and msg.endswith(".")
    assert len(srv.requests) == 1  # no retries on an auth error


def test_missing_key_without_base_url(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = make_config(api_key_env="")
    with pytest.raises(UserError, match=r"\$OPENAI_API_KEY is not set"):
        LLMProposer(cfg, [])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_json_schema_mode(tmp_path, key_env, provider):
    body = json.dumps({"description": "fewer epochs", "edits": [{"file": "train.py", "search": "EPOCHS = 3", "replace": "EPOCHS = 2"}]})
    with ScriptedLLMServer(reply("```json\n" + body + "\n```"), key=KEY) as srv:
        p = proposer_for(srv, provider, response_format="json_schema")
        prop = p.propose(make_ctx(tmp_path, p.config))
    assert prop.description == "fewer epochs" and "EPOCHS = 2" in prop.edits["train.py"]
    if provider == "openai":
        rf = srv.requests[0]["body"]["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["schema"]["required"] == ["description", "edits"]
    else:
        assert srv.requests[0]["body"]["output_config"]["format"]["type"] == "json_schema"
    assert '"edits"' in srv.requests[0]["body"]["messages"][-1]["content"]


def test_max_tokens_parameter_switches_on_400(tmp_path, key_env):
    with ScriptedLLMServer(status(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."),
                           reply(GOOD), key=KEY) as srv:
        p = proposer_for(srv)
        p.propose(make_ctx(tmp_path, p.config))
    assert "max_tokens" in srv.requests[0]["body"] and "max_completion_tokens" in srv.requests[1]["body"]


# --- parsing and applying edits ------------------------------------------------------------------

FILES = {"train.py": TRAIN}


def test_unified_diff_and_whole_file():
    diff = "DESCRIPTION: cosine to sine\n```diff\n--- a/train.py\n+++ b/train.py\n@@ -7,2 +7,2 @@\n def lr_at(step):\n-    return LR * math.cos(step)\n+    return LR * math.sin(step)\n```\n"
    parsed = parse_reply(diff, ["train.py"])
    assert parsed.kind == "diff" and parsed.description == "cosine to sine"
    assert "math.sin" in apply_edits(FILES, parsed.edits, ["train.py"])["train.py"]
    whole = "Rewrite.\n\ntrain.py\n```python\nLR = 1\n```\n"
    parsed = parse_reply(whole, ["train.py"])
    assert parsed.kind == "whole_file" and apply_edits(FILES, parsed.edits, ["train.py"]) == {"train.py": "LR = 1\n"}


def test_path_in_fence_info_and_several_blocks():
    text = ("DESCRIPTION: two knobs\n```python train.py\n<<<<<<< SEARCH\nLR = 0.04\n=======\nLR = 0.02\n>>>>>>> REPLACE\n"
            "<<<<<<< SEARCH\nEPOCHS = 3\n======= \nEPOCHS = 4\n>>>>>>> REPLACE\n```\n")
    parsed = parse_reply(text, ["train.py"])
    out = apply_edits(FILES, parsed.edits, ["train.py"])["train.py"]
    assert "LR = 0.02" in out and "EPOCHS = 4" in out and len(parsed.edits) == 2


def test_search_replace_tolerates_trailing_whitespace_and_fences():
    text = "DESCRIPTION: x\n\n```python\ntrain.py\n<<<<<<< SEARCH\nEPOCHS = 3   \n=======\nEPOCHS = 5\n>>>>>>> REPLACE\n```\n"
    parsed = parse_reply(text, ["train.py"])
    out = apply_edits(FILES, parsed.edits, ["train.py"])["train.py"]
    assert "EPOCHS = 5\n" in out and "EPOCHS = 3" not in out


def test_ambiguous_and_empty_edits():
    files = {"a.py": "x = 1\nx = 1\n"}
    with pytest.raises(EditError, match="occurs 2 times"):
        apply_edits(files, parse_reply("a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n", ["a.py"]).edits, ["a.py"])
    with pytest.raises(EditError, match="change nothing"):
        apply_edits(files, parse_reply("a.py\n<<<<<<< SEARCH\nx = 1\nx = 1\n=======\nx = 1\nx = 1\n>>>>>>> REPLACE\n", ["a.py"]).edits, ["a.py"])
    with pytest.raises(EditError, match="no edits found"):
        parse_reply("I think we should lower the learning rate.", ["a.py"])
    with pytest.raises(EditError, match="REPLACE"):
        parse_reply("a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n", ["a.py"])
    with pytest.raises(EditError, match="no longer compiles"):
        check_syntax({"a.py": "def f(:\n"})
    with pytest.raises(EditError, match="not valid JSON"):
        parse_json_reply('{"description": "x", "edits": [}')


# --- the prompt ------------------------------------------------------------------------------------

def test_history_shows_lineage_crash_tails_and_older_ideas(tmp_path):
    cfg = make_config(history=3)
    hist = [{"id": 0, "status": "baseline", "metric": 1.5, "description": "baseline"}]
    for i in range(1, 8):
        hist.append({"id": i, "status": "discard", "metric": 1.6, "delta": 0.1, "description": f"idea number {i}", "reason": "no gain"})
    hist.append({"id": 8, "status": "keep", "metric": 1.4, "delta": -0.1, "description": "wider MLP", "reason": "beats best"})
    hist.append({"id": 9, "status": "crash", "metric": None, "description": "bad shapes",
                 "log_tail": "line\n" * 30 + "Traceback (most recent call last):\nValueError: shapes (3,) and (4,) not aligned"})
    ctx = make_ctx(tmp_path, cfg, history=hist, exp_id=10)
    text = format_history(ctx, 3)
    assert "Current best: val_loss=1.4 (experiment #8)" in text
    assert "#0 1.5" in text and "#8 1.4 \"wider MLP\"" in text  # lineage
    assert "- #1 discard: idea number 1" in text  # older idea, one line
    assert "ValueError: shapes" in text and text.count("    | line") < 12  # crash tail, capped
    assert "(-0.1 vs best)" in text
    system, user = build_prompt(ctx)
    assert "Propose experiment #10" in user and "SEARCH" in user and "noise" in user


def test_prompt_without_program_md_uses_template(tmp_path):
    ctx = make_ctx(tmp_path, make_config())
    (ctx.root / "program.md").unlink()
    _, user = build_prompt(ctx)
    assert "Simplicity" in user and "small gain bought" in user


# --- end to end: the loop on examples/quickstart -------------------------------------------------

@pytest.fixture(scope="module")
def quickstart_llm_run(tmp_path_factory):
    """Five experiments of the real loop on a copy of examples/quickstart, the model scripted."""
    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress
    from fake_llm_server import knob_edit, quickstart_copy

    bodies: list[dict] = []

    def seen(fn):
        def step(body):
            bodies.append(body)
            return reply(fn(body))
        return step

    crash = ("DESCRIPTION: fail fast\n\ntrain.py\n<<<<<<< SEARCH\nt0 = time.time()\n=======\n"
             "t0 = time.time()\nraise RuntimeError(\"boom: injected failure\")\n>>>>>>> REPLACE\n")
    script = [
        seen(lambda b: knob_edit(b, "LEARNING_RATE", 3)),
        seen(lambda b: "I would try a wider layer."),  # no edits: a repair turn follows
        seen(lambda b: knob_edit(b, "HIDDEN_SIZE", 2)),
        seen(lambda b: crash),
        seen(lambda b: knob_edit(b, "LEARNING_RATE", 0.5)),
        seen(lambda b: knob_edit(b, "BATCH_SIZE", 0.5)),
    ]
    tmp = tmp_path_factory.mktemp("qs-llm")
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_LLM_KEY", KEY)
    mp.setenv("AUTORESEARCH_KEY_DIR", str(tmp / "keys"))  # the autouse isolation fixture is per test
    mp.setenv("AUTORESEARCH_CACHE", str(tmp / "cache"))
    try:
        with ScriptedLLMServer(*script, key=KEY) as srv:
            root = quickstart_copy(tmp / "qs", f'''
kind = "llm"
provider = "openai"
model = "scripted"
base_url = "{srv.openai_base_url}"
api_key_env = "TEST_LLM_KEY"
max_retries = 1
price_input_per_mtok = 2.0
price_output_per_mtok = 8.0
''')
            summary = run_loop(root, max_experiments=5, progress=Progress(quiet=True))
    finally:
        mp.undo()
    return root, summary, bodies


def test_loop_on_quickstart_with_llm(quickstart_llm_run):
    from autoresearch.ledger import Ledger

    root, summary, bodies = quickstart_llm_run
    assert summary.experiments == 5
    recs = Ledger(root / ".autoresearch").experiments()
    assert [r["id"] for r in recs] == [0, 1, 2, 3, 4, 5]
    by_id = {r["id"]: r for r in recs}
    assert by_id[3]["status"] == "crash"
    assert by_id[2]["description"].startswith("HIDDEN_SIZE 32 -> 64")
    for r in recs[1:]:
        assert r["proposer"] == "llm"
        assert r["proposal"]["usage"]["input_tokens"] > 0 and r["proposal"]["cost_usd"] > 0
    assert by_id[2]["proposal"]["turns"] == 2
    # the crash's traceback reached the next prompt
    assert "boom: injected failure" in bodies[4]["messages"][-1]["content"]
    for f in (root / ".autoresearch").rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_loop_keeps_prompts_and_replies(quickstart_llm_run):
    root, _, _ = quickstart_llm_run
    runs = root / ".autoresearch" / "runs"
    for i in range(1, 6):
        assert (runs / str(i) / "prompt-1.md").exists() and (runs / str(i) / "reply-1.md").exists()
    assert (runs / "2" / "prompt-2.md").exists()
