"""A scripted LLM server on 127.0.0.1 speaking the OpenAI and Anthropic wire formats.

The real `openai` and `anthropic` SDKs talk to it over real HTTP. Each request to
`/v1/chat/completions` or `/v1/messages` takes the next step of the script:
`reply(text)`, `status(code)`, `hang(seconds)`, or a callable that gets the request body and
returns one of those. A request with the wrong key gets 401 and does not consume a step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable


@dataclass
class Reply:
    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    truncated: bool = False


@dataclass
class Status:
    code: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=lambda: {"retry-after-ms": "10"})


@dataclass
class Hang:
    seconds: float


Step = Reply | Status | Hang | Callable[[dict[str, Any]], "Reply | Status | Hang"]


def reply(text: str, **kw: Any) -> Reply:
    return Reply(text, **kw)


def status(code: int, message: str = "scripted error", **headers: str) -> Status:
    return Status(code, message, headers or {"retry-after-ms": "10"})


def hang(seconds: float) -> Hang:
    return Hang(seconds)


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def _prompt_text(body: dict[str, Any]) -> str:
    parts = [body.get("system") or ""] if isinstance(body.get("system"), str) else []
    for m in body.get("messages", []):
        c = m.get("content")
        parts.append(c if isinstance(c, str) else json.dumps(c))
    return "\n".join(parts)


class ScriptedLLMServer:
    def __init__(self, *steps: Step, key: str = "test-key", default: Step | None = None):
        self.key = key
        self.script: deque[Step] = deque(steps)
        self.default = default  # used when the script runs out
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> "ScriptedLLMServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def push(self, *steps: Step) -> None:
        with self._lock:
            self.script.extend(steps)

    # -- one request --------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        anthropic = h.path.rstrip("/").endswith("/messages")
        if not (anthropic or h.path.rstrip("/").endswith("/chat/completions")):
            self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
            return
        # Anthropic's SDK sends x-api-key (older) or a bearer token (newer); OpenAI's a bearer token.
        bearer = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
        given = (h.headers.get("x-api-key") or bearer) if anthropic else bearer
        entry = {"path": h.path, "body": body, "time": time.time(), "auth_ok": given == self.key}
        with self._lock:
            self.requests.append(entry)
        if given != self.key:
            self._error(h, anthropic, Status(401, "invalid x-api-key" if anthropic else "Incorrect API key provided", {}))
            return
        with self._lock:
            step = self.script.popleft() if self.script else self.default
        if step is None:
            self._error(h, anthropic, Status(500, "script exhausted", {"x-should-retry": "false"}))
            return
        if callable(step):
            step = step(body)
        entry["step"] = type(step).__name__.lower()
        if isinstance(step, Hang):
            self._stop.wait(step.seconds)  # the client times out meanwhile; then drop the connection
            return
        if isinstance(step, Status):
            self._error(h, anthropic, step)
            return
        self._reply(h, anthropic, body, step)

    def _reply(self, h: BaseHTTPRequestHandler, anthropic: bool, body: dict[str, Any], r: Reply) -> None:
        n_in = r.input_tokens if r.input_tokens is not None else max(1, len(_prompt_text(body)) // 4)
        n_out = r.output_tokens if r.output_tokens is not None else max(1, len(r.text) // 4)
        model = body.get("model", "scripted")
        if anthropic:
            payload = {
                "id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": r.text}],
                "stop_reason": "max_tokens" if r.truncated else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": n_out},
            }
        else:
            payload = {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                             "finish_reason": "length" if r.truncated else "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
            }
        self._send(h, 200, payload)

    def _error(self, h: BaseHTTPRequestHandler, anthropic: bool, s: Status) -> None:
        kind = _ERROR_TYPES.get(s.code, "api_error")
        if anthropic:
            payload = {"type": "error", "error": {"type": kind, "message": s.message}}
        else:
            payload = {"error": {"message": s.message, "type": kind, "param": None, "code": None}}
        self._send(h, s.code, payload, s.headers)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


# --- an experiment to drive end to end ---------------------------------------------------------

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def quickstart_copy(dest: Path, proposer_toml: str, baseline_runs: int = 1) -> Path:
    """examples/quickstart committed in its own git repo at DEST, with [proposer] replaced."""
    shutil.copytree(QUICKSTART, dest, ignore=shutil.ignore_patterns(".autoresearch", "__pycache__", "*.npy", "*.npz"))
    toml = (dest / "autoresearch.toml").read_text()
    toml = re.sub(r"\[proposer\].*", "[proposer]\n" + proposer_toml.strip() + "\n", toml, flags=re.DOTALL)
    toml = re.sub(r"baseline_runs = \d+", f"baseline_runs = {baseline_runs}", toml)
    (dest / "autoresearch.toml").write_text(toml)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env = {**os.environ, **env}
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "quickstart"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True, env=env)
    return dest


def current_file(body: dict[str, Any], path: str) -> str:
    """The text of an editable file as the prompt (first user message) shows it."""
    first = next(m["content"] for m in body["messages"] if m["role"] == "user")
    m = re.search(r"^## " + re.escape(path) + r"\n(`{3,})\w*\n(.*?)^\1$", first, flags=re.DOTALL | re.MULTILINE)
    if not m:
        raise AssertionError(f"{path} not in the prompt")
    return m.group(2)


def knob_edit(body: dict[str, Any], name: str, factor: float, path: str = "train.py") -> str:
    """A search/replace reply that scales the knob NAME of the current file by FACTOR."""
    text = current_file(body, path)
    line = next(ln for ln in text.splitlines() if re.match(rf"{name}\s*=", ln))
    value = re.match(rf"{name}\s*=\s*([-0-9.e]+)", line).group(1)
    new = float(value) * factor
    new_text = str(int(round(new))) if re.fullmatch(r"-?\d+", value) else f"{new:.6g}"
    new_line = line.replace(value, new_text, 1)
    return f"DESCRIPTION: {name} {value} -> {new_text}\n\n{path}\n<<<<<<< SEARCH\n{line}\n=======\n{new_line}\n>>>>>>> REPLACE\n"
