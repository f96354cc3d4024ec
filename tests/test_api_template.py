"""The `api` template: a real Starlette/uvicorn service under a real load generator (wrk).

The evaluator starts the shipped service on loopback, loads it and reports throughput, latency
percentiles and an error rate that counts wrong or stale answers; a service that answers fast from
a stale cache, or wrongly, is discarded by the error-rate constraint (or rejected by the guard, the
service's own tests) in a real session, and never kept."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.loop import step
from autoresearch.proposers import Proposal
from autoresearch.templates import examples_dir, init

from builders import Scripted, assert_intact, open_session, set_toml

API = examples_dir() / "api"
SMALL = "--requests 400 --concurrency 8 --warmup 100"

pytestmark = [
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"),
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn", "httptools")),
                       reason='the api extra is not installed (pip install -e ".[api]")'),
]

# A service that remembers every GET answer forever: fast, and wrong as soon as a write lands.
STALE_CACHE = '''
_answers: dict = {}
_inner = app


async def app(scope, receive, send):  # every GET answered from memory after its first time
    if scope["type"] != "http" or scope["method"] != "GET":
        return await _inner(scope, receive, send)
    key = scope["path"] + "?" + scope["query_string"].decode()
    if key in _answers:
        for message in _answers[key]:
            await send(message)
        return
    messages: list = []

    async def keep(message):
        messages.append(message)
        await send(message)

    await _inner(scope, receive, keep)
    _answers[key] = messages

'''

# A /primes that skips the sieve: fast, and wrong.
WRONG_PRIMES = '''def primes_upto(n: int) -> dict:
    return {"n": n, "count": int(n / math.log(max(n, 2))), "largest": n, "sum_mod": 0}


'''


def metric_lines(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^METRIC (\w+)=(\S+)$", text, re.M)}


def stale_cache(ctx) -> Proposal:
    text = ctx.files["app.py"].replace("\n\ndef main() -> None:", "\n" + STALE_CACHE + "\ndef main() -> None:", 1)
    assert STALE_CACHE in text
    return Proposal("answer GETs from a cache that never expires", {"app.py": text})


def wrong_primes(ctx) -> Proposal:
    text = ctx.files["app.py"]
    start, end = text.index("def primes_upto(n: int) -> dict:"), text.index("if PRIME_CACHE > 0:")
    return Proposal("approximate the primes", {"app.py": text[:start] + WRONG_PRIMES + text[end:]})


def faster(ctx) -> Proposal:
    text = ctx.files["app.py"]
    for old, new in (("ACCESS_LOG = 1", "ACCESS_LOG = 0"), ("REUSE_DB = 0", "REUSE_DB = 1"),
                     ("HTTP_PARSER = 0", "HTTP_PARSER = 1"), ("JSON_INDENT = 2", "JSON_INDENT = 0"),
                     ("PRIME_CACHE = 0", "PRIME_CACHE = 32")):
        assert old in text
        text = text.replace(old, new, 1)
    return Proposal("no access log, one connection, httptools, compact JSON, cached primes", {"app.py": text})


def small_api(tmp_path: Path, *, guard: bool) -> Path:
    root = tmp_path / "api"
    init(root, "api")
    set_toml(root, "--requests 5000 --concurrency 16", SMALL, "small load")
    set_toml(root, "baseline_runs = 3", "baseline_runs = 1", "one baseline run")
    set_toml(root, "confirm = true", "confirm = false", "no confirmation")
    if not guard:
        set_toml(root, 'guard = "env', '# guard = "env', "no guard")
    return root


def test_evaluate_loads_the_shipped_service_and_reports_its_metrics():
    res = subprocess.run([sys.executable, str(API / "evaluate.py"), "--service", str(API), *SMALL.split()],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    m = metric_lines(res.stdout)
    assert {"throughput_rps", "p50_ms", "p99_ms", "error_rate", "requests", "checked", "wrong"} <= m.keys(), res.stdout
    assert m["requests"] >= 400 and m["throughput_rps"] > 0
    assert 0 < m["p50_ms"] <= m["p99_ms"]
    assert m["error_rate"] == 0 and m["wrong"] == 0, res.stdout
    assert m["checked"] >= 20  # every endpoint before and after the load, and a sample during it
    # The METRIC lines come last: nothing the service printed can follow them.
    assert res.stdout.strip().splitlines()[-1].startswith("METRIC ")


def test_the_service_tests_pass_on_the_shipped_service():
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"], cwd=API,
                         capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\b8 passed\b", res.stdout), res.stdout


@pytest.mark.slow  # 15 s; the default suite keeps the service, its tests and its metrics
@pytest.mark.timeout(900)  # a real session: a baseline and three candidates, each loaded and checked
def test_stale_or_wrong_fast_answers_are_discarded_by_the_error_constraint(tmp_path):
    root = small_api(tmp_path, guard=False)
    s = open_session(root)
    base = s.measure_baseline()
    assert base["status"] == "baseline" and base["runs"][0]["metrics"]["error_rate"] == 0
    proposer = Scripted(s.config, [stale_cache, wrong_primes, faster])

    stale = step(s, proposer)
    assert stale["status"] == "discard", stale["reason"]
    assert "constraint violated: error_rate" in stale["reason"] and "above its maximum 0" in stale["reason"]
    assert stale["runs"][0]["metrics"]["wrong"] > 0
    log = (root / ".autoresearch" / "runs" / str(stale["id"]) / "evaluate.log").read_text()
    assert re.search(r"wrong: GET /(items|stats)/", log), log  # a read that missed the write before it

    wrong = step(s, proposer)
    assert wrong["status"] == "discard", wrong["reason"]
    assert "constraint violated: error_rate" in wrong["reason"]
    assert "wrong: GET /primes/" in (root / ".autoresearch" / "runs" / str(wrong["id"]) / "evaluate.log").read_text()

    good = step(s, proposer)  # a real speed-up holds both constraints
    assert "constraint" not in good["reason"], good["reason"]
    assert good["runs"][0]["metrics"]["error_rate"] == 0
    assert good["status"] in ("keep", "discard")
    assert_intact(root)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_stale_cache_is_rejected_by_the_guard_the_services_own_tests(tmp_path):
    root = small_api(tmp_path, guard=True)
    s = open_session(root)
    base = s.measure_baseline()
    assert base["runs"][0]["guard"]["exit_code"] == 0
    rec = step(s, Scripted(s.config, [stale_cache]))
    assert rec["status"] == "rejected", rec["reason"]
    assert "-m pytest -q -p no:cacheprovider test_app.py' exited with status 1" in rec["reason"]
    assert rec["runs"][0]["metrics"]["error_rate"] > 0  # evaluate had caught it too
    assert "test_a_stock_update_is_seen_by_the_next_reads" in \
        (root / ".autoresearch" / "runs" / str(rec["id"]) / "guard.log").read_text()
    assert_intact(root)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_init_and_a_short_run_of_the_api_template(tmp_path):
    exp = tmp_path / "myapi"
    cli = [sys.executable, "-m", "autoresearch.cli"]
    res = subprocess.run([*cli, "init", str(exp), "--template", "api"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    set_toml(exp, "--requests 5000", "--requests 1500", "shorter load")
    res = subprocess.run([*cli, "run", str(exp), "--max-experiments", "3"], capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recs = [r for r in map(json.loads, (exp / ".autoresearch" / "ledger.jsonl").read_text().splitlines())
            if r.get("kind") == "experiment"]
    assert recs[0]["status"] == "baseline" and len(recs[0]["runs"]) == 3
    assert len(recs) == 4
    for r in recs:
        for run in r.get("runs", []):
            if run.get("metrics"):
                assert {"throughput_rps", "p99_ms", "error_rate"} <= run["metrics"].keys()
    assert subprocess.run([*cli, "verify", str(exp)], capture_output=True, text=True).returncode == 0
