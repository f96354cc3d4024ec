"""The dashboard: served on loopback, read-only, live over server-sent events; the static report is the same page.

Runs are built with the real loop (kept, discarded and crashed experiments); HTTP is real, on 127.0.0.1.
The browser test drives Debian's chromium through playwright and is marked slow.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autoresearch.dashboard import make_server
from autoresearch.errors import UserError
from autoresearch.loop import step

from builders import Scripted, assert_clean_exit, build_run, open_session
from conftest import cli, make_experiment

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def snapshot(state: Path) -> dict[str, str]:
    """sha256 of the ledger and of every file under runs/: what a read-only reader must leave alone."""
    files = [state / "ledger.jsonl", *sorted(p for p in (state / "runs").rglob("*") if p.is_file())]
    return {str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


class Served:
    def __init__(self, root: Path):
        self.server = make_server(root, 0)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.url = self.server.url

    def get(self, path: str, headers: dict | None = None, timeout: float = 20):
        req = urllib.request.Request(self.url + path.lstrip("/"), headers=headers or {})
        return urllib.request.urlopen(req, timeout=timeout)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def served():
    opened = []

    def start(root: Path) -> Served:
        opened.append(Served(root))
        return opened[-1]

    yield start
    for s in opened:
        s.close()


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert m, "the page carries its records as JSON"
    return json.loads(m.group(1))


def read_events(resp, count: int) -> list[tuple[str, str, dict]]:
    """(event, id, data) of the next `count` events; the socket timeout bounds each read."""
    events, fields = [], {}
    while len(events) < count:
        line = resp.readline()
        assert line, "the stream ended early"
        line = line.decode("utf-8").rstrip("\n")
        if not line:
            if "data" in fields:
                events.append((fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])))
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value
    return events


def test_the_page_and_its_api_show_the_run_and_leave_every_file_untouched(tmp_path, served):
    root = tmp_path / "exp"
    build_run(root)
    state = root / ".autoresearch"
    before = snapshot(state)
    srv = served(root)
    resp = srv.get("/")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
    page = resp.read().decode("utf-8")
    data = page_data(page)
    assert [r["status"] for r in data["records"]] == ["baseline", "keep", "discard", "crash"]
    assert data["meta"]["live"] is True and data["meta"]["metric"] == "score"
    assert data["meta"]["offset"] == (state / "ledger.jsonl").stat().st_size
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # works offline
    detail = json.load(srv.get("/api/experiment/2"))
    assert "+X = 2.5" in detail["diff"] and detail["logs"][0]["name"] == "run.log"
    crash = json.load(srv.get("/api/experiment/3"))
    assert any("SyntaxError" in log["tail"] for log in crash["logs"])
    imp = json.load(srv.get("/api/importances"))
    assert imp["trials"] == 2 and imp["method"]
    # The whole stream from the start: every experiment, each with the byte offset after it as its id.
    with srv.get("/events?offset=0") as stream:
        events = read_events(stream, 4)
    named = [e for e in events if e[0] == "experiment"]
    assert [e[2]["id"] for e in named] == [0, 1, 2, 3]
    assert int(named[-1][1]) == data["meta"]["offset"]
    with pytest.raises(urllib.error.HTTPError) as err:
        srv.get("/api/experiment/../../ledger.jsonl")
    assert err.value.code == 404
    srv.close()
    assert snapshot(state) == before


@pytest.mark.slow  # 8 s: a live stream while a run goes on
def test_a_new_experiment_reaches_an_open_event_stream(tmp_path, served):
    root = tmp_path / "exp"
    s = build_run(root)
    srv = served(root)
    offset = page_data(srv.get("/").read().decode("utf-8"))["meta"]["offset"]
    with srv.get(f"/events?offset={offset}") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert stream.readline().startswith(b"retry:")
        step(s, Scripted(s.config, [1.5]))  # through the real loop, while the stream is open
        (event, ident, rec), = read_events(stream, 1)
    assert event == "experiment" and rec["id"] == 4 and rec["status"] == "keep"
    assert rec["params"] == {"X": 1.5} and int(ident) == (root / ".autoresearch/ledger.jsonl").stat().st_size
    # A client that reconnects says where it was; it gets nothing twice.
    with srv.get("/events", headers={"Last-Event-ID": ident}, timeout=5) as stream:
        assert stream.readline().startswith(b"retry:")
        stream.readline()
        with pytest.raises(TimeoutError):
            stream.readline()  # nothing new: the read times out instead of repeating experiment 4


def test_the_dashboard_answers_only_to_its_own_host_names(tmp_path, served):
    root = tmp_path / "exp"
    make_experiment(root)
    open_session(root).measure_baseline()
    srv = served(root)
    assert srv.server.server_address[0] == "127.0.0.1"
    with pytest.raises(urllib.error.HTTPError) as err:
        srv.get("/", headers={"Host": "attacker.example"})  # what a DNS-rebinding page would send
    assert err.value.code == 403
    assert srv.get("/", headers={"Host": f"localhost:{srv.server.server_address[1]}"}).status == 200


def test_a_folder_without_a_run_or_a_busy_port_is_one_sentence(tmp_path):
    root = make_experiment(tmp_path / "exp")
    assert_clean_exit(cli("dashboard", root, "--port", "0"), 2)
    open_session(root).measure_baseline()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="pick another port"):
            make_server(root, busy.getsockname()[1])


def test_the_dashboard_command_prints_its_address_serves_and_stops_cleanly_on_ctrl_c(tmp_path):
    root = tmp_path / "exp"
    make_experiment(root)
    open_session(root).measure_baseline()
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "dashboard", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        page = urllib.request.urlopen(url, timeout=20).read().decode("utf-8")
        assert page_data(page)["records"][0]["status"] == "baseline"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err, err


@pytest.mark.slow  # 8 s: a whole run, then the report
def test_report_writes_one_self_contained_page_with_diffs_and_logs(tmp_path):
    root = tmp_path / "exp"
    build_run(root)
    res = cli("report", root)
    assert_clean_exit(res, 0)
    state = root / ".autoresearch"
    assert (state / "progress.png").read_bytes().startswith(b"\x89PNG")
    page = (state / "report.html").read_text(encoding="utf-8")
    data = page_data(page)
    assert data["meta"]["live"] is False and len(data["records"]) == 4
    assert "+X = 2.5" in data["details"]["2"]["diff"]
    assert any("SyntaxError" in log["tail"] for log in data["details"]["3"]["logs"])
    assert data["importances"]["importances"].keys() == {"X"}
    assert "http://" not in page and "https://" not in page and "<script src" not in page and "<link href" not in page


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_page_in_headless_chromium_shows_the_run_and_a_new_experiment_without_a_reload(tmp_path, served):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")
    root = tmp_path / "exp"
    s = build_run(root)
    state = root / ".autoresearch"
    before = snapshot(state)
    srv = served(root)
    shot = tmp_path / "dashboard.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(30_000)
            page.goto(srv.url)
            page.wait_for_selector("body[data-records='4']")
            page.wait_for_selector("#live.on")
            text = page.inner_text("body")
            assert "experiments: 3 (1 keep, 1 discard, 1 crash)" in text
            assert "lineage of kept commits" in text and "which knobs mattered" in text
            assert page.locator("#chart-svg circle.kept").count() == 1 and page.locator("#chart-svg .fail").count() == 1
            assert page.locator("#chart-svg #best-line").count() == 1 and page.locator("#chart-svg #band").count() == 1
            assert page.locator("#rows tr").count() == 4
            page.click(".chip[data-status='crash']")  # the status filter
            assert page.locator("#rows tr").count() == 1
            page.click(".chip[data-status='']")
            page.click("#rows tr[data-id='3']")
            page.wait_for_selector("#detail pre.log")
            assert "SyntaxError" in page.inner_text("#detail") and "+X = oops(" in page.inner_text("#detail pre.diff")
            page.click("#close")
            assert snapshot(state) == before  # a dashboard session writes nothing
            page.evaluate("window.sameDocument = true")  # gone if the page reloads
            step(s, Scripted(s.config, [1.5]))  # a new keep lands while the page is open: the chart is redrawn
            page.wait_for_selector("#rows tr[data-id='4']")
            assert page.locator("#chart-svg circle.kept").count() == 2
            assert "experiments: 4 (2 keep, 1 discard, 1 crash)" in page.inner_text("#summary")
            step(s, Scripted(s.config, [2.9]))  # a discard: its point is added to the chart as drawn
            page.wait_for_selector("#rows tr[data-id='5']")
            assert page.locator("#chart-svg #points [data-id='5']").count() == 1
            assert "experiments: 5 (2 keep, 2 discard, 1 crash)" in page.inner_text("#summary")
            assert page.evaluate("window.sameDocument === true")
            # Optuna's answer is asked for again once records stop arriving for a few seconds.
            page.wait_for_function("document.querySelector('#importance').textContent.includes('over 4 measured')")
            assert page.locator("#slices circle").count() == 4
            page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert shot.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot: {shot}")
