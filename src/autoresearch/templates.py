"""`autoresearch init`: copy a bundled experiment (examples/NAME) into a new folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from .errors import UserError

# A template may ship init_hook.py: run (not copied) in the new folder after the copy and before the
# first commit, to fetch what the template cannot ship (the security template: the code under audit).
# What it prints is shown; when it fails, the folder is emptied again so that init can simply be rerun.
INIT_HOOK = "init_hook.py"
INIT_HOOK_TIMEOUT_S = 900
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".autoresearch", ".pytest_cache", ".cache", INIT_HOOK)


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
    """Copy the template into DEST and make DEST a git repository of its own with a first commit.

    Returns the lines to print. DEST may exist if empty. Inside another repository (a clone of this
    project, the user's code) the experiment still gets its own repository: the run branch, its
    worktree and its commits then never touch the enclosing one, and `autoresearch run DEST` works
    at once. (To experiment on code of the enclosing repository, write autoresearch.toml beside it
    and commit it there instead.)"""
    names = available()
    if template not in names:
        raise UserError(f"unknown template {template!r}; choose one of: {', '.join(names) or '(none found)'}")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} is a file; choose a new folder name")
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} exists and is not empty; choose a new folder name")
    if shutil.which("git") is None:
        raise UserError("git is not installed; install it (e.g. apt-get install git) and run `autoresearch init` again")
    enclosing = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=_existing_parent(dest),
                               capture_output=True, text=True)
    created = not dest.exists()
    shutil.copytree(examples_dir() / template, dest, ignore=_IGNORE, dirs_exist_ok=True)
    if not (dest / "program.md").exists():
        (dest / "program.md").write_text(generic_program(), encoding="utf-8")
    hook_lines = _run_hook(examples_dir() / template / INIT_HOOK, dest, template, created)
    ident = ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], [*ident, "commit", "-q", "-m", f"autoresearch init --template {template}"]):
        done = subprocess.run(["git", *args], cwd=dest, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"git {args[-1] if args[0] != 'init' else 'init'} failed in {dest}: "
                            f"{(done.stderr or done.stdout).strip()}; fix git and run `autoresearch init` again in an empty folder")
    lines = [f"wrote the {template} experiment to {dest}"]
    if enclosing.returncode == 0:
        lines.append(f"made {dest} a git repository of its own (inside {enclosing.stdout.strip()}, which is left untouched)")
    else:
        lines.append(f"made {dest} a git repository with a first commit")
    lines += hook_lines
    lines.append(f"next: autoresearch run {dest}")
    return lines


def _run_hook(hook: Path, dest: Path, template: str, created: bool) -> list[str]:
    """Run the template's init hook in DEST; its output lines are returned to be printed."""
    if not hook.is_file():
        return []
    try:
        done = subprocess.run([sys.executable, str(hook)], cwd=dest, capture_output=True, text=True,
                              timeout=INIT_HOOK_TIMEOUT_S)
        ok, why = done.returncode == 0, (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
    except subprocess.TimeoutExpired:
        ok, why, done = False, [f"no answer in {INIT_HOOK_TIMEOUT_S} s"], None
    if not ok:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise UserError(f"the {template} template's set-up step ({INIT_HOOK}) failed: {why[0]}; fix that and run "
                        f"`autoresearch init {dest} --template {template}` again")
    return [line for line in done.stdout.splitlines() if line.strip()]


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path
