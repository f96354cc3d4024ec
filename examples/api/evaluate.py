"""Load-test the service and check its answers (protected: the metric comes only from here).

    python evaluate.py                          # the service staged by `run` in $AUTORESEARCH_ARTIFACTS/service
    python evaluate.py --service . --requests 2000    # the app.py beside this file, a short run

1. builds a fresh catalogue database in a private temporary folder (data.py; the same every time);
2. starts the service (`python app.py`) on a free loopback port, pinned to its own CPU cores
   where the machine has two or more, and waits for /health;
3. warms it up with an unmeasured burst, then checks every endpoint once, error cases included;
4. drives a fixed number of GET requests (items, search, stats, primes) at a fixed concurrency with
   wrk, pinned to the other cores, while a checker on its own connection sends requests that look
   the same, plus stock updates, and compares each answer with data.Reference: a wrong answer, or
   a read that misses a write just made (a stale cache), is an error;
5. checks every endpoint once more, stops the service (and anything it started), and prints
   `METRIC throughput_rps / p50_ms / p99_ms / error_rate` (and the counts behind them) last.

Nothing leaves the loopback interface, the load stops by itself after --requests (or --max-seconds),
and every process started here is killed on the way out, on an error or a SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_PRIVATE = tempfile.mkdtemp(prefix="api-eval-")
# This evaluation's own bytecode cache, made before anything is imported: nothing the service (or
# an earlier evaluation) wrote into a shared cache can stand in for data.py here.
sys.pycache_prefix = os.path.join(_PRIVATE, "pycache")
sys.path.insert(0, str(HERE))
import data  # noqa: E402

MAX_WRONG_SHOWN = 5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service", default="", help="folder holding app.py (default: $AUTORESEARCH_ARTIFACTS/service)")
    p.add_argument("--requests", type=int, default=20000, help="measured requests (fixed count)")
    p.add_argument("--concurrency", type=int, default=16, help="open connections wrk keeps busy")
    p.add_argument("--warmup", type=int, default=0, help="unmeasured requests first (default: requests/10, at least 200)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="the load stops here even if the count is not reached")
    p.add_argument("--startup-seconds", type=float, default=30.0, help="how long the service may take to answer /health")
    return p.parse_args()


def fail(msg: str) -> None:
    print(f"evaluate: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


# ---- processes -----------------------------------------------------------------------------------
_children: list[subprocess.Popen] = []


def _die_with_parent() -> None:
    """In the child: SIGKILL when the evaluator dies, however it dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def spawn(argv: list[str], *, cpus: list[int], **kw) -> subprocess.Popen:
    def pre() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(argv, preexec_fn=pre, **kw)
    _children.append(proc)
    return proc


def kill_all() -> None:
    """Every process started here, and every process they started (uvicorn's workers)."""
    import psutil

    procs: list[psutil.Process] = []
    for child in _children:
        try:
            root = psutil.Process(child.pid)
            procs += root.children(recursive=True) + [root]
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=3)
    for child in _children:
        try:
            child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    _children.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_cpus() -> tuple[list[int], list[int]]:
    """(service cores, load-generator cores): halves of the cores this process may use; with a
    single core both share it (then nothing is pinned)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [], []
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


# ---- a small HTTP/1.1 client (keep-alive, Content-Length or chunked) -----------------------------
class Conn:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        # Byte for byte what wrk sends for a GET, so the service cannot tell the checker from the load.
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        return await asyncio.wait_for(self._response(), timeout)

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.read()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body


class Checker:
    """Requests whose answers are compared with the reference; counts and the first few wrong ones."""

    def __init__(self, port: int, seed: int):
        self.conn = Conn(port)
        self.ref = data.Reference()
        self.rng = random.Random(seed)
        self.sent = 0
        self.wrong: list[str] = []

    async def check(self, method: str, path: str, body: dict | None = None) -> None:
        want_status, want = self.ref.answer(method, path, body) if method == "GET" else (None, None)
        self.sent += 1
        try:
            status, raw = await self.conn.request(method, path, body)
        except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            await self.conn.close()
            self._wrong(f"{method} {path}: no valid HTTP response ({type(e).__name__}: {e})")
            return
        if method != "GET":  # a write changes the reference only as the correct service would
            want_status, want = self.ref.answer(method, path, body)
        try:
            got = json.loads(raw)
        except ValueError:
            self._wrong(f"{method} {path}: status {status}, body is not JSON: {raw[:80]!r}")
            return
        if status != want_status or not data.same(want, got):
            self._wrong(f"{method} {path}: expected {want_status} {json.dumps(want)[:160]}, "
                        f"got {status} {json.dumps(got)[:160]}")

    def _wrong(self, what: str) -> None:
        self.wrong.append(what)

    async def coverage(self) -> None:
        """Every endpoint once, with its error cases and a read of what a write just changed."""
        ref = self.ref
        cat = data.CATEGORIES[self.rng.randrange(len(data.CATEGORIES))]
        some = self.rng.randint(1, data.N_ITEMS)
        for path in ["/health", f"/items/{some}", f"/items/{data.N_ITEMS + 1}", f"/stats/{cat}", "/stats/nosuch",
                     f"/search?category={cat}&max_price=20000&limit=7", f"/primes/{self.rng.randint(2, 5000)}",
                     "/primes/1", f"/primes/{data.MAX_PRIME_N + 1}"]:
            await self.check("GET", path)
        await self.check("POST", f"/items/{some}/stock", {"delta": -(ref.items[some]["stock"] + 1)})  # 409
        await self.check("POST", f"/items/{data.N_ITEMS + 1}/stock", {"delta": 1})  # 404
        await self.write_then_read()

    async def write_then_read(self) -> None:
        """A stock update, then the item and its category's stats: both must show it."""
        item = self.rng.randint(1, data.N_ITEMS)
        await self.check("POST", f"/items/{item}/stock", {"delta": self.rng.choice([-3, -2, -1, 1, 2, 3, 7])})
        await self.check("GET", f"/items/{item}")
        await self.check("GET", f"/stats/{self.ref.items[item]['category']}")

    async def during(self, mix: list[tuple[str, str, dict | None]], stop: asyncio.Event) -> None:
        """Until the load is over: the load's own requests at random, every fifth step a write and
        the reads that must see it; a fresh connection every 25 requests."""
        n = 0
        while not stop.is_set():
            if n % 5 == 4:
                await self.write_then_read()
            else:
                method, path, body = mix[self.rng.randrange(len(mix))]
                await self.check(method, path, body)
            n += 1
            if n % 25 == 0:
                await self.conn.close()
            await asyncio.sleep(0)


# ---- the evaluation ------------------------------------------------------------------------------
async def wait_healthy(port: int, service: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.poll() is not None:
            fail(f"the service exited with status {service.returncode} before answering /health; "
                 f"its log ends: {tail(log)}")
        conn = Conn(port)
        try:
            status, _ = await conn.request("GET", "/health", timeout=1.0)
            if status == 200:
                return
        except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
        finally:
            await conn.close()
        await asyncio.sleep(0.05)
    fail(f"the service did not answer /health within {seconds:g} s; its log ends: {tail(log)}")


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    # Shown on the evaluator's output, so a line of the service's never reads as a metric.
    return " | ".join(line.replace("METRIC", "metric")[:300] for line in text) or "(empty)"


def wrk_argv(wrk: str, port: int, paths: Path, requests: int, concurrency: int, threads: int, max_s: float) -> list[str]:
    per_thread = max(1, -(-requests // threads))
    return [wrk, "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, int(max_s))}s", "--timeout", "2s",
            "-s", str(HERE / "load.lua"), f"http://127.0.0.1:{port}", "--", str(paths), str(per_thread)]


async def run_wrk(argv: list[str], threads: int, max_s: float) -> tuple[dict, asyncio.subprocess.Process]:
    """wrk until every thread has made its share of requests (then SIGINT ends its -d sleep), or
    until --max-seconds; returns its done() summary."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                preexec_fn=_die_with_parent)
    lines: list[str] = []
    reached = 0

    async def read() -> None:
        nonlocal reached
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if line == "limit reached":
                reached += 1
                if reached == threads and proc.returncode is None:
                    proc.send_signal(signal.SIGINT)

    try:
        await asyncio.wait_for(asyncio.gather(read(), proc.wait()), max_s + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for line in reversed(lines):
        if line.startswith("{"):
            return json.loads(line), proc
    fail(f"wrk printed no summary (exit {proc.returncode}); it said: {' | '.join(lines[-3:])[:300]}")
    raise AssertionError


async def evaluate(args: argparse.Namespace) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if wrk is None:
        fail("wrk is not installed; run `python prepare.py` (it installs it with apt-get as root) or `apt-get install wrk`")
    service_dir = Path(args.service or Path(os.environ.get("AUTORESEARCH_ARTIFACTS", ".")) / "service").resolve()
    if not (service_dir / "app.py").is_file():
        fail(f"no app.py in {service_dir}; `run` (python stage.py) stages it there, or pass --service DIR")
    tmp = Path(_PRIVATE)
    db = data.build(tmp / "catalogue.db")
    mix = data.request_mix(2000)
    paths = tmp / "paths.txt"
    paths.write_text("".join(p + "\n" for _, p, _ in mix))
    server_cpus, load_cpus = split_cpus()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # the checker shares the load generator's cores
    threads = max(1, min(len(load_cpus) or 1, args.concurrency))
    port = free_port()
    log = tmp / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_") and k != "PYTHONPYCACHEPREFIX"}
    env.update(API_DB=str(db), API_PORT=str(port), API_HOST="127.0.0.1", PYTHONPYCACHEPREFIX=str(tmp / "service-pycache"),
               PYTHONUNBUFFERED="1")
    with open(log, "wb") as log_fh:  # the service's output never reaches the evaluator's (metrics are read there)
        service = spawn([sys.executable, str(service_dir / "app.py")], cpus=server_cpus, cwd=tmp, env=env,
                        stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT)
    await wait_healthy(port, service, args.startup_seconds, log)

    warm = args.warmup or max(200, args.requests // 10)
    await run_wrk(wrk_argv(wrk, port, paths, warm, args.concurrency, threads, args.max_seconds), threads, args.max_seconds)
    checker = Checker(port, seed=int(os.environ.get("AUTORESEARCH_SEED", "0")))
    await checker.coverage()

    stop = asyncio.Event()
    during = asyncio.create_task(checker.during(mix, stop))
    try:
        summary, _ = await run_wrk(wrk_argv(wrk, port, paths, args.requests, args.concurrency, threads, args.max_seconds),
                                   threads, args.max_seconds)
    finally:
        stop.set()
        await during
    await checker.coverage()
    await checker.conn.close()
    alive = service.poll() is None
    kill_all()
    if not alive:
        fail(f"the service died during the load (status {service.returncode}); its log ends: {tail(log)}")

    wrk_errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    total = summary["requests"] + checker.sent
    errors = wrk_errors + len(checker.wrong)
    seconds = summary["duration_us"] / 1e6
    for line in checker.wrong[:MAX_WRONG_SHOWN]:
        print(f"wrong: {line}")
    if len(checker.wrong) > MAX_WRONG_SHOWN:
        print(f"wrong: ... and {len(checker.wrong) - MAX_WRONG_SHOWN} more")
    if wrk_errors:
        print("wrk errors: " + ", ".join(f"{k} {summary[k]}" for k in ("connect", "read", "write", "status", "timeout") if summary[k]))
    print(f"service cores {server_cpus or 'shared'}, load cores {load_cpus or 'shared'}; "
          f"{summary['requests']} requests in {seconds:.2f} s at concurrency {args.concurrency}, "
          f"{checker.sent} checked, {len(checker.wrong)} wrong")
    return {
        "throughput_rps": summary["requests"] / seconds if seconds > 0 else 0.0,
        "p50_ms": summary["p50_us"] / 1000,
        "p90_ms": summary["p90_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "max_ms": summary["max_us"] / 1000,
        "error_rate": errors / total if total else 1.0,
        "requests": summary["requests"],
        "checked": checker.sent,
        "wrong": len(checker.wrong),
    }


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the harness's timeout: clean up, then go
    try:
        metrics = asyncio.run(evaluate(args))
    finally:
        kill_all()
        shutil.rmtree(_PRIVATE, ignore_errors=True)
    # Last, after the service is gone: these lines are the ones the harness reads.
    for name, value in metrics.items():
        print(f"METRIC {name}={value:.6g}" if isinstance(value, float) else f"METRIC {name}={value}")


if __name__ == "__main__":
    main()
