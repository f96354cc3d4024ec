"""Git: the run branch, its worktree, applying proposals, candidate commits, keep and discard.

No other part of autoresearch touches git. The run's branch `autoresearch/<tag>` is checked out in a
worktree under `.autoresearch/worktree`, so the user's own checkout is never modified. A candidate is
committed with plumbing (`commit-tree`) so the branch itself moves only at `keep`, after the ledger
record is on disk.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath

from .errors import ProposalInvalid, UserError

STATE_DIR = ".autoresearch"
BRANCH_PREFIX = "autoresearch/"
_AUTHOR_ENV = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}
MAX_EDIT_BYTES = 5 * 1024 * 1024  # a proposal that writes more into one file is refused


class GitError(UserError):
    pass


def _ceiling(cwd: Path) -> str | None:
    """The state folder above a checkout under it (the run's worktree, a re-run's scratch checkout).
    Git must never look above it: if an experiment deletes its worktree's .git, a git command there
    would otherwise act on the enclosing repository, the user's own checkout."""
    parts = Path(cwd).parts
    if STATE_DIR not in parts:
        return None
    last = len(parts) - 1 - parts[::-1].index(STATE_DIR)
    return str(Path(*parts[: last + 1]))


def git(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True, input: str | None = None) -> str:
    full_env = None
    ceiling = _ceiling(cwd)
    if env or ceiling:
        full_env = {**os.environ, **(env or {})}
        if ceiling:
            full_env["GIT_CEILING_DIRECTORIES"] = ceiling
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, input=input
    )
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def changed_paths(top: Path, under: str = "") -> list[str]:
    """Every path (relative to the repository root) that differs from HEAD in the checkout TOP, or
    only below UNDER: modified, deleted, added, untracked, and both sides of a rename or copy."""
    out = git("status", "--porcelain=v1", "-z", "--untracked-files=all", *(["--", under] if under else []), cwd=top)
    entries = out.split("\0")
    paths: list[str] = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        xy, path = entry[:2], entry[3:]
        paths.append(path)
        if "R" in xy or "C" in xy:  # the original path follows as its own entry
            paths.append(entries[i])
            i += 1
    return list(dict.fromkeys(paths))


def is_tracked(top: Path, commit: str, path: str) -> bool:
    """Whether PATH (repository-relative) exists in COMMIT."""
    return bool(git("cat-file", "-t", f"{commit}:{path}", cwd=top, check=False).strip())


@dataclass
class Candidate:
    parent: str
    commit: str
    tree: str
    diff: str
    diff_sha256: str
    changed: list[str]


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None


def make_writable(path: Path) -> None:
    """Undo `export_files`' read-only modes so the folder can be deleted."""
    for folder, dirs, files in os.walk(path):
        Path(folder).chmod(0o755)


def default_tag(existing: set[str]) -> str:
    base = date.today().strftime("%b%d").lower()
    tag, n = base, 2
    while tag in existing:
        tag, n = f"{base}-{n}", n + 1
    return tag


def normalize_relpath(path: str) -> str:
    """A proposal's path as a clean relative posix path, or ProposalInvalid."""
    if not path or "\x00" in path:
        raise ProposalInvalid(f"empty or invalid path {path!r}")
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute():
        raise ProposalInvalid(f"absolute path {path!r}; edits must name files relative to the experiment folder")
    parts = [part for part in p.parts if part not in ("", ".")]
    if ".." in parts:
        raise ProposalInvalid(f"path {path!r} leaves the experiment folder ('..')")
    return "/".join(parts)


def matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pat) or path == pat.rstrip("/") for pat in patterns)


class Workspace:
    """The experiment folder, its git repository, and the run's worktree."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserError(f"{self.root} is not a folder; create it with `autoresearch init {root}`")
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=self.root, capture_output=True, text=True)
        if top.returncode != 0:
            raise UserError(f"{self.root} is not inside a git repository; run `git init` there and commit your files, or use `autoresearch init`")
        self.repo = Path(top.stdout.strip()).resolve()
        self.rel = self.root.relative_to(self.repo).as_posix()  # "." when the experiment is the repo root
        self.state = self.root / STATE_DIR
        self.worktree = self.state / "worktree"
        self.tag: str | None = None  # the run's tag, once created or opened
        self._expected_head: str | None = None  # where the harness last put the run branch

    # ---- paths -------------------------------------------------------------------------------
    def in_tree(self, checkout: Path, rel: str = "") -> Path:
        """The experiment folder (or a file in it) inside a checkout of the repository."""
        base = checkout if self.rel == "." else checkout / self.rel
        return base / rel if rel else base

    @property
    def exp_dir(self) -> Path:
        return self.in_tree(self.worktree)

    def _repo_path(self, rel: str) -> str:
        return rel if self.rel == "." else f"{self.rel}/{rel}"

    def expand(self, patterns: list[str], checkout: Path | None = None, *, key: str = "editable") -> list[str]:
        """Files (relative to the experiment folder) tracked in git that match the patterns."""
        base = self.in_tree(checkout or self.repo)
        tracked = git("ls-files", "-z", cwd=base).split("\0")
        # A submodule or a symlink to a folder is tracked too, but it is not a file anyone can edit.
        files = sorted({t for t in tracked if t and matches(t, patterns) and not (base / t).is_dir()})
        for pat in patterns:
            if not any(matches(f, [pat]) for f in files):
                raise UserError(
                    f"{self.root / 'autoresearch.toml'}: experiment.{key} entry {pat!r} matches no file committed in git; "
                    "fix the pattern or `git add` and commit the file"
                )
        return files

    # ---- run set-up ----------------------------------------------------------------------------
    def git_dir(self) -> Path:
        """The repository's shared .git folder (objects, refs, worktree metadata)."""
        common = Path(git("rev-parse", "--git-common-dir", cwd=self.root).strip())
        return common if common.is_absolute() else (self.root / common).resolve()

    def ensure_ignored(self) -> None:
        """`.autoresearch/` must never be committed; use info/exclude so the user's files stay untouched."""
        exclude = self.git_dir() / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        line = f"/{self._repo_path(STATE_DIR)}/" if self.rel != "." else f"/{STATE_DIR}/"
        text = exclude.read_text() if exclude.exists() else ""
        if line not in text.splitlines():
            exclude.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line + "\n")

    def check_clean(self, paths: list[str]) -> None:
        if not paths:
            return
        out = git("status", "--porcelain", "--", *paths, cwd=self.root)
        dirty = [line[3:] for line in out.splitlines() if line.strip()]
        if dirty:
            raise UserError(
                f"{self.root}: uncommitted changes to {', '.join(dirty)}; commit them (`git commit -am ...`) "
                "or stash them before starting a run"
            )

    def branches(self) -> set[str]:
        out = git("for-each-ref", "--format=%(refname:short)", f"refs/heads/{BRANCH_PREFIX}", cwd=self.root)
        return {line.removeprefix(BRANCH_PREFIX) for line in out.splitlines() if line}

    def create_run(self, tag: str | None) -> tuple[str, str]:
        """Make the run branch at HEAD and its worktree. Returns (tag, base commit)."""
        if not git("rev-parse", "--verify", "-q", "HEAD", cwd=self.root, check=False).strip():
            raise UserError(f"{self.root}: the repository has no commits; commit your experiment files first")
        existing = self.branches()
        if tag is None:
            tag = default_tag(existing)
        elif tag in existing:
            raise UserError(f"branch {BRANCH_PREFIX}{tag} already exists; pick another --tag")
        base = git("rev-parse", "HEAD", cwd=self.root).strip()
        self.state.mkdir(parents=True, exist_ok=True)
        self.ensure_ignored()
        if self.worktree.exists():
            self.remove_worktree()
        git("worktree", "add", "-q", "-b", f"{BRANCH_PREFIX}{tag}", str(self.worktree), base, cwd=self.root)
        self.tag, self._expected_head = tag, base
        return tag, base

    def open_run(self, tag: str) -> None:
        """Make sure the worktree exists and sits on the run branch (it may have been deleted)."""
        branch = f"{BRANCH_PREFIX}{tag}"
        if not git("rev-parse", "--verify", "-q", f"refs/heads/{branch}", cwd=self.root, check=False).strip():
            raise UserError(f"{self.state}: the run branch {branch} is gone; start a new run with `autoresearch run {self.root} --new`")
        ok = (self.worktree / ".git").exists() and git(
            "rev-parse", "--abbrev-ref", "HEAD", cwd=self.worktree, check=False
        ).strip() == branch
        if not ok:
            self.remove_worktree()
            git("worktree", "add", "-q", str(self.worktree), branch, cwd=self.root)
        self.tag = tag
        if self._expected_head is None:
            self._expected_head = self.branch_head(tag)

    def remove_worktree(self) -> None:
        git("worktree", "remove", "--force", str(self.worktree), cwd=self.root, check=False)
        if self.worktree.exists():
            import shutil

            shutil.rmtree(self.worktree, ignore_errors=True)
        git("worktree", "prune", cwd=self.root, check=False)

    # ---- state of a checkout -------------------------------------------------------------------
    def head(self, checkout: Path | None = None) -> str:
        return git("rev-parse", "HEAD", cwd=checkout or self.worktree).strip()

    def branch_head(self, tag: str) -> str:
        return git("rev-parse", f"refs/heads/{BRANCH_PREFIX}{tag}", cwd=self.root).strip()

    def tree_of(self, commit: str) -> str:
        return git("rev-parse", f"{commit}^{{tree}}", cwd=self.root).strip()

    def read_files(self, rels: list[str], checkout: Path | None = None) -> dict[str, str]:
        out = {}
        for rel in rels:
            path = self.in_tree(checkout or self.worktree, rel)
            out[rel] = path.read_text(encoding="utf-8", errors="replace")
        return out

    def hash_files(self, rels: list[str], checkout: Path | None = None) -> dict[str, str | None]:
        return {rel: sha256_file(self.in_tree(checkout or self.worktree, rel)) for rel in rels}

    def changed_files(self, checkout: Path) -> list[str]:
        """Paths (relative to the experiment folder) that differ from HEAD in a checkout, untracked
        included, and both sides of a rename."""
        top = Path(git("rev-parse", "--show-toplevel", cwd=checkout).strip())
        under = "." if self.rel == "." else self.rel
        return [self._exp_relative(p) for p in changed_paths(top, under)]

    def _exp_relative(self, repo_path: str) -> str:
        if self.rel == ".":
            return repo_path
        return repo_path.removeprefix(self.rel + "/")

    # ---- proposals -----------------------------------------------------------------------------
    def write_edits(self, edits: dict[str, str], editable: list[str], checkout: Path | None = None) -> list[str]:
        """Write a proposal into the checkout after checking its scope. Returns the files changed."""
        checkout = checkout or self.worktree
        base = self.in_tree(checkout).resolve()
        changed = []
        for raw_path, text in edits.items():
            rel = normalize_relpath(raw_path)
            if not matches(rel, editable):
                raise ProposalInvalid(f"{rel} is not editable (editable: {', '.join(editable)})")
            if len(text.encode("utf-8", errors="replace")) > MAX_EDIT_BYTES:
                raise ProposalInvalid(f"{rel}: the new text is over {MAX_EDIT_BYTES // 1024 // 1024} MB")
            path = base / rel
            if path.is_symlink() or not path.resolve().is_relative_to(base):
                raise ProposalInvalid(f"{rel} is a symlink or leaves the experiment folder")
            old = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
            if old != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                changed.append(rel)
        return changed

    def commit_candidate(self, message: str, paths: list[str], checkout: Path | None = None) -> Candidate:
        """Commit the checkout's current editable files as a child of HEAD without moving any branch."""
        checkout = checkout or self.worktree
        links = [p for p in paths if self.in_tree(checkout, p).is_symlink()]
        if links:  # the code behind a link is not in the commit, so the record would not say what ran
            raise ProposalInvalid(f"{', '.join(links)} became a symbolic link; the code that runs must be in the commit")
        parent = self.head(checkout)
        with tempfile.TemporaryDirectory() as tmp:
            env = {**_AUTHOR_ENV, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git("read-tree", parent, cwd=checkout, env=env)
            repo_paths = [self._repo_path(p) for p in paths]
            if repo_paths:
                git("add", "-A", "--", *repo_paths, cwd=checkout, env=env)
            tree = git("write-tree", cwd=checkout, env=env).strip()
        commit = git("commit-tree", tree, "-p", parent, "-m", message or "(no description)", cwd=checkout, env=_AUTHOR_ENV).strip()
        diff = self.diff(parent, commit)
        return Candidate(parent, commit, tree, diff, hashlib.sha256(diff.encode()).hexdigest(), paths)

    def replay(self, candidate: Candidate, onto: str) -> Candidate | None:
        """The candidate's change applied on top of ONTO (a best that moved while it ran), as a new
        commit whose parent is ONTO, by a three-way merge of the trees; None if they conflict."""
        merged = subprocess.run(["git", "merge-tree", "--write-tree", onto, candidate.commit], cwd=self.root,
                                capture_output=True, text=True, env={**os.environ, **_AUTHOR_ENV})
        if merged.returncode != 0:
            return None
        tree = merged.stdout.split()[0]
        message = git("log", "-1", "--format=%B", candidate.commit, cwd=self.root).strip()
        commit = git("commit-tree", tree, "-p", onto, "-m", message or "(no description)", cwd=self.root, env=_AUTHOR_ENV).strip()
        diff = self.diff(onto, commit)
        return Candidate(onto, commit, tree, diff, hashlib.sha256(diff.encode()).hexdigest(), candidate.changed)

    def diff(self, parent: str, commit: str) -> str:
        return git("diff", "--binary", parent, commit, cwd=self.root)

    def keep(self, tag: str, commit: str, parent: str, checkout: Path | None = None) -> None:
        """Advance the run branch to `commit` (only if it still points at `parent`) and sync the index."""
        git("update-ref", f"refs/heads/{BRANCH_PREFIX}{tag}", commit, parent, cwd=self.root)
        self._expected_head = commit
        git("reset", "-q", "--hard", commit, cwd=checkout or self.worktree)

    def reset(self, checkout: Path | None = None, clean: bool = True) -> None:
        """Back to the branch head: tracked files restored, untracked non-ignored files removed."""
        checkout = checkout or self.worktree
        if checkout == self.worktree and self.tag:
            self._restore_run_checkout()
        git("reset", "-q", "--hard", "HEAD", cwd=checkout)
        if clean:
            git("clean", "-fdq", "--", ".", cwd=self.in_tree(checkout))

    def _restore_run_checkout(self) -> None:
        """Without a sandbox an experiment can delete its worktree's .git, switch it to another branch
        or commit on the run branch. Put the branch back where the harness left it and the worktree
        back on the branch (rebuilt if need be)."""
        assert self.tag
        ref = f"refs/heads/{BRANCH_PREFIX}{self.tag}"
        fields = [] if not self.worktree.is_dir() else git(
            "for-each-ref", "--format=%(HEAD) %(objectname)", ref, cwd=self.worktree, check=False).split()
        if self._expected_head and fields and fields[-1] != self._expected_head:
            git("update-ref", ref, self._expected_head, cwd=self.root)
        if fields[:1] != ["*"]:
            self.open_run(self.tag)

    # ---- fresh starts ------------------------------------------------------------------------------
    def scrub(self, checkout: Path, commit: str, keep: list[str] = ()) -> None:
        """Make a checkout's files exactly `commit`'s tree (HEAD stays where it is): tracked files
        as committed, every untracked and ignored file gone (what one experiment left behind, e.g.
        weights in `__pycache__/`, must not reach the next), except the declared cache folders."""
        git("read-tree", "-u", "--reset", commit, cwd=checkout)
        excludes = [arg for rel in keep for arg in ("-e", f"/{self._repo_path(rel)}/")]
        git("clean", "-ffdxq", *excludes, cwd=checkout)

    def scratch_checkout(self, path: Path, commit: str) -> Path:
        """A detached checkout of `commit` at `path` (made, or reused and reset): where a re-run or an
        agent-driven `try` runs, away from the run's worktree and from the agent's own checkout."""
        if (path / ".git").exists() and git("rev-parse", "--is-inside-work-tree", cwd=path, check=False).strip() == "true":
            git("checkout", "-q", "--detach", "-f", commit, cwd=path)
            git("clean", "-ffdxq", cwd=path)
            return path
        git("worktree", "remove", "--force", str(path), cwd=self.root, check=False)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        git("worktree", "prune", cwd=self.root, check=False)
        git("worktree", "add", "-q", "--detach", str(path), commit, cwd=self.root)
        return path

    def drop_checkout(self, path: Path) -> None:
        git("worktree", "remove", "--force", str(path), cwd=self.root, check=False)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)

    def export_files(self, commit: str, rels: list[str], dest: Path) -> Path:
        """Write `rels` (experiment-relative) as they are in `commit` into a new read-only folder
        `dest`, straight from git's objects: nothing an experiment wrote into its checkout (planted
        bytecode, a module named like an import) can be in it. Returns the experiment folder in it."""
        if dest.exists():
            make_writable(dest)
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        if rels:
            data = subprocess.run(["git", "archive", "--format=tar", commit, "--", *[self._repo_path(r) for r in rels]],
                                  cwd=self.root, capture_output=True, check=False)
            if data.returncode != 0:
                raise GitError(f"git archive {commit[:12]} failed in {self.root}: {data.stderr.decode(errors='replace').strip()}")
            with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
                tar.extractall(dest, filter="data")
        exp = self.in_tree(dest)
        exp.mkdir(parents=True, exist_ok=True)
        for folder, dirs, files in os.walk(dest):
            for name in files:
                p = Path(folder, name)
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        for folder, dirs, files in os.walk(dest, topdown=False):
            Path(folder).chmod(0o555)
        return exp

    def hash_folder(self, checkout: Path, rel: str) -> str | None:
        """sha256 over a folder's files (relative paths and contents, sorted); None if it is absent."""
        base = self.in_tree(checkout, rel)
        if not base.is_dir():
            return None
        h = hashlib.sha256()
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink()):
            h.update(path.relative_to(base).as_posix().encode() + b"\0")
            h.update((sha256_file(path) or "").encode() + b"\n")
        return h.hexdigest()

    def restore(self, rels: list[str], checkout: Path) -> None:
        """Undo changes to some files only (agent-driven mode leaves the agent's other files alone)."""
        for rel in rels:
            repo_path = self._repo_path(rel)
            tracked = git("ls-files", "--", repo_path, cwd=checkout).strip()
            if tracked:
                git("checkout", "-q", "HEAD", "--", repo_path, cwd=checkout)
            else:
                p = self.in_tree(checkout, rel)
                if p.is_file() or p.is_symlink():
                    p.unlink()
