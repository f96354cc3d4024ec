"""The `hybrid` proposer: the model's structural turns, then `tune_steps` tune experiments after each keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoresearch.config import parse_config
from autoresearch.errors import ProposalInvalid
from autoresearch.proposers import Context, Proposal, Proposer
from autoresearch.proposers.hybrid import HybridProposer

CODE = "LR = 0.04\nWIDTH = 64\n\n\ndef act(x):\n    return max(x, 0)\n"


class StandInLLM(Proposer):
    """Structural edits without a network: rewrites the activation; can be told to fail."""

    name = "llm"

    def __init__(self, config, history, fail: bool = False):
        super().__init__(config, history)
        self.calls = 0
        self.observed: list[dict[str, Any]] = []
        self.fail = fail

    def propose(self, ctx: Context) -> Proposal:
        self.calls += 1
        if self.fail:
            err = ProposalInvalid("model gave up")
            err.meta = {"usage": {"input_tokens": 5, "output_tokens": 1}}
            raise err
        text = ctx.files["train.py"].replace("return max(x, 0)", f"return max(x, 0.0{self.calls})")
        return Proposal(f"leaky act {self.calls}", {"train.py": text}, {"usage": {"input_tokens": 10, "output_tokens": 2}})

    def observe(self, record):
        self.observed.append(record)


def make_config(tune_steps=2):
    data = {
        "experiment": {"run": "python train.py", "editable": ["train.py"]},
        "proposer": {"kind": "hybrid", "model": "m", "tune_steps": tune_steps, "seed": 1},
    }
    return parse_config(data, Path("autoresearch.toml"))


def ctx(tmp_path: Path, config, exp_id: int, history: list[dict[str, Any]], files=None) -> Context:
    run_dir = tmp_path / "runs" / str(exp_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    best = [r for r in history if r["status"] in ("baseline", "keep")][-1]
    return Context(config=config, root=tmp_path, worktree=tmp_path, files=files or {"train.py": CODE}, history=history,
                   best=best, noise=0.01, run_dir=run_dir, experiment_id=exp_id)


def record(i: int, status: str, prop: Proposal, metric: float) -> dict[str, Any]:
    return {"kind": "experiment", "id": i, "status": status, "description": prop.description, "proposer": "hybrid",
            "proposal": prop.meta, "metric": metric, "commit": f"c{i}", "parent": "c0"}


def test_tune_steps_follow_each_kept_llm_change(tmp_path):
    cfg = make_config(tune_steps=2)
    llm = StandInLLM(cfg, [])
    hp = HybridProposer(cfg, [], llm=llm)
    history = [{"kind": "experiment", "id": 0, "status": "baseline", "metric": 1.0, "commit": "c0"}]
    vias = []
    plan = ["discard", "keep", "discard", "discard", "discard"]
    for i, status in enumerate(plan, start=1):
        prop = hp.propose(ctx(tmp_path, cfg, i, history))
        vias.append(prop.meta["via"])
        rec = record(i, status, prop, 0.9 if status == "keep" else 1.1)
        history.append(rec)
        hp.observe(rec)
    # llm (discarded) -> llm (kept) -> tune, tune -> llm again
    assert vias == ["llm", "llm", "tune", "tune", "llm"]
    tuned = [r for r in history if r.get("proposal", {}).get("via") == "tune"]
    assert all("params" in r["proposal"] for r in tuned) and all("->" in r["description"] for r in tuned)
    assert [r["id"] for r in llm.observed] == [1, 2, 5]
    hp.close()


def test_resume_continues_the_mix(tmp_path):
    cfg = make_config(tune_steps=3)
    history = [
        {"kind": "experiment", "id": 0, "status": "baseline", "metric": 1.0},
        {"kind": "experiment", "id": 1, "status": "keep", "proposal": {"via": "llm"}, "metric": 0.9},
        {"kind": "experiment", "id": 2, "status": "discard", "proposal": {"via": "tune", "params": {}}, "metric": 0.95},
    ]
    hp = HybridProposer(cfg, history, llm=StandInLLM(cfg, []))
    assert hp.remaining == 2
    # A run started with plain `llm` and resumed as hybrid: records carry no via, the proposer name counts.
    hp2 = HybridProposer(cfg, [history[0], {"kind": "experiment", "id": 1, "status": "keep", "proposer": "llm"}],
                         llm=StandInLLM(cfg, []))
    assert hp2.remaining == 3


def test_no_knobs_gives_the_turn_back_to_the_model(tmp_path):
    cfg = make_config(tune_steps=2)
    llm = StandInLLM(cfg, [])
    hp = HybridProposer(cfg, [], llm=llm)
    hp.remaining = 2
    files = {"train.py": "def act(x):\n    return max(x, 0)\n"}
    history = [{"kind": "experiment", "id": 0, "status": "baseline", "metric": 1.0, "commit": "c0"}]
    prop = hp.propose(ctx(tmp_path, cfg, 1, history, files=files))
    assert prop.meta["via"] == "llm" and hp.remaining == 0


def test_llm_failure_is_tagged_and_zero_steps_is_plain_llm(tmp_path):
    cfg = make_config(tune_steps=0)
    llm = StandInLLM(cfg, [], fail=True)
    hp = HybridProposer(cfg, [], llm=llm)
    history = [{"kind": "experiment", "id": 0, "status": "baseline", "metric": 1.0, "commit": "c0"}]
    with pytest.raises(ProposalInvalid) as info:
        hp.propose(ctx(tmp_path, cfg, 1, history))
    assert info.value.meta["via"] == "llm" and info.value.meta["usage"]["input_tokens"] == 5
    llm.fail = False
    hp.observe({"id": 1, "status": "invalid"})
    prop = hp.propose(ctx(tmp_path, cfg, 2, history))
    hp.observe({"id": 2, "status": "keep"})
    assert prop.meta["via"] == "llm" and hp.remaining == 0


@pytest.mark.slow  # 9 s: a whole loop; the hybrid's steps are tested above
def test_loop_on_quickstart_with_hybrid(tmp_path, monkeypatch):
    from autoresearch.ledger import Ledger
    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress
    from fake_llm_server import ScriptedLLMServer, knob_edit, quickstart_copy, reply

    monkeypatch.setenv("HYBRID_KEY", "k")
    factors = iter([3.0, 1.5, 1.3, 1.2, 1.1, 0.9])
    with ScriptedLLMServer(key="k", default=lambda body: reply(knob_edit(body, "LEARNING_RATE", next(factors)))) as srv:
        root = quickstart_copy(tmp_path / "qs", f'''
kind = "hybrid"
model = "scripted"
base_url = "{srv.openai_base_url}"
api_key_env = "HYBRID_KEY"
tune_steps = 2
seed = 0
''')
        summary = run_loop(root, max_experiments=5, progress=Progress(quiet=True))
    assert summary.experiments == 5
    recs = Ledger(root / ".autoresearch").experiments()[1:]
    vias = [r["proposal"]["via"] for r in recs]
    assert vias[0] == "llm" and all(r["proposer"] == "hybrid" for r in recs)
    # after every kept llm change the next two experiments (or as many as are left) are tune's
    for i, r in enumerate(recs):
        if r["proposal"]["via"] == "llm" and r["status"] == "keep":
            assert vias[i + 1:i + 3] == ["tune"] * len(vias[i + 1:i + 3])
    for r in recs:
        if r["proposal"]["via"] == "tune":
            assert "params" in r["proposal"] and "usage" not in r["proposal"]
        else:
            assert r["proposal"]["usage"]["input_tokens"] > 0
