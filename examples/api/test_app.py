"""The service's own tests (protected; the guard runs them on each candidate's code as committed).

They start app.py as it stands, with its knobs, on a free loopback port over a fresh catalogue,
and check every endpoint against data.Reference with plain HTTP (urllib): values, ordering, error
statuses, and that a read sees the write made just before it.

    python -m pytest -q test_app.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    db = data.build(tmp / "catalogue.db")
    port = _free_port()
    env = {**os.environ, "API_DB": str(db), "API_PORT": str(port), "API_HOST": "127.0.0.1"}
    log = open(tmp / "service.log", "wb")
    proc = subprocess.Popen([sys.executable, str(HERE / "app.py")], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with status {proc.returncode}: {(tmp / 'service.log').read_text()[-500:]}")
            try:
                if get(base, "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("app.py did not answer /health within 30 s")
            time.sleep(0.05)
        yield base, data.Reference()
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def call(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, object, str]:
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={} if body is None else {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get("content-type", "")


def get(base: str, path: str) -> tuple[int, object]:
    status, body, _ = call(base, "GET", path)
    return status, body


def expect(service, method: str, path: str, body: dict | None = None) -> object:
    base, ref = service
    status, got, ctype = call(base, method, path, body)
    want_status, want = ref.answer(method, path, body)
    assert (status, ctype.split(";")[0]) == (want_status, "application/json"), (method, path, status, got)
    assert data.same(want, got), f"{method} {path}: expected {want}, got {got}"
    return got


def test_health_answers(service):
    expect(service, "GET", "/health")


def test_items_are_served_as_stored_and_unknown_ones_are_404(service):
    for item_id in (1, 2, 1234, data.N_ITEMS):
        expect(service, "GET", f"/items/{item_id}")
    expect(service, "GET", f"/items/{data.N_ITEMS + 1}")


def test_search_filters_orders_by_price_and_limits(service):
    got = expect(service, "GET", "/search?category=books&max_price=30000&limit=12")
    prices = [it["price_cents"] for it in got["items"]]
    assert prices == sorted(prices) and len(prices) == 12 and max(prices) <= 30000
    expect(service, "GET", "/search?category=toys&max_price=150&limit=5")  # few or none under that price
    assert get(service[0], "/search?category=toys")[0] == 400
    assert len(get(service[0], "/search?category=toys&max_price=99999&limit=500")[1]["items"]) == 50


def test_stats_aggregate_a_category_and_unknown_ones_are_404(service):
    for cat in ("garden", "music", "travel"):
        expect(service, "GET", f"/stats/{cat}")
    expect(service, "GET", "/stats/nosuch")


def test_a_stock_update_is_seen_by_the_next_reads(service):
    item = 77
    cat = service[1].items[item]["category"]
    expect(service, "GET", f"/items/{item}")
    expect(service, "GET", f"/stats/{cat}")
    for delta in (5, -2, 11):
        expect(service, "POST", f"/items/{item}/stock", {"delta": delta})
        expect(service, "GET", f"/items/{item}")
        expect(service, "GET", f"/stats/{cat}")


def test_a_stock_update_below_zero_is_refused_and_changes_nothing(service):
    item = 78
    stock = service[1].items[item]["stock"]
    expect(service, "POST", f"/items/{item}/stock", {"delta": -(stock + 1)})  # 409
    expect(service, "GET", f"/items/{item}")
    expect(service, "POST", f"/items/{data.N_ITEMS + 5}/stock", {"delta": 1})  # 404
    assert call(service[0], "POST", f"/items/{item}/stock", {"nodelta": 1})[0] == 400


def test_primes_are_counted_summed_and_bounded(service):
    assert get(service[0], "/primes/10")[1] == {"n": 10, "count": 4, "largest": 7, "sum_mod": 17}
    for n in (1, 2, 97, 10_000, 19_997, data.MAX_PRIME_N):
        expect(service, "GET", f"/primes/{n}")
    expect(service, "GET", f"/primes/{data.MAX_PRIME_N + 1}")
    assert get(service[0], "/primes/0")[0] == 400


def test_concurrent_reads_all_get_right_answers(service):
    mix = data.request_mix(120, seed=7)
    base, ref = service
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: (r, call(base, r[0], r[1])), mix))
    for (method, path, _), (status, got, _) in results:
        want_status, want = ref.answer(method, path)
        assert status == want_status and data.same(want, got), f"{path}: expected {want}, got {got}"
