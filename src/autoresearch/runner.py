"""One experiment process: environment, budget, hard timeout, kill, log, resources.

The runner is the only part of autoresearch that starts experiment processes. Each runs in its own
session and process group, so the whole tree (grandchildren included) can be killed at the timeout,
on Ctrl-C, or when the harness itself dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psutil

if TYPE_CHECKING:  # pragma: no cover
    from .sandbox import SandboxSpec

KILL_GRACE_S = 3.0  # SIGTERM first, SIGKILL this long after
TAIL_LINES = 50


@dataclass
class ProcessResult:
    command: str
    exit_code: int | None
    wall_s: float
    peak_rss_mb: float
    log_path: Path
    output: str  # captured output (head and tail when capped), for reading metrics
    timed_out: bool = False
    interrupted: bool = False  # Ctrl-C reached the harness while this ran
    stopped: str = ""  # why the harness stopped it early (a prune rule fired), else empty
    output_bytes: int = 0
    truncated: bool = False
    start: float = 0.0
    end: float = 0.0
    sandbox: str = "none"
    sandbox_warning: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.interrupted and not self.stopped

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


class _CappedLog:
    """Writes output to a file, keeping the first half of the cap and a rolling tail of the rest."""

    def __init__(self, path: Path, cap_bytes: int):
        self.path = path
        self.head_cap = max(cap_bytes // 2, 1)
        self.tail_cap = max(cap_bytes - self.head_cap, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.file = open(path, "wb")

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_cap - len(self.head)
        if room > 0:
            part = chunk[:room]
            self.head += part
            self.file.write(part)
            self.file.flush()
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_cap:  # trim in bulk: amortised O(1) per byte
                del self.tail[: len(self.tail) - self.tail_cap]

    def close(self) -> tuple[str, bool]:
        if len(self.tail) > self.tail_cap:
            del self.tail[: len(self.tail) - self.tail_cap]
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped > 0:
            self.file.write(f"\n[autoresearch: {dropped} bytes of output dropped; the tail follows]\n".encode())
        self.file.write(self.tail)
        self.file.close()
        text = (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace").replace("\x00", "")
        return text, dropped > 0


def _die_with_parent() -> None:
    """Linux: the experiment's top process gets SIGKILL if the harness dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def kill_group(pgid: int, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # zombies count as dead
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def experiment_env(base: dict[str, str] | None = None, **contract: str | int | float) -> dict[str, str]:
    """The environment of the experiment contract: AUTORESEARCH_* variables, unbuffered Python, and
    the harness's own interpreter first on PATH so `python` means the same Python."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in contract.items():
        env[f"AUTORESEARCH_{key.upper()}"] = str(value)
    return env


def _last_line(chunk: bytes) -> str:
    """The last non-blank line of a chunk; a carriage return (a progress bar) starts a new line."""
    for raw in reversed(chunk.replace(b"\r", b"\n").split(b"\n")):
        text = raw.decode("utf-8", errors="replace").strip()
        if text:
            return text
    return ""


def run_process(
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    log_path: Path,
    max_log_bytes: int = 10 * 1024 * 1024,
    sandbox: "SandboxSpec | None" = None,
    on_start: Callable[[int], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    watch: Callable[[str], str | None] | None = None,
    cpus: list[int] | None = None,
    cancel: threading.Event | None = None,
) -> ProcessResult:
    """Run the shell line `command`, confined as `sandbox` says, to completion or timeout.

    `on_start(pgid)` lets the caller note the process group, so a restarted harness can kill a tree
    left behind by a crash. `on_line(text)` gets the last line of each chunk of output as it
    arrives (for a live status line; it runs on the reader thread and must be quick). `watch(line)`
    gets every complete line; when it returns a reason, the group is stopped and the result carries
    it in `stopped`. `cpus`: the cores the process (and all it starts) may run on (a worker's share).
    `cancel`: set from another thread (the coordinator's Ctrl-C) it kills the group like Ctrl-C.
    Ctrl-C kills the group and returns `interrupted=True` rather than raising.
    """
    from .sandbox import SandboxSpec, prepare

    prepared = prepare(sandbox or SandboxSpec(mode="none", workdir=cwd), command, env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = _CappedLog(log_path, max_log_bytes)

    def _pre() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)
        if prepared.preexec_fn is not None:
            prepared.preexec_fn()

    start_wall = time.time()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            prepared.argv,
            cwd=cwd,
            env=prepared.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pre,
        )
    except OSError as err:
        prepared.cleanup()
        log.write(f"autoresearch: could not start {command!r}: {err}\n".encode())
        text, _ = log.close()
        return ProcessResult(command, 127, 0.0, 0.0, log_path, text, start=start_wall, end=time.time(),
                             sandbox=prepared.mode, sandbox_warning=prepared.warning)
    pgid = proc.pid
    if on_start:
        on_start(pgid)

    stop = threading.Event()
    stop_reason: list[str] = []

    def _watch(chunk: bytes, partial: bytearray) -> None:
        partial += chunk
        *lines, rest = bytes(partial).split(b"\n")
        partial[:] = rest[-65536:]  # a line longer than that is not a METRIC line
        for raw in lines:
            reason = watch(raw.decode("utf-8", errors="replace").rstrip("\r")) if not stop.is_set() else None
            if reason:
                stop_reason.append(reason)
                stop.set()

    def _pump() -> None:
        assert proc.stdout is not None
        partial = bytearray()
        while chunk := proc.stdout.read1(65536):
            log.write(chunk)
            if watch is not None:
                _watch(chunk, partial)
            if on_line is not None:
                last = _last_line(chunk)
                if last:
                    on_line(last)

    reader = threading.Thread(target=_pump, daemon=True)
    reader.start()
    try:
        ps_root = psutil.Process(proc.pid)
    except psutil.Error:
        ps_root = None

    peak = 0
    timed_out = interrupted = False
    interval = 0.005
    deadline = start + timeout
    try:
        while True:
            try:
                proc.wait(timeout=min(interval, max(deadline - time.monotonic(), 0.001)))
                break
            except subprocess.TimeoutExpired:
                pass
            if ps_root is not None:
                peak = max(peak, _tree_rss(ps_root))
            if time.monotonic() >= deadline:
                timed_out = True
                kill_group(pgid)
                proc.wait()
                break
            if stop.is_set():
                kill_group(pgid)
                proc.wait()
                break
            if cancel is not None and cancel.is_set():
                interrupted = True
                kill_group(pgid, grace=1.0)
                proc.wait()
                break
            interval = min(interval * 2, 0.25)
    except KeyboardInterrupt:
        interrupted = True
        kill_group(pgid, grace=1.0)
        proc.wait()
    # Anything still in the group after its leader exited (daemonised grandchildren) dies too.
    if group_alive(pgid):
        kill_group(pgid, grace=0.5)
    reader.join(timeout=5)
    prepared.cleanup()
    wall = time.monotonic() - start
    try:
        import resource

        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    except (ImportError, OSError):
        child_peak = 0
    # ru_maxrss covers all children ever waited for; only trust it when we polled nothing.
    if peak == 0:
        peak = child_peak
    text, truncated = log.close()
    return ProcessResult(
        command=command,
        exit_code=None if (timed_out or interrupted or stop_reason) else proc.returncode,
        wall_s=wall,
        peak_rss_mb=peak / 1e6,
        log_path=log_path,
        output=text,
        timed_out=timed_out,
        interrupted=interrupted,
        stopped=stop_reason[0] if stop_reason else "",
        output_bytes=log.total,
        truncated=truncated,
        start=start_wall,
        end=time.time(),
        sandbox=prepared.mode,
        sandbox_warning=prepared.warning,
        extra={"enforced": prepared.enforced, "stripped_env": prepared.stripped},
    )
