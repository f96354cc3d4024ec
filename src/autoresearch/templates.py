"""`autoresearch init`: copy a bundled experiment (examples/NAME) into a new folder."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

from .errors import UserError

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".autoresearch", ".pytest_cache")


def examples_dir() -> Path:
    """Bundled experiments: inside the installed wheel, or the repository's examples/ in a checkout."""
    packaged = Path(str(resources.files("autoresearch"))) / "examples"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "examples"


def available() -> list[str]:
    base = examples_dir()
    return sorted(p.name for p in base.iterdir() if (p / "autoresearch.toml").is_file()) if base.is_dir() else []


def generic_program() -> str:
    return (Path(__file__).parent / "templates" / "program.md").read_text(encoding="utf-8")


def init(dest: Path, template: str) -> list[str]:
    """Copy the template into DEST and make it a git repository with a first commit.

    Returns the lines to print. DEST may exist if empty; inside an existing repository, files are
    copied but not committed (the user's repository, the user's commit)."""
    names = available()
    if template not in names:
        raise UserError(f"unknown template {template!r}; choose one of: {', '.join(names) or '(none found)'}")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} exists and is not empty; choose a new folder name")
    shutil.copytree(examples_dir() / template, dest, ignore=_IGNORE, dirs_exist_ok=True)
    if not (dest / "program.md").exists():
        (dest / "program.md").write_text(generic_program(), encoding="utf-8")
    inside = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=dest, capture_output=True, text=True)
    lines = [f"wrote the {template} experiment to {dest}"]
    if inside.returncode == 0:
        lines.append(f"{dest} is inside the git repository {inside.stdout.strip()}; commit its files before `autoresearch run`")
        return lines
    env_args = ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], [*env_args, "commit", "-q", "-m", f"autoresearch init --template {template}"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    lines.append(f"made {dest} a git repository with a first commit; next: autoresearch run {dest}")
    return lines
