"""Chosen loopback ports across the sandbox's network cut: how a confined agent with `network = false`
still reaches a local model server on the host's 127.0.0.1.

Bubblewrap's `--unshare-net` gives the sandbox a loopback of its own, so the host's 127.0.0.1:PORT
is out of reach, and with it everything else. For each port named in `[proposer] loopback_ports`:

- outside, `HostBridge` listens on a Unix socket (in a folder bound read-only into the sandbox) and
  pipes each connection to the host's 127.0.0.1:PORT;
- inside, `python -m autoresearch.loopback PORT=SOCKET ... -- COMMAND` listens on the sandbox's own
  127.0.0.1:PORT, pipes each connection to that socket, and runs COMMAND (the agent) until it exits.

Only the named ports cross; any other address, on the host's loopback or beyond, stays unreachable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

_CHUNK = 65536


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes; then close both."""
    def one_way(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    t = threading.Thread(target=one_way, args=(b, a), daemon=True)
    t.start()
    one_way(a, b)
    t.join()
    a.close()
    b.close()


def _serve(listener: socket.socket, connect: Callable[[], socket.socket], stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(None)
        try:
            upstream = connect()
        except OSError:
            conn.close()
            continue
        threading.Thread(target=_pipe, args=(conn, upstream), daemon=True).start()


class HostBridge:
    """Outside the sandbox: one Unix socket per port in `folder`, each piped to the host's 127.0.0.1:PORT."""

    def __init__(self, ports: list[int], folder: Path):
        self.folder = folder
        self.sockets = {port: folder / f"{port}.sock" for port in ports}
        self._stop = threading.Event()
        self._listeners: list[socket.socket] = []

    def __enter__(self) -> "HostBridge":
        for port, path in self.sockets.items():
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(16)
            self._listeners.append(listener)
            threading.Thread(target=_serve, daemon=True,
                             args=(listener, lambda p=port: socket.create_connection(("127.0.0.1", p), timeout=10),
                                   self._stop)).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for listener in self._listeners:
            listener.close()

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that, inside the sandbox, opens the ports and then runs `argv`."""
        pairs = [f"{port}={path}" for port, path in self.sockets.items()]
        return [sys.executable, "-m", "autoresearch.loopback", *pairs, "--", *argv]


def main(args: list[str]) -> int:
    """Inside the sandbox: listen on 127.0.0.1:PORT for each PORT=SOCKET, then run the command."""
    split = args.index("--")
    pairs, command = args[:split], args[split + 1:]
    stop = threading.Event()
    for pair in pairs:
        port, path = pair.split("=", 1)
        listener = socket.create_server(("127.0.0.1", int(port)))

        def connect(path: str = path) -> socket.socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s

        threading.Thread(target=_serve, args=(listener, connect, stop), daemon=True).start()
    try:
        return subprocess.call(command)
    finally:
        stop.set()


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))  # daemon threads may still hold sockets: leave at once
