"""`autoresearch drive`: agent-driven mode with the harness, not the agent, in charge.

The harness alone holds the signing key, the ledger and the config. It measures the baseline if
there is none, then starts the agent's command confined (as the `agent` proposer is: see
`proposers.agent.confinement`) in the run's worktree, with a Unix socket bound into the sandbox
and its path in `AUTORESEARCH_SOCKET`. Inside, `autoresearch try/status/log/show` (and the MCP
server, `autoresearch mcp`) send one request per connection over that socket, and the harness
answers by calling the same library functions as the unconfined commands. Requests are served one
at a time, in the harness's main thread (Ctrl-C reaches a running experiment there); the agent
runs in a thread of its own that waits for it. When the agent exits, drive stops.

Protocol: one JSON line in, one JSON line out, then the harness closes the connection.
  {"op": "try", "description": "..."}       -> {"ok": true, "output": "keep: experiment 3 ...", "record": {...}}
  {"op": "status", "last": 10}               -> {"ok": true, "output": "..."}
  {"op": "log", "status": null}              -> {"ok": true, "output": "..."}
  {"op": "show", "id": 3, "lines": 30}       -> {"ok": true, "output": "..."}
  anything refused                           -> {"ok": false, "error": "one sentence"}
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .record import ADVANCES_BEST

SOCKET_ENV = "AUTORESEARCH_SOCKET"
MAX_REQUEST_BYTES = 64 * 1024  # a description is a sentence or two, not a file
MAX_DESCRIPTION_CHARS = 2000
READ_TIMEOUT_S = 30.0  # a client that connects and says nothing is dropped
DEFAULT_MAX_TIME_S = 30 * 86400.0


def verdict_line(rec: dict[str, Any]) -> str:
    """The one line `autoresearch try` prints, wherever it ran."""
    value, best = rec.get("metric"), rec.get("best")
    shown = f"{value:.6g}" if isinstance(value, (int, float)) else "n/a"
    best_s = f"{best:.6g}" if isinstance(best, (int, float)) else "n/a"
    return f"{rec['status']}: experiment {rec['id']} metric {shown} (best {best_s}) — {rec.get('reason', '')}"


# ---- the agent's side ------------------------------------------------------------------------------


def under_drive() -> bool:
    """Whether this process runs inside an agent that `autoresearch drive` started."""
    return bool(os.environ.get(SOCKET_ENV))


def request(op: str, **args: Any) -> dict[str, Any]:
    """Send one request to the harness that started this agent; UserError when it refuses."""
    path = os.environ.get(SOCKET_ENV, "")
    if not path:
        raise UserError(f"{SOCKET_ENV} is not set; this runs inside an agent started by `autoresearch drive`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as err:
            raise UserError(f"cannot reach the harness at {path} ({err.strerror or err}); is `autoresearch drive` still running?") from None
    try:
        reply = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise UserError(f"the harness at {path} closed the connection without an answer; see the terminal running `autoresearch drive`")
    if not reply.get("ok"):
        raise UserError(str(reply.get("error") or "the harness refused the request"))
    return reply


# ---- the harness's side ----------------------------------------------------------------------------


@dataclass
class DriveSummary:
    tag: str
    experiments: int  # recorded while the agent ran
    kept: int
    best: float | None
    baseline: float | None
    agent_exit: int | None  # None: timed out or stopped
    confined: bool
    log: Path


class Harness:
    """Answers the agent's requests with the library's own functions, one at a time."""

    def __init__(self, root: Path, checkout: Path, progress, proposal: dict[str, Any]):
        self.root = root
        self.checkout = checkout
        self.progress = progress
        self.proposal = proposal  # how the agent is confined; goes into every record it causes

    def handle(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw)
        except ValueError:
            return {"ok": False, "error": "the request is not JSON; send one JSON object on one line"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "the request is not a JSON object"}
        op = req.get("op")
        try:
            if op == "try":
                return self._try(req.get("description"))
            if op == "status":
                from .views import print_status

                return self._captured(print_status, self.root, last=_int(req.get("last"), 10))
            if op == "log":
                from .views import print_log

                status = req.get("status")
                return self._captured(print_log, self.root, status if isinstance(status, str) else None)
            if op == "show":
                from .views import print_experiment

                if not isinstance(req.get("id"), int) or isinstance(req.get("id"), bool):
                    return {"ok": False, "error": "show needs an experiment number, e.g. {\"op\": \"show\", \"id\": 3}"}
                return self._captured(print_experiment, self.root, req["id"], _int(req.get("lines"), 30))
        except UserError as err:
            return {"ok": False, "error": str(err)}
        return {"ok": False, "error": f"unknown request {op!r}; use try, status, log or show"}

    def _try(self, description: Any) -> dict[str, Any]:
        from .trymode import try_change

        if not isinstance(description, str) or not description.strip():
            return {"ok": False, "error": "give a description of the change with -m \"what you tried\""}
        rec = try_change(self.checkout, description[:MAX_DESCRIPTION_CHARS], progress=self.progress,
                         proposal=dict(self.proposal))
        keys = ("id", "status", "reason", "metric", "best", "delta", "description")
        return {"ok": True, "output": verdict_line(rec), "record": {k: rec.get(k) for k in keys}}

    @staticmethod
    def _captured(fn: Callable[..., None], *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            fn(*args, **kwargs)
        return {"ok": True, "output": out.getvalue()}


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 10000 else default


def _read_request(conn: socket.socket) -> bytes | None:
    conn.settimeout(READ_TIMEOUT_S)
    data = b""
    try:
        while b"\n" not in data and len(data) <= MAX_REQUEST_BYTES:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    if len(data) > MAX_REQUEST_BYTES:
        return None
    return data.split(b"\n", 1)[0]


def drive(root: Path, command: list[str], *, progress, max_time: float | None = None,
          echo: Callable[[str], None] | None = None) -> DriveSummary:
    """Run the agent COMMAND confined in ROOT's run worktree until it exits; serve its requests."""
    from .loop import Session, Stop
    from .proposers.agent import agent_kind, confinement, is_confined, not_enforced_text
    from .runner import experiment_env, kill_group, run_process

    if not command:
        raise UserError("give the agent's command after --, e.g. `autoresearch drive myexp -- claude -p \"$(cat prompt.md)\"`")
    _sigterm_as_interrupt()
    session = Session(Path(root), progress=progress)
    with session.locked():
        session.open()
        if not session.has_baseline():
            session.measure_baseline()
        session.ws.reset()
    n_before = len(session.ledger.experiments())
    exp_dir = session.ws.exp_dir
    line = shlex.join(command)
    drive_dir = session.ws.state / "drive"
    drive_dir.mkdir(parents=True, exist_ok=True)
    log_path = drive_dir / f"agent-{time.strftime('%Y%m%d-%H%M%S')}.log"
    sock_dir = Path(tempfile.mkdtemp(prefix="autoresearch-drive-"))
    sock_path = sock_dir / "harness.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(8)
    server.settimeout(0.2)
    env = experiment_env()  # the harness's Python first on PATH: `autoresearch` inside is this one
    env[SOCKET_ENV] = str(sock_path)
    state: dict[str, Any] = {}
    agent = agent_kind(line)
    try:
        # The socket's folder is read-only inside: the agent can connect, not replace it.
        with confinement(session.config, root=session.root, exp_dir=exp_dir, editable=session.editable,
                         scratch=drive_dir / "scratch", agent=agent, command=line, readonly=[sock_dir]) as spec:
            from .sandbox import prepare

            probe = prepare(spec, "true", {})  # what will hold, known before the agent starts
            probe.cleanup()
            confined = is_confined(probe.mode, probe.enforced)
            proposal: dict[str, Any] = {"confined": confined, "sandbox": probe.mode, "via": "drive", "agent": agent}
            if not confined:
                proposal["not_enforced"] = not_enforced_text(probe.mode, fell_back=bool(probe.warning))
                progress.warn(proposal["not_enforced"])
            harness = Harness(session.root, exp_dir, progress, proposal)

            def run_agent() -> None:
                # This thread outlives the agent (bwrap --die-with-parent watches it).
                state["result"] = run_process(
                    line, cwd=exp_dir, env=env, timeout=max_time or DEFAULT_MAX_TIME_S, log_path=log_path,
                    sandbox=spec, on_start=lambda pgid: state.__setitem__("pgid", pgid), on_line=echo)

            progress.info(f"agent: {line} (in {exp_dir}; output in {log_path})")
            worker = threading.Thread(target=run_agent, name="autoresearch-agent")
            worker.start()
            try:
                while worker.is_alive():
                    try:
                        conn, _ = server.accept()
                    except socket.timeout:
                        continue
                    with conn:
                        raw = _read_request(conn)
                        try:
                            reply = harness.handle(raw) if raw is not None else {"ok": False, "error": "request too long or never finished"}
                        except Stop:
                            raise
                        except Exception as err:  # a harness bug: say so to both sides, keep serving
                            reply = {"ok": False, "error": f"the harness failed on this request ({type(err).__name__}: {err}); see its terminal"}
                            progress.warn(f"a request from the agent failed: {type(err).__name__}: {err}")
                        try:
                            conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
                        except OSError:
                            pass  # the agent hung up; its experiment is recorded all the same
            except (KeyboardInterrupt, Stop):
                progress.warn("stopping: the agent is killed; run `autoresearch drive` again to go on")
                if state.get("pgid"):
                    kill_group(state["pgid"], grace=1.0)
            finally:
                if worker.is_alive() and state.get("pgid"):
                    worker.join(timeout=0.5)
                    if worker.is_alive():
                        kill_group(state["pgid"], grace=1.0)
                worker.join()
    finally:
        server.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    res = state.get("result")
    from .ledger import Ledger

    recs = Ledger(session.ws.state).experiments()  # written by the try requests' own sessions
    mine = recs[n_before:]
    best = next((r["metric"] for r in reversed(recs) if r["status"] in ADVANCES_BEST), None)
    base = next((r["metric"] for r in recs if r["status"] == "baseline"), None)
    code = None if res is None or res.timed_out or res.interrupted else res.exit_code
    return DriveSummary(session.tag or "", len(mine), sum(r["status"] == "keep" for r in mine), best, base, code,
                        bool(proposal.get("confined")), log_path)


def _sigterm_as_interrupt() -> None:
    """`kill` sends SIGTERM: stop as cleanly as on Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)
