"""`agent`: an external coding agent (Claude Code, Codex, aider, or any command) makes the edit.

The agent runs in the run's worktree with a prompt file. Afterwards the worktree is inspected
with git: what changed inside `editable` becomes the proposal, anything changed elsewhere is
reverted and recorded as a violation, and the worktree is left exactly as it was found (the
loop's workspace applies the proposal itself). The harness, not the agent, runs the experiment.

The agent runs confined (`confinement`), through the runner and the sandbox like `run`: under
bubblewrap it sees its worktree (only the editable files and the folders holding them writable),
its prompt and scratch folder, and the paths its CLI keeps its own config in; not the signing key,
the ledger or any other part of `.autoresearch/`, the user's checkout, the `hidden` paths, nor the
rest of the home folder; and nothing it starts outlives it. `autoresearch drive` uses the same.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..config import Config
from ..loopback import HostBridge
from ..errors import ProposalInvalid, UserError
from ..runner import ProcessResult, experiment_env, run_process
from ..sandbox import Limits, SandboxSpec
from ..signing import key_dir
from ..workspace import STATE_DIR
from ..workspace import changed_paths, is_tracked
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
# What each agent's CLI keeps in the home folder (visible read-write; the rest of home is not) and
# the variables its API key may come in (passed although they look like secrets).
AGENT_PATHS: dict[str, list[str]] = {
    "claude": ["~/.claude", "~/.claude.json"], "codex": ["~/.codex"], "aider": ["~/.aider*"], "custom": [],
}
AGENT_ENV: dict[str, list[str]] = {
    "claude": ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"],
    "codex": ["OPENAI_API_KEY", "CODEX_API_KEY"],
    "aider": ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY"],
    "custom": [],
}
# Promises of the sandbox that confine an agent; the ones that do not hold go into the record.
_AGENT_PROMISES = ("readonly_fs", "hidden", "pid_namespace")


def _git(worktree: Path, *args: str, check: bool = True) -> str:
    # Through the workspace's git: it never climbs out of .autoresearch/ into the user's repository,
    # even when an agent deleted the worktree's .git.
    return workspace_git(*args, cwd=worktree, check=check)


def _is_scratch(path: str) -> bool:
    return any(fnmatch.fnmatchcase(part, pat) for part in path.split("/") for pat in SCRATCH)


def agent_kind(command: str) -> str:
    """Which known agent a command line starts ("custom" when none), for its default paths."""
    try:
        exe = os.path.basename(shlex.split(command)[0]) if command.strip() else ""
    except ValueError:
        return "custom"
    return exe if exe in TEMPLATES else "custom"


def _readonly_cover(top: Path, editable: set[str]) -> list[Path]:
    """The fewest paths that make everything under `top` read-only except the editable files and the
    folders that hold them (an agent may replace a file by renaming, or leave a scratch file there:
    the harness reverts those). Its .git is handled by the caller."""
    holders = {"/".join(e.split("/")[:i]) for e in editable for i in range(1, e.count("/") + 1)}
    out: list[Path] = []

    def walk(folder: Path, rel: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                path = rel + entry.name
                if path == ".git" or path in editable:
                    continue
                if path in holders and entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), path + "/")
                else:
                    out.append(Path(entry.path))

    walk(top, "")
    return out


def _under(path: Path, folders: list[Path]) -> bool:
    return any(path == f or path.is_relative_to(f) for f in folders)


@contextmanager
def confinement(config: Config, *, root: Path, exp_dir: Path, editable: list[str], scratch: Path,
                agent: str, command: str, readonly: list[Path] = ()) -> Iterator[SandboxSpec]:
    """The sandbox an agent runs in (the proposer's and `autoresearch drive`'s alike).

    root: the experiment folder (its .autoresearch/ is out of sight); exp_dir: the experiment folder
    inside the agent's checkout; editable: paths relative to it; scratch: a writable folder.
    """
    p = config.proposer
    exp_dir, root = exp_dir.resolve(), root.resolve()
    top_s, common_s = workspace_git("rev-parse", "--show-toplevel", "--git-common-dir", cwd=exp_dir).splitlines()[:2]
    top, common = Path(top_s).resolve(), Path(common_s)
    common = (common if common.is_absolute() else exp_dir / common).resolve()
    prefix = exp_dir.relative_to(top).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    home = Path.home().resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    hidden: list[Path] = [key_dir().resolve(), (root / STATE_DIR).resolve()]
    inside_hidden: list[Path] = []
    for entry in config.experiment.hidden:
        if entry.startswith(("/", "~", "$")):
            hidden += [Path(x) for x in glob.glob(os.path.expandvars(os.path.expanduser(entry)))]
        else:
            for base in (exp_dir, root):
                inside_hidden += [Path(x) for x in glob.glob(str(base / entry), recursive=True)]
    hidden += inside_hidden
    ro: list[Path] = [*readonly, *_readonly_cover(top, {prefix + e for e in editable})]
    main = common.parent
    if inside_hidden:
        hidden.append(common)  # a tracked hidden file could be read back from git's object store
    else:
        ro.append(common)  # git works read-only: the agent can read history, not commit
    if main != top:  # the user's own checkout: out of sight, the worktree is bound back on top
        hidden.append(main)
    # What must stay reachable although it lies under a hidden folder or the home folder: the
    # Python and autoresearch (the agent calls `autoresearch try`), the agent's own install.
    covered = [home, Path("/tmp"), *hidden]  # the sandbox's /tmp is a fresh one
    install = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent,
               Path(__file__).resolve().parents[2]}
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if os.path.isabs(folder):
            install.add(Path(folder))
    try:
        exe = shutil.which(shlex.split(command)[0]) if command.strip() else None
    except ValueError:
        exe = None
    if exe:
        install.add(Path(exe).resolve().parent)
    for q in {q.resolve() for q in install if q.exists()}:
        # never a folder that would bring the whole home or a hidden folder back into sight
        if _under(q, covered) and q not in covered and not home.is_relative_to(q):
            ro.append(q)
    names = p.agent_paths if p.agent_paths is not None else AGENT_PATHS.get(agent, [])
    writable = [scratch]
    for name in names:
        writable += [Path(x) for x in glob.glob(os.path.expanduser(os.path.expandvars(name)))]
    keep = list(p.agent_env if p.agent_env is not None else AGENT_ENV.get(agent, []))
    if p.api_key_env:
        keep.append(p.api_key_env)
    fake_home = Path(tempfile.mkdtemp(prefix="autoresearch-agent-home-"))
    private = Path(tempfile.mkdtemp(prefix="autoresearch-agent-"))  # never bound in whole
    overlay = {}
    if not inside_hidden and (common / "config").is_file():
        # git needs its config, but remote URLs and http headers may carry credentials
        clean = private / "git-config"
        clean.write_text(_without_credentials((common / "config").read_text(encoding="utf-8", errors="replace")))
        overlay[common / "config"] = clean
    bridge = None
    if not p.network and p.loopback_ports:  # a local model server stays reachable across the cut
        folder = Path(tempfile.mkdtemp(prefix="autoresearch-loopback-"))
        bridge = HostBridge(list(p.loopback_ports), folder).__enter__()
        ro.append(folder)
    try:
        yield SandboxSpec(
            mode=p.sandbox, workdir=exp_dir, writable=writable, readonly=ro,
            hidden=[h for h in hidden if h.exists()], secrets=list(config.experiment.secrets),
            limits=Limits.default(), network=p.network, keep_env=keep, reveal=writable, home=fake_home,
            overlay=overlay, bwrap_prefix=bridge.wrap([]) if bridge else [],
        )
    finally:
        if bridge is not None:
            bridge.__exit__(None, None, None)
            shutil.rmtree(bridge.folder, ignore_errors=True)
        shutil.rmtree(fake_home, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


_CREDENTIAL_KEY = re.compile(r"^\s*(url|pushurl|extraheader|helper|[\w.-]*(token|password|secret|cookie)[\w.-]*)\s*=", re.IGNORECASE)


def _without_credentials(config_text: str) -> str:
    """A git config without the lines that may hold a credential (and without [credential] sections)."""
    out, skip = [], False
    for line in config_text.splitlines():
        head = line.strip().lower()
        if head.startswith("["):
            skip = head.startswith("[credential")
        if skip or _CREDENTIAL_KEY.match(line):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def is_confined(mode: str, enforced: dict[str, bool]) -> bool:
    """Whether a run was confined as an agent must be: bubblewrap, with each of its promises held."""
    return mode == "bwrap" and all(enforced.get(k) for k in _AGENT_PROMISES)


def confinement_meta(res: ProcessResult) -> dict[str, Any]:
    """What the record says about how the agent was confined (as enforced, not as asked)."""
    meta: dict[str, Any] = {"confined": is_confined(res.sandbox, res.extra.get("enforced", {})), "sandbox": res.sandbox}
    if not meta["confined"]:
        meta["not_enforced"] = not_enforced_text(res.sandbox, fell_back=bool(res.sandbox_warning))
    return meta


def not_enforced_text(mode: str, *, fell_back: bool) -> str:
    """One sentence for the terminal and the record: what an unconfined agent can do."""
    if mode == "none":
        return "[proposer] sandbox = \"none\": the agent runs with your full rights"
    why = "bubblewrap does not work here" if fell_back else f"[proposer] sandbox = \"{mode}\""
    return (f"{why}, so the agent runs under process limits only: it can read the signing key, the ledger and the "
            "hidden files, write outside its worktree, reach the network and leave processes behind")


class AgentProposer(Proposer):
    name = "agent"
    per_worker = True  # minutes in a checkout: with workers, one agent per worker, each in its own
    cancel: Any = None  # a threading.Event the coordinator sets at Ctrl-C: the agent's processes are killed

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
        self._warned = False
        self.learned = ""  # the digest of other runs (--learn-from), written into every prompt file
        self.learned_from: list[str] = []

    def learn_from(self, dirs: list[Path], warn: Any = None) -> bool:
        """Write a digest of what other runs of this experiment kept and refuted into the prompt.
        The agent gets the text only, never a path into those runs."""
        from .digest import build_digest, read_runs, sources

        runs = read_runs(dirs, self.config, warn=warn)
        self.learned, self.learned_from = build_digest(runs, self.config), sources(runs)
        return True

    def _command(self, ctx: Context, prompt_file: Path, scratch: Path) -> str:
        p = self.config.proposer
        model = MODEL_FLAG[self.agent].format(m=shlex.quote(p.model)) if p.model and "{model}" in self.template else ""
        values = {
            "{prompt_file}": shlex.quote(str(prompt_file)),
            "{editable}": " ".join(shlex.quote(f) for f in sorted(ctx.files)),
            "{model}": model,
            "{run_dir}": shlex.quote(str(scratch)),  # the part of runs/<id>/ the agent may see
            "{worktree}": shlex.quote(str(ctx.worktree)),
        }
        cmd = self.template
        for key, value in values.items():  # plain replace: a custom command may hold other braces
            cmd = cmd.replace(key, value)
        return cmd

    def _run(self, cmd: str, ctx: Context, scratch: Path) -> ProcessResult:
        """Run the agent confined, through the runner (which kills its whole tree on timeout)."""
        run_dir = Path(ctx.run_dir)
        stderr = scratch / "agent.stderr"
        env = experiment_env()  # the harness's Python first on PATH: `autoresearch` means this one
        worktree = Path(ctx.worktree)
        with confinement(self.config, root=Path(ctx.root), exp_dir=worktree, editable=sorted(ctx.files),
                         scratch=scratch, agent=self.agent, command=cmd) as spec:
            # stdout is the log (the reply, its DESCRIPTION and JSON usage); stderr goes apart
            res = run_process(f"exec 2>{shlex.quote(str(stderr))}\n{cmd}", cwd=worktree, env=env,
                              timeout=self.config.proposer.agent_timeout, log_path=run_dir / "agent.stdout",
                              sandbox=spec, cancel=self.cancel)
        if stderr.exists():
            shutil.move(str(stderr), run_dir / "agent.stderr")
        else:
            (run_dir / "agent.stderr").write_text("")
        if res.interrupted:
            raise KeyboardInterrupt
        if not is_confined(res.sandbox, res.extra.get("enforced", {})) and not self._warned:
            self._warned = True
            print(f"autoresearch: warning: {not_enforced_text(res.sandbox, fell_back=bool(res.sandbox_warning))}", file=sys.stderr)
        return res

    def propose(self, ctx: Context) -> Proposal:
        run_dir = Path(ctx.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        worktree = Path(ctx.worktree)
        n = len(list(run_dir.glob("agent-prompt-*.md"))) + 1  # a refused proposal's retry keeps the first prompt
        prompt = build_agent_prompt(ctx, learned=self.learned)
        (run_dir / f"agent-prompt-{n}.md").write_text(prompt, encoding="utf-8")
        scratch = run_dir / "agent"  # the agent's own folder: its prompt, its notes, nothing else of runs/
        scratch.mkdir(exist_ok=True)
        prompt_file = scratch / f"agent-prompt-{n}.md"
        prompt_file.write_text(prompt, encoding="utf-8")
        head = _git(worktree, "rev-parse", "HEAD").strip()
        top_before = _git(worktree, "rev-parse", "--show-toplevel").strip()
        dirty_before = set(changed_paths(Path(top_before)))
        cmd = self._command(ctx, prompt_file, scratch)
        res = self._run(cmd, ctx, scratch)
        code, wall = (None if res.timed_out else res.exit_code), res.wall_s
        top_after = _git(worktree, "rev-parse", "--show-toplevel", check=False).strip()
        if top_after != top_before:  # the loop's reset rebuilds the worktree
            raise _invalid("the agent damaged the worktree's git repository (its .git is gone or moved)",
                           {"agent": self.agent, "exit_code": code, "wall_s": round(wall, 3), **confinement_meta(res)})
        stdout = (run_dir / "agent.stdout").read_text(encoding="utf-8", errors="replace")
        stderr = (run_dir / "agent.stderr").read_text(encoding="utf-8", errors="replace")
        edits, violations = self._collect(ctx, head, dirty_before)
        meta: dict[str, Any] = {"agent": self.agent, "exit_code": code, "wall_s": round(wall, 3), **confinement_meta(res)}
        if violations:
            meta["violations"] = violations
        if self.learned_from:  # which other runs the prompt quoted; none of their records
            meta["learned_from"] = list(self.learned_from)
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
                if full.is_symlink():  # the harness would read (and record) whatever it points to
                    violations.append({"path": rel, "change": "replaced an editable file with a symlink"})
                elif full.is_file():
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
                change = "deleted" if not full.exists() else "modified" if is_tracked(top, head, repo_path) else "created"
                violations.append({"path": shown, "change": change})
            self._restore(top, head, repo_path, None)
        return edits, violations

    @staticmethod
    def _restore(top: Path, head: str, repo_path: str, original: str | None) -> None:
        if is_tracked(top, head, repo_path):
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
    return ProposalInvalid(reason, meta)
