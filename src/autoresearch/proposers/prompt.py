"""Building the prompt an LLM (or a coding agent) sees for one experiment.

The parts, in order: the experiment's program.md (the human's research instructions), the
experiment's settings, the full text of the editable files, the protected files as read-only
context (size-capped), a compact history from the ledger, what other runs learned (only with
`--learn-from`, labelled as not measured here), and the reply format. Nothing here reads
environment variables, so no key can end up in a prompt file.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

from ..config import Config
from ..record import ADVANCES_BEST
from . import Context
from .digest import TITLE as LEARNED_TITLE
from .edits import DIVIDER, REPLACE_MARK, SEARCH_MARK

PROTECTED_CAP_EACH = 6000  # characters shown per protected file
PROTECTED_CAP_TOTAL = 20000  # characters shown over all protected files
OLDER_IDEAS_CAP = 60  # one-line entries for experiments older than the last `history`
LOG_TAIL_LINES = 12  # traceback lines shown for a crash
TEMPLATE_PROGRAM = Path(__file__).resolve().parent.parent / "templates" / "program.md"

SYSTEM = (
    "You are a careful research engineer. You improve an experiment's metric by proposing one "
    "change at a time to its editable files; a harness runs each change under a fixed budget and "
    "keeps it only if the metric improves. You reply with a one-line description and the edits, "
    "in exactly the format asked for, and nothing runs unless the edits apply cleanly."
)

_LANG = {".py": "python", ".md": "markdown", ".toml": "toml", ".json": "json", ".sh": "bash", ".yaml": "yaml", ".yml": "yaml"}


def load_program(root: Path) -> str:
    """The experiment's program.md, or the generic one `autoresearch init` writes."""
    path = Path(root) / "program.md"
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace").strip()
    return default_program()


def default_program() -> str:
    return TEMPLATE_PROGRAM.read_text(encoding="utf-8").strip()


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return fence


def _file_block(path: str, text: str, note: str = "") -> str:
    fence = _fence(text)
    lang = _LANG.get(Path(path).suffix, "")
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"## {path}{note}\n{fence}{lang}\n{body}{fence}\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _protected_paths(config: Config, base: Path) -> list[str]:
    hidden = set(config.experiment.hidden)
    out: list[str] = []
    for pattern in config.experiment.protected:
        matches = sorted(glob.glob(pattern, root_dir=base, recursive=True)) if glob.has_magic(pattern) else [pattern]
        for rel in matches:
            if rel not in hidden and rel not in out and (base / rel).is_file():
                out.append(rel)
    return out


def protected_context(config: Config, base: Path, cap_each: int = PROTECTED_CAP_EACH, cap_total: int = PROTECTED_CAP_TOTAL) -> str:
    """Protected files as read-only context, each cut at cap_each and all at cap_total characters."""
    blocks: list[str] = []
    left = cap_total
    for rel in _protected_paths(config, base):
        try:
            text = (base / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary data files say nothing useful to a model
        if left <= 0:
            blocks.append(f"## {rel} (not shown: context limit reached)\n")
            continue
        shown = text[: min(cap_each, left)]
        note = f" (first {len(shown)} of {len(text)} characters)" if len(shown) < len(text) else ""
        blocks.append(_file_block(rel, shown, note))
        left -= len(shown)
    return "\n".join(blocks)


def _record_line(rec: dict[str, Any], metric: str) -> str:
    parts = [f"#{rec.get('id')}", str(rec.get("status", "?"))]
    if rec.get("metric") is not None:
        m = f"{metric}={_fmt(rec['metric'])}"
        if rec.get("delta") is not None and rec.get("status") != "baseline":
            m += f" ({rec['delta']:+.4g} vs best)"
        parts.append(m)
    desc = (rec.get("description") or "").strip().replace("\n", " ")
    if desc:
        parts.append(f'"{desc[:300]}"')
    reason = (rec.get("reason") or "").strip().replace("\n", " ")
    if reason:
        parts.append(f"- {reason[:200]}")
    return " ".join(parts)


def format_history(ctx: Context, n: int) -> str:
    """Best result and its lineage, the last n experiments in detail, older ideas one line each."""
    history = ctx.history
    metric = ctx.config.metric.name
    if not history:
        return "No experiments yet."
    out: list[str] = []
    kept = [r for r in history if r.get("status") in ADVANCES_BEST]
    counts: dict[str, int] = {}
    for r in history:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    out.append(f"{len(history)} experiments so far: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".")
    if ctx.best is not None:
        out.append(f"Current best: {metric}={_fmt(ctx.best.get('metric'))} (experiment #{ctx.best.get('id')}).")
    if len(kept) > 1:
        lineage = kept[-10:]
        steps = " -> ".join(f"#{r.get('id')} {_fmt(r.get('metric'))} \"{(r.get('description') or '').strip()[:80]}\"" for r in lineage)
        out.append(f"Lineage of the current best (kept changes, oldest first): {steps}")
    recent = history[-n:] if n > 0 else []
    older = history[: len(history) - len(recent)]
    if older:
        out.append("")
        out.append("Earlier ideas (outcome only; do not repeat them):")
        seen: set[str] = set()
        lines: list[str] = []
        for r in reversed(older):
            desc = (r.get("description") or "").strip()
            if not desc or desc in seen:
                continue
            seen.add(desc)
            lines.append(f"- #{r.get('id')} {r.get('status')}: {desc[:120]}")
            if len(lines) >= OLDER_IDEAS_CAP:
                break
        out.extend(reversed(lines))
    if recent:
        out.append("")
        out.append(f"Last {len(recent)} experiments (oldest first):")
        for r in recent:
            out.append("- " + _record_line(r, metric))
            if r.get("status") in ("crash", "timeout") and r.get("log_tail"):
                tail = str(r["log_tail"]).rstrip().splitlines()[-LOG_TAIL_LINES:]
                out.extend("    | " + ln for ln in tail)
    return "\n".join(out)


_NUMBER_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(-?\d+(?:\.\d*)?(?:[eE]-?\d+)?)\s*(#.*)?$")


def _example_edit(files: dict[str, str]) -> tuple[str, str, str, str]:
    """(file, description, search, replace) built from a real line, so the format example applies as given."""
    for path in sorted(files):
        for line in files[path].splitlines():
            m = _NUMBER_LINE.match(line.strip())
            if m and line == line.strip():
                name, value = m.group(1), m.group(2)
                new = str(int(value) * 2) if value.lstrip("-").isdigit() else f"{float(value) / 2:g}"
                return path, f"{name} {value} -> {new}", line, line.replace(value, new, 1)
    path = sorted(files)[0] if files else "train.py"
    first = next((ln for ln in files.get(path, "").splitlines() if ln.strip()), "x = 1")
    return path, "describe the change in one line", first, first


def reply_format(json_mode: bool, files: dict[str, str]) -> str:
    path, desc, search, replace = _example_edit(files)
    if json_mode:
        example = json.dumps({"description": desc, "edits": [{"file": path, "search": search, "replace": replace}]})
        return (
            "Reply with one JSON object and nothing else, with a one-line `description` of what the experiment "
            "tries and a list of `edits`. Each edit names a `file`, a `search` text copied exactly from that "
            "file (it must match once), and the `replace` text that takes its place. For example:\n" + example
        )
    return (
        "Reply in this format:\n\n"
        "DESCRIPTION: <one line: what this experiment tries>\n\n"
        "Then one or more SEARCH/REPLACE blocks, each preceded by the file path alone on a line. For example:\n\n"
        f"DESCRIPTION: {desc}\n\n{path}\n{SEARCH_MARK}\n{search}\n{DIVIDER}\n{replace}\n{REPLACE_MARK}\n\n"
        "The SEARCH part must match the current file exactly (whitespace included) and only once; keep it "
        "short but unique. A unified diff or a whole file in a fenced block after its path is also accepted."
    )


def learned_section(learned: str) -> str:
    """The digest of other runs as its own section, apart from this run's history; "" if none."""
    return f"# {LEARNED_TITLE}\n\n{learned.strip()}" if learned.strip() else ""


def running_section(ctx: Context) -> str:
    """The experiments other workers are running now: not measured yet, so try something else."""
    lines = ["# Running now (other workers; not measured yet: do not propose the same change)", ""]
    for e in ctx.in_flight:
        lines.append(f"- #{e['id']} {' '.join(str(e.get('description', '')).split())[:160]}")
    return "\n".join(lines)


def build_prompt(ctx: Context, *, json_mode: bool = False, history: int | None = None, learned: str = "") -> tuple[str, str]:
    """(system, user) messages for one experiment. LEARNED: the digest of other runs, if any."""
    cfg = ctx.config
    n = cfg.proposer.history if history is None else history
    goal = "higher is better" if cfg.maximize else "lower is better"
    sections: list[str] = []
    sections.append("# Research program\n\n" + load_program(ctx.root))

    settings = [
        f"- metric: {cfg.metric.name} ({goal})",
        f"- time budget per experiment: {cfg.experiment.budget:g} s",
        f"- run command: {cfg.experiment.run}",
        f"- editable files: {', '.join(sorted(ctx.files))}",
    ]
    if ctx.noise is not None:
        settings.append(f"- noise (run-to-run std near the current best): {_fmt(ctx.noise)}; smaller differences are luck")
    if ctx.best is not None and ctx.best.get("metric") is not None:
        settings.append(f"- current best {cfg.metric.name}: {_fmt(ctx.best['metric'])} (experiment #{ctx.best.get('id')})")
    sections.append("# Experiment\n\n" + "\n".join(settings))

    files = "\n".join(_file_block(p, ctx.files[p]) for p in sorted(ctx.files))
    sections.append("# Editable files (the current best version)\n\n" + files)

    base = ctx.worktree if Path(ctx.worktree).is_dir() else ctx.root
    protected = protected_context(cfg, Path(base))
    if protected:
        sections.append("# Read-only context (protected files: never edit them)\n\n" + protected)

    sections.append("# History\n\n" + format_history(ctx, n))
    if ctx.in_flight:
        sections.append(running_section(ctx))
    if learned_section(learned):
        sections.append(learned_section(learned))

    task = [f"Propose experiment #{ctx.experiment_id}: one change to the editable files that you expect to improve {cfg.metric.name}."]
    if ctx.feedback:
        task.append(f"Your previous proposal for this experiment was refused: {ctx.feedback.strip()} Propose a different change.")
    task.append(reply_format(json_mode, ctx.files))
    sections.append("# Your task\n\n" + "\n\n".join(task))
    return SYSTEM, "\n\n".join(sections) + "\n"


def render(system: str, messages: list[dict[str, str]]) -> str:
    """A conversation as markdown, for prompt-N.md files."""
    parts = [f"<!-- system -->\n{system}\n"] if system else []
    for m in messages:
        parts.append(f"<!-- {m['role']} -->\n{m['content']}\n")
    return "\n".join(parts)


def build_agent_prompt(ctx: Context, learned: str = "") -> str:
    """The prompt file for an external coding agent: it reads the files itself, so only paths are named.
    LEARNED: the digest of other runs, if any."""
    cfg = ctx.config
    goal = "higher is better" if cfg.maximize else "lower is better"
    editable = ", ".join(sorted(ctx.files)) or ", ".join(cfg.experiment.editable)
    lines = [
        "# Research program",
        "",
        load_program(ctx.root),
        "",
        "# Experiment",
        "",
        f"- metric: {cfg.metric.name} ({goal})",
        f"- time budget per experiment: {cfg.experiment.budget:g} s",
        f"- run command (the harness runs it, not you): {cfg.experiment.run}",
        f"- editable files: {editable}",
    ]
    if cfg.experiment.protected:
        lines.append(f"- protected files (read them if useful, never change them): {', '.join(cfg.experiment.protected)}")
    if ctx.noise is not None:
        lines.append(f"- noise (run-to-run std near the current best): {_fmt(ctx.noise)}")
    lines += ["", "# History", "", format_history(ctx, cfg.proposer.history), ""]
    if ctx.in_flight:
        lines += [running_section(ctx), ""]
    if learned_section(learned):
        lines += [learned_section(learned), ""]
    lines += ["# Your task", ""]
    lines.append(
        f"Make experiment #{ctx.experiment_id}: edit the editable files in the current directory with one change you "
        f"expect to improve {cfg.metric.name}. Change no other file, do not commit, and do not run the experiment: "
        "the harness runs and scores it after you finish. Any change outside the editable files is reverted."
    )
    if ctx.feedback:
        lines.append(f"Your previous proposal for this experiment was refused: {ctx.feedback.strip()} Make a different change.")
    lines.append("When you are done, print one final line of the form\nDESCRIPTION: <one line saying what this experiment tries>")
    return "\n".join(lines) + "\n"
