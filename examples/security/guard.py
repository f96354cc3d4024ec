"""The protected guard: the library still works. Runs on the whole committed experiment folder.

Passes (exit 0) only when
  1. the bottle.py that evaluate.py scored ($AUTORESEARCH_ARTIFACTS/bottle.py) is the committed one;
  2. every public name of the released bottle.py (pristine.json) is still defined, as what it was:
     top-level functions, classes and constants, and the public methods and attributes of those
     classes (a class stays a class and a function a function: `CGIServer = None` does not pass);
  3. the library's own unit tests (test/, protected) all pass: `python -m unittest discover -s test -t .`
     in a child process, whose output is passed through with a `| ` in front of every line, so
     nothing the library prints can pose as this guard's numbers.
Prints `METRIC tests_run=N` (tests executed, skips not counted) last; autoresearch.toml bounds it
with `min_vs_baseline = 0`, so a change that makes tests skip does not pay either.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEST_TIMEOUT_S = 300


def fail(message: str) -> None:
    print(f"guard: {message}", flush=True)
    sys.exit(1)


def defined_names(tree: ast.Module) -> dict[str, str]:
    """What the module binds at top level (also inside if/try/with blocks), and as "Class.member"
    in the classes it defines there, each with its kind: "class", "function" or "value"."""
    names: dict[str, str] = {}

    def scan(body: list[ast.stmt], prefix: str = "") -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names[prefix + node.name] = "function"
            elif isinstance(node, ast.ClassDef):
                names[prefix + node.name] = "class"
                if not prefix:
                    scan(node.body, node.name + ".")
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            names.setdefault(prefix + n.id, "value")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    names.setdefault(prefix + (a.asname or a.name).split(".")[0], "value")
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for part in ("body", "orelse", "finalbody"):
                    scan(getattr(node, part, []) or [], prefix)
                for handler in getattr(node, "handlers", []):
                    scan(handler.body, prefix)

    scan(tree.body)
    return names


def lost(pristine: dict[str, str], have: dict[str, str]) -> list[str]:
    """Public names of the released module that are gone, or whose class or function became a
    plain value (`CGIServer = None` removes the feature as surely as deleting it)."""
    return [name for name, kind in pristine.items()
            if name not in have or (kind in ("class", "function") and have[name] != kind)]


def child(result_path: str) -> None:
    """The test run itself (in its own process: it imports the candidate's bottle.py)."""
    suite = unittest.defaultTestLoader.discover("test", top_level_dir=".")
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
    Path(result_path).write_text(json.dumps({
        "run": result.testsRun, "skipped": len(result.skipped), "failures": len(result.failures),
        "errors": len(result.errors), "unexpected_successes": len(result.unexpectedSuccesses)}))


def main() -> None:
    os.chdir(HERE)
    pristine = json.loads((HERE / "pristine.json").read_text(encoding="utf-8"))
    code = (HERE / "bottle.py").read_bytes()

    scored = Path(os.environ.get("AUTORESEARCH_ARTIFACTS", "")) / "bottle.py"
    if not scored.is_file() or hashlib.sha256(scored.read_bytes()).hexdigest() != hashlib.sha256(code).hexdigest():
        fail(f"the bottle.py that was scored ({scored}) is not the committed bottle.py")

    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        fail(f"bottle.py does not parse: {err}")
    missing = lost(pristine["public_api"], defined_names(tree))
    print(f"METRIC api_missing={len(missing)}", flush=True)
    if missing:
        fail(f"{len(missing)} public names of bottle {pristine['package'].split('==')[-1]} are gone or no longer what they were: "
             f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}; removing a feature is not a fix")

    for module in ("jinja2", "mako"):  # the test suite's template engines
        try:
            __import__(module)
        except ImportError:
            fail(f"{module} is not installed, and bottle's tests need it; pip install 'autoresearch[security]'")

    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        try:
            done = subprocess.run([sys.executable, str(HERE / "guard.py"), "--child", str(result_path)],
                                  capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            fail(f"the tests did not finish in {TEST_TIMEOUT_S} s")
        for line in (done.stdout + done.stderr).splitlines():
            print(f"| {line}")
        if not result_path.is_file():
            fail(f"the test run ended (exit {done.returncode}) without a result")
        result = json.loads(result_path.read_text())
    tests_run = result["run"] - result["skipped"]
    print(f"METRIC tests_skipped={result['skipped']}")
    print(f"METRIC tests_failed={result['failures'] + result['errors']}")
    print(f"METRIC tests_run={tests_run}", flush=True)
    if done.returncode != 0 or result["failures"] or result["errors"] or result["unexpected_successes"]:
        fail(f"bottle's tests fail: {result['failures']} failures, {result['errors']} errors of {result['run']} "
             f"(the lines above starting with '| ' say which)")
    print(f"guard: ok, {tests_run} tests passed, all {len(pristine['public_api'])} public names present")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
