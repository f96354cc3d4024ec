"""`autoresearch dashboard`: the run's page, served on 127.0.0.1 and updated live as experiments land.

Read-only: it opens the ledger and runs/ for reading and never writes a byte (tests check). The
page is report.py's, with the records as of the request; new records reach it over server-sent
events: the `/events` stream watches the ledger file and sends each complete new line.

Routes: `/` the page, `/events?offset=N` the stream from byte N, `/api/experiment/<id>` one
experiment's diff and log tails, `/api/importances` Optuna's knob importances now.
Standard library only (http.server), one thread per connection.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from .errors import UserError
from .ledger import LEDGER_NAME
from .workspace import STATE_DIR

HOST = "127.0.0.1"  # loopback only: the page shows code and logs
DEFAULT_PORT = 8765
POLL_S = 0.1  # how often an open stream looks at the ledger's size
PING_S = 15.0  # a comment line this often finds closed connections and keeps proxies from timing out


def read_complete(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The records on complete lines from byte `offset`, and the offset after the last one. A line
    still being written (no newline yet) waits for the next read; a damaged one is skipped here
    (`autoresearch verify` is the judge of damage)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    cut = data.rfind(b"\n") + 1
    records = []
    for line in data[:cut].splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records, offset + cut


class Dashboard:
    """What the handlers read. Keeps each record as page JSON, and on every request reads only the
    lines added since (all of them after the file was replaced), so a 10,000-experiment page is not
    re-parsed per load and is never staler than the ledger."""

    def __init__(self, root: Path) -> None:
        self.state_dir = Path(root) / STATE_DIR
        self.ledger_path = self.state_dir / LEDGER_NAME
        if not self.ledger_path.is_file():
            raise UserError(f"{self.ledger_path} not found; start a run with `autoresearch run {root}` first")
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._ident: tuple[int, int] | None = None
        self._header: dict[str, Any] = {}
        self._records: list[dict[str, Any]] = []  # page records (report.page_record), oldest first
        self._json: list[str] = []  # the same, as JSON
        self._offset = 0
        self._importances: tuple[int, dict[str, Any] | None] | None = None
        self._refresh()

    def _refresh(self) -> None:
        from .report import page_json, page_record

        ident = _identity(self.ledger_path)
        if ident is None:
            return
        if self._ident is not None and (ident[0] != self._ident[0] or ident[1] < self._offset):
            self._header, self._records, self._json, self._offset = {}, [], [], 0  # archived; a new run began
        if ident[1] > self._offset:
            records, self._offset = read_complete(self.ledger_path, self._offset)
            for rec in records:
                if rec.get("kind") == "start" and not self._header:
                    self._header = rec
                elif rec.get("kind") == "experiment":
                    self._records.append(page_record(rec))
                    self._json.append(page_json(self._records[-1]))
        self._ident = ident

    def page(self) -> str:
        from .report import render_page

        with self._lock:
            self._refresh()
            header, records_json, offset = self._header, list(self._json), self._offset
        # Importances come separately (/api/importances), so Optuna never delays the first paint.
        return render_page([], header, live=True, offset=offset, records_json=records_json)

    def importances(self) -> dict[str, Any] | None:
        """Optuna's importances as of the ledger now, computed once per ledger state for every open page."""
        from .report import param_importances

        with self._lock:
            self._refresh()
            if self._importances is not None and self._importances[0] == self._offset:
                return self._importances[1]
            records, goal, offset = list(self._records), str(self._header.get("goal", "minimize")), self._offset
        value = param_importances(records, goal)  # outside the lock: pages load meanwhile
        with self._lock:
            self._importances = (offset, value)
        return value


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the terminal is the user's
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        # A web page elsewhere can reach loopback through DNS rebinding; only our own host names are served.
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            return self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", "text/plain")
        url = urlsplit(self.path)
        dash = self.server.dashboard
        try:
            if url.path in ("/", "/index.html"):
                return self._send(HTTPStatus.OK, dash.page().encode("utf-8"), "text/html; charset=utf-8")
            if url.path == "/events":
                return self._events(url.query)
            if url.path.startswith("/api/experiment/"):
                from .report import experiment_files

                tail = url.path.rsplit("/", 1)[1]
                if not tail.isdigit():
                    return self._send(HTTPStatus.NOT_FOUND, b"no such experiment\n", "text/plain")
                return self._json(experiment_files(dash.state_dir, int(tail)))
            if url.path == "/api/importances":
                return self._json(dash.importances())
        except (BrokenPipeError, ConnectionResetError):
            return
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: Any) -> None:
        from .report import page_json

        self._send(HTTPStatus.OK, page_json(payload).encode("utf-8"), "application/json")

    def _events(self, query: str) -> None:
        from .report import page_json, page_record

        dash = self.server.dashboard
        args = parse_qs(query)
        # A reconnecting EventSource sends the id of the last event it got: the byte offset after it.
        start = self.headers.get("Last-Event-ID") or (args.get("offset") or ["0"])[0]
        offset = int(start) if start.isdigit() else 0
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(b"retry: 1000\n\n")
        self.wfile.flush()
        ident, last_sent = _identity(dash.ledger_path), time.monotonic()
        while not dash.stopping.is_set():
            now_ident = _identity(dash.ledger_path)
            size = now_ident[1] if now_ident else 0
            if now_ident and ident and (now_ident[0] != ident[0] or size < offset):
                self.wfile.write(b"event: reset\ndata: {}\n\n")  # archived and started afresh: reload
                self.wfile.flush()
                return
            ident = now_ident or ident
            if size > offset:
                records, new_offset = read_complete(dash.ledger_path, offset)
                chunks = [f"event: experiment\nid: {new_offset}\ndata: {page_json(page_record(r))}\n\n"
                          for r in records if r.get("kind") == "experiment"]
                if new_offset > offset and not chunks:
                    chunks = [f"id: {new_offset}\ndata: {{}}\n\n"]  # a non-experiment line: move the client's offset on
                if chunks:
                    self.wfile.write("".join(chunks).encode("utf-8"))
                    self.wfile.flush()
                    last_sent = time.monotonic()
                offset = new_offset
            if time.monotonic() - last_sent > PING_S:
                self.wfile.write(b": ping\n\n")
                self.wfile.flush()
                last_sent = time.monotonic()
            dash.stopping.wait(POLL_S)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream must not keep the process alive after Ctrl-C

    def __init__(self, dashboard: Dashboard, port: int) -> None:
        self.dashboard = dashboard
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as err:
            raise UserError(f"cannot listen on {HOST}:{port} ({err.strerror}); pick another port with --port") from None
        # Importing Optuna takes seconds on a busy machine: do it now, before the first page asks.
        threading.Thread(target=dashboard.importances, daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that navigates away mid-answer is normal; anything else is one line, not a traceback.
        err = sys.exc_info()[1]
        if not isinstance(err, ConnectionError):
            print(f"dashboard: a request failed ({type(err).__name__}: {err})", file=sys.stderr)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def server_close(self) -> None:
        self.dashboard.stopping.set()  # ends the event streams' loops
        super().server_close()


def make_server(root: Path, port: int = DEFAULT_PORT) -> DashboardServer:
    """A server bound to 127.0.0.1:port (0: any free port), not yet serving."""
    return DashboardServer(Dashboard(root), port)


def serve(root: Path, port: int = DEFAULT_PORT, announce: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C."""
    server = make_server(root, port)
    announce(f"dashboard of {Path(root) / STATE_DIR / LEDGER_NAME} on {server.url} (read-only; Ctrl-C stops)")
    sys.stdout.flush()  # the URL must reach a pipe (a script waiting for it) before the first request
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
