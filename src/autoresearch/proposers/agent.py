"""`agent`: an external coding agent (Claude Code, Codex, aider, or any command) makes the edit.

The agent runs in the run's worktree with a prompt file. Afterwards the worktree is inspected
with git: what changed inside `editable` becomes the proposal, anything changed elsewhere is
reverted and recorded as a violation, and the worktree is left exactly as it was found (the
loop's workspace applies the proposal itself). The harness, not the agent, runs the experiment.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ProposalInvalid, UserError
from ..workspace import git as workspace_git
from . import Context, Proposal, Proposer
from .edits import EditError, check_syntax, is_editable
from .prompt import build_agent_prompt

# {prompt_file}, {editable}, {model}, {run_dir} and {worktree} are filled in; {model} is empty
# when no model is configured. The agents get permission to edit files but not to ask questions.
TEMPLATES: dict[str, str] = {
    "claude": "claude -p --permission-mode acceptEdits --output-format json{model} < {prompt_file}",
    "codex": "codex exec --full-auto{model} - < {prompt_file}",
    "aider": (
        "aider --yes-always --no-auto-commits --no-gitignore --no-check-update --no-show-model-warnings"
        " --input-history-file {run_dir}/aider.input.history --chat-history-file {run_dir}/aider.chat.md"
        "{model} --message-file {prompt_file} {editable}"
    ),
}
MODEL_FLAG = {"claude": " --model {m}", "codex": " --model {m}", "aider": " --model {m}", "custom": " {m}"}
# Files agents leave behind for themselves; removed like violations but not counted as one.
SCRATCH = (".aider*", ".claude", ".codex", "__pycache__", "*.pyc")  # matched against each path component
_DESCRIPTION = re.compile(r"^\s*\**\s*DESCRIPTION\s*\**\s*:\s*\**\s*(.+?)\s*\**\s*$", re.IGNORECASE | re.MULTILINE)
KILL_GRACE_S = 5.0


def _git(worktree: Path, *args: str, check: bool = True) -> str:
    # Through the workspace's git: it never climbs out of .autoresearch/ into the user's repository,
    # even when an agent deleted the worktree's .git.
    return workspace_git(*args, cwd=worktree, check=check)


def changed_paths(worktree: Path) -> list[str]:
    """Every path that differs from HEAD: modified, deleted, added, untracked, both sides of renames."""
    out = _git(worktree, "status", "--porcelain=v1", "-z", "--untracked-files=all")
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


def _is_scratch(path: str) -> bool:
    return any(fnmatch.fnmatchcase(part, pat) for part in path.split("/") for pat in SCRATCH)


class AgentProposer(Proposer):
    name = "agent"

    def __init__(self, config: Config, history: list[dict[str, Any]]):
        super().__init__(config, history)
        p = config.proposer
        if p.command:
            self.agent, template = "custom", p.command
        elif p.agent:
            if p.agent not in TEMPLATES:
                raise UserError(
                    f"autoresearch.toml: [proposer] agent = '{p.agent}' is not a known agent; use one of "
                    f"{', '.join(sorted(TEMPLATES))}, or set command = \"... {{prompt_file}}\" instead."
                )
            self.agent, template = p.agent, TEMPLATES[p.agent]
            exe = template.split()[0]
            if shutil.which(exe) is None:
                raise UserError(f"the {p.agent} agent needs the `{exe}` command, which is not on PATH; install it or set [proposer] command in autoresearch.toml.")
        else:
            raise UserError(
                "autoresearch.toml: [proposer] kind = \"agent\" needs agent = \"claude\" | \"codex\" | \"aider\" "
                "or command = \"your-agent --prompt-file {prompt_file}\"; add one."
            )
        self.template = template

    def _command(self, ctx: Context, prompt_file: Path) -> str:
        p = self.config.proposer
        model = MODEL_FLAG[self.agent].format(m=shlex.quote(p.model)) if p.model and "{model}" in self.template else ""
        values = {
            "{prompt_file}": shlex.quote(str(prompt_file)),
            "{editable}": " ".join(shlex.quote(f) for f in sorted(ctx.files)),
            "{model}": model,
            "{run_dir}": shlex.quote(str(ctx.run_dir)),
            "{worktree}": shlex.quote(str(ctx.worktree)),
        }
        cmd = self.template
        for key, value in values.items():  # plain replace: a custom command may hold other braces
            cmd = cmd.replace(key, value)
        return cmd

    def _run(self, cmd: str, ctx: Context) -> tuple[int | None, float]:
        """Run the agent in its own process group; kill the whole group on timeout. None: timed out."""
        run_dir = Path(ctx.run_dir)
        timeout = self.config.proposer.agent_timeout
        t0 = time.monotonic()
        with open(run_dir / "agent.stdout", "wb") as out, open(run_dir / "agent.stderr", "wb") as err:
            proc = subprocess.Popen(cmd, shell=True, cwd=ctx.worktree, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
                self._kill(proc)
        return code, time.monotonic() - t0

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def propose(self, ctx: Context) -> Proposal:
        run_dir = Path(ctx.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        worktree = Path(ctx.worktree)
        n = len(list(run_dir.glob("agent-prompt-*.md"))) + 1  # a refused proposal's retry keeps the first prompt
        prompt_file = run_dir / f"agent-prompt-{n}.md"
        prompt_file.write_text(build_agent_prompt(ctx), encoding="utf-8")
        head = _git(worktree, "rev-parse", "HEAD").strip()
        top_before = _git(worktree, "rev-parse", "--show-toplevel").strip()
        dirty_before = set(changed_paths(Path(top_before)))
        cmd = self._command(ctx, prompt_file)
        code, wall = self._run(cmd, ctx)
        top_after = _git(worktree, "rev-parse", "--show-toplevel", check=False).strip()
        if top_after != top_before:  # the loop's reset rebuilds the worktree
            raise _invalid("the agent damaged the worktree's git repository (its .git is gone or moved)",
                           {"agent": self.agent, "exit_code": code, "wall_s": round(wall, 3)})
        stdout = (run_dir / "agent.stdout").read_text(encoding="utf-8", errors="replace")
        stderr = (run_dir / "agent.stderr").read_text(encoding="utf-8", errors="replace")
        edits, violations = self._collect(ctx, head, dirty_before)
        meta: dict[str, Any] = {"agent": self.agent, "exit_code": code, "wall_s": round(wall, 3)}
        if violations:
            meta["violations"] = violations
        meta.update(_agent_usage(stdout))
        if code is None:
            raise _invalid(f"the agent did not finish within agent_timeout = {self.config.proposer.agent_timeout:g} s", meta)
        if code == 127 and self.agent == "custom":
            raise UserError(f"the agent command failed with exit code 127 (command not found): {_tail(stderr, 1)}; fix [proposer] command in autoresearch.toml.")
        if code != 0:
            raise _invalid(f"the agent exited with code {code}: {_tail(stderr or stdout, 5)}", meta)
        if not edits:
            why = f" (it changed only files outside editable: {', '.join(v['path'] for v in violations)})" if violations else ""
            raise _invalid(f"the agent changed no editable file{why}", meta)
        try:
            check_syntax(edits)
        except EditError as err:
            raise _invalid(f"the agent's edit does not compile: {err}", meta) from None
        return Proposal(description=_description(stdout, edits), edits=edits, meta=meta)

    def _collect(self, ctx: Context, head: str, dirty_before: set[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
        """Read the agent's editable changes, revert everything, and say what it touched outside editable."""
        worktree = Path(ctx.worktree)
        top = Path(_git(worktree, "rev-parse", "--show-toplevel").strip())
        prefix = _git(worktree, "rev-parse", "--show-prefix").strip()  # "" or "exp/" when the experiment is a subfolder
        if _git(top, "rev-parse", "HEAD").strip() != head:
            # The agent committed: move the branch back, keeping its changes in the working tree.
            _git(top, "reset", "-q", "--mixed", head)
        editable = self.config.experiment.editable
        edits: dict[str, str] = {}
        violations: list[dict[str, str]] = []
        for repo_path in changed_paths(top):
            if repo_path in dirty_before:
                continue
            rel = repo_path[len(prefix):] if repo_path.startswith(prefix) else None
            full = top / repo_path
            if rel is not None and (rel in ctx.files or is_editable(rel, editable)):
                if full.is_file():
                    try:
                        text = full.read_text(encoding="utf-8")
                    except UnicodeDecodeError:
                        violations.append({"path": rel, "change": "wrote a non-text editable file"})
                    else:
                        if text != ctx.files.get(rel):
                            edits[rel] = text
                elif not full.exists():
                    violations.append({"path": rel, "change": "deleted an editable file"})
                self._restore(top, head, repo_path, ctx.files.get(rel))
                continue
            shown = rel if rel is not None else "/" + repo_path  # outside the experiment folder: repo-rooted
            if not _is_scratch(repo_path):
                change = "deleted" if not full.exists() else "modified" if _tracked(top, head, repo_path) else "created"
                violations.append({"path": shown, "change": change})
            self._restore(top, head, repo_path, None)
        return edits, violations

    @staticmethod
    def _restore(top: Path, head: str, repo_path: str, original: str | None) -> None:
        if _tracked(top, head, repo_path):
            _git(top, "checkout", "-q", head, "--", repo_path)
            return
        _git(top, "rm", "-q", "--cached", "--ignore-unmatch", "--", repo_path, check=False)
        full = top / repo_path
        if original is not None:
            full.write_text(original, encoding="utf-8")
        elif full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)
        elif full.exists() or full.is_symlink():
            full.unlink()


def _tracked(worktree: Path, head: str, path: str) -> bool:
    return subprocess.run(["git", "-C", str(worktree), "cat-file", "-e", f"{head}:{path}"], capture_output=True).returncode == 0


def _agent_usage(stdout: str) -> dict[str, Any]:
    """Cost and tokens when the agent reports them as JSON (claude -p --output-format json)."""
    data = _json_result(stdout)
    if not data:
        return {}
    out: dict[str, Any] = {}
    usage = data.get("usage")
    if isinstance(usage, dict):
        out["usage"] = {
            "input_tokens": int(usage.get("input_tokens") or 0) + int(usage.get("cache_read_input_tokens") or 0)
            + int(usage.get("cache_creation_input_tokens") or 0),
            "output_tokens": int(usage.get("output_tokens") or 0),
        }
    cost = data.get("total_cost_usd", data.get("cost_usd"))
    if isinstance(cost, (int, float)):
        out["cost_usd"] = float(cost)
    return out


def _json_result(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _description(stdout: str, edits: dict[str, str]) -> str:
    data = _json_result(stdout)
    text = str(data.get("result", "")) if data else stdout
    found = _DESCRIPTION.findall(text)
    if found:
        return found[-1].strip().strip("`*").strip()[:300]
    return "agent edit of " + ", ".join(sorted(edits))


def _tail(text: str, n: int) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:500] or "no output"


def _invalid(reason: str, meta: dict[str, Any]) -> ProposalInvalid:
    err = ProposalInvalid(reason)
    err.meta = meta  # type: ignore[attr-defined]
    return err
