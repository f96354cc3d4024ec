"""Time from `autoresearch run` to its first line of progress, on the nanogpt template (piped output).

    python benchmarks/first_progress.py [--repeats 3]

Makes a fresh experiment with `autoresearch init`, starts `autoresearch run` with its output piped,
and notes when the first status line (setup or the baseline's first repeat) appears; then presses
Ctrl-C. Prints each time and the median. Goal: at most 15 s.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

FIRST = re.compile(r"^(setup \||\[\s*\d+\] repeat)")


def once(template: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        exe = [sys.executable, "-m", "autoresearch.cli"]
        subprocess.run([*exe, "init", "exp", "--template", template], cwd=tmp, check=True, capture_output=True)
        start = time.monotonic()
        proc = subprocess.Popen([*exe, "run", "exp"], cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        took = float("nan")
        for line in proc.stdout:
            if FIRST.match(line):
                took = time.monotonic() - start
                break
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--template", default="nanogpt")
    args = parser.parse_args()
    times = [once(args.template) for _ in range(args.repeats)]
    print("seconds to the first progress line:", ", ".join(f"{t:.2f}" for t in times))
    print(f"median {statistics.median(times):.2f} s (goal: <= 15 s)")


if __name__ == "__main__":
    main()
