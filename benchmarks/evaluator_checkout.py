"""What running `evaluate` from a fresh copy costs: the copy itself, and its own bytecode cache.

    python benchmarks/evaluator_checkout.py [--repeats 20]

1. `Workspace.export_files` of the nanogpt template's protected files (git archive of the commit,
   extracted read-only), median of N, against `git rev-parse HEAD` (one git process) as the baseline.
2. `python -c "import torch"` with the evaluator's own PYTHONPYCACHEPREFIX: cold (first evaluation
   of a run: everything compiles once) and warm (every later one), against the plain import.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.templates import init
from autoresearch.workspace import Workspace


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "exp"
        init(exp, "nanogpt")
        ws = Workspace(exp)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=exp, capture_output=True, text=True).stdout.strip()
        files = ["prepare.py", "evaluate.py", "program.md", ".gitignore"]
        base = median_s(lambda: subprocess.run(["git", "rev-parse", "HEAD"], cwd=exp, capture_output=True), args.repeats)
        copy = median_s(lambda: ws.export_files(head, files, Path(tmp) / "fresh"), args.repeats)
        print(f"fresh evaluator copy: median {copy * 1000:.1f} ms ({copy / base:.1f}x one git process, {base * 1000:.1f} ms)")

        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        prefix = Path(tmp) / "pycache"
        imp = [sys.executable, "-c", "import torch"]
        plain = median_s(lambda: subprocess.run(imp, env=env, check=True), 3)
        cold = []
        for _ in range(3):
            shutil.rmtree(prefix, ignore_errors=True)
            t = time.perf_counter()
            subprocess.run(imp, env={**env, "PYTHONPYCACHEPREFIX": str(prefix)}, check=True)
            cold.append(time.perf_counter() - t)
        warm = median_s(lambda: subprocess.run(imp, env={**env, "PYTHONPYCACHEPREFIX": str(prefix)}, check=True), 3)
        print(f"import torch: plain {plain:.2f} s; own bytecode cache cold {statistics.median(cold):.2f} s "
              f"({statistics.median(cold) / plain:.2f}x, once per run), warm {warm:.2f} s ({warm / plain:.2f}x)")


if __name__ == "__main__":
    main()
