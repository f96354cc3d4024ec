"""Turning a model's reply into new file texts.

A reply carries a description and edits in one of three forms, tried in this order:
search/replace blocks, a unified diff, or whole files (a path line followed by a fenced block).
In JSON mode the reply is {"description": ..., "edits": [{"file", "search", "replace"}]}.
Every failure raises `EditError` with a message precise enough to send back to the model
as a repair request: which file, which block, what did not match and what is closest.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from dataclasses import dataclass

SEARCH_MARK = "<<<<<<< SEARCH"
DIVIDER = "======="
REPLACE_MARK = ">>>>>>> REPLACE"


class EditError(Exception):
    """An edit that cannot be applied; the message is shown to the model verbatim."""


@dataclass
class Edit:
    file: str
    search: str | None  # None: `replace` is the whole new file
    replace: str
    label: str = ""  # "block 2" etc., for error messages


@dataclass
class ParsedReply:
    description: str
    edits: list[Edit]
    kind: str  # "search_replace" | "diff" | "whole_file" | "json"


# --- parsing ---------------------------------------------------------------------------------

_DESCRIPTION = re.compile(r"^\s*\**\s*DESCRIPTION\s*\**\s*:\s*\**\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def _clean_path(line: str) -> str:
    """A path line as models write it: `train.py`, **train.py**, # train.py, File: train.py."""
    text = line.strip()
    text = re.sub(r"^(#+|[-*]|file\s*:|path\s*:)\s*", "", text, flags=re.IGNORECASE)
    return text.strip().strip("`*'\":").strip()


def _description(text: str) -> str:
    m = _DESCRIPTION.search(text)
    if m:
        return m.group(1).strip().strip("`*").strip()
    # Fall back to the first line of prose before any edit.
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if _FENCE.match(s) or s.startswith(("<<<<<<<", "--- ", "+++ ", "@@", "diff --git", "{")):
            break
        return s.lstrip("#*- ").strip()[:200]
    return ""


def _parse_search_replace(text: str, known: list[str]) -> list[Edit]:
    lines = text.splitlines(keepends=True)
    edits: list[Edit] = []
    current_file = ""
    i = 0
    while i < len(lines):
        raw = lines[i]
        if raw.strip() == SEARCH_MARK or raw.rstrip().endswith(SEARCH_MARK):
            # The path is the nearest non-empty, non-fence line above the block.
            j = i - 1
            while j >= 0 and (not lines[j].strip() or _FENCE.match(lines[j])):
                fence_info = [_clean_path(t) for t in lines[j].split()[1:]] if _FENCE.match(lines[j]) else []
                if any(t in known for t in fence_info):  # ```python train.py
                    current_file = next(t for t in fence_info if t in known)
                    j = -1
                    break
                j -= 1
            if j >= 0:
                candidate = _clean_path(lines[j])
                fence = _FENCE.match(lines[j])
                if candidate and not fence and (candidate in known or "/" in candidate or "." in candidate) and " " not in candidate:
                    current_file = candidate
            label = f"block {len(edits) + 1}"
            if not current_file:
                raise EditError(f"{label}: no file path on the line above '{SEARCH_MARK}'; put the path alone on that line")
            search: list[str] = []
            i += 1
            while i < len(lines) and lines[i].rstrip() != DIVIDER:
                if lines[i].strip() == REPLACE_MARK:
                    raise EditError(f"{label} ({current_file}): missing '{DIVIDER}' line between SEARCH and REPLACE")
                search.append(lines[i])
                i += 1
            if i >= len(lines):
                raise EditError(f"{label} ({current_file}): missing '{DIVIDER}' line after the SEARCH text")
            replace: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != REPLACE_MARK:
                replace.append(lines[i])
                i += 1
            if i >= len(lines):
                raise EditError(f"{label} ({current_file}): missing '{REPLACE_MARK}' line at the end of the block")
            edits.append(Edit(current_file, "".join(search), "".join(replace), label))
        i += 1
    return edits


_DIFF_FILE = re.compile(r"^\+\+\+ (?:b/)?(\S+)")
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")


def _parse_diff(text: str) -> list[Edit]:
    """Each hunk becomes a search/replace edit (context + removed -> context + added)."""
    edits: list[Edit] = []
    lines = text.splitlines(keepends=True)
    current = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIFF_FILE.match(line)
        if m and i > 0 and lines[i - 1].startswith("--- "):
            current = m.group(1)
            i += 1
            continue
        if _HUNK.match(line) and current:
            old: list[str] = []
            new: list[str] = []
            i += 1
            while i < len(lines):
                h = lines[i]
                if _HUNK.match(h) or h.startswith("--- ") or _FENCE.match(h) or h.startswith("diff --git"):
                    break
                if h.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                body = h[1:] if h[:1] in " +-" else h
                if h.startswith("-"):
                    old.append(body)
                elif h.startswith("+"):
                    new.append(body)
                else:
                    if h.strip() == "" and h[:1] != " ":
                        body = "\n"
                    old.append(body)
                    new.append(body)
                i += 1
            edits.append(Edit(current, "".join(old), "".join(new), f"hunk {len(edits) + 1}"))
            continue
        i += 1
    return edits


def _parse_whole_files(text: str, known: list[str]) -> list[Edit]:
    """A known path on its own line (or in the fence's info string), then a fenced block."""
    edits: list[Edit] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m.group(1)
        info = lines[i].strip()[len(fence):].strip()
        path = ""
        for token in info.split():
            if _clean_path(token) in known:
                path = _clean_path(token)
        if not path:
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and _clean_path(lines[j]) in known:
                path = _clean_path(lines[j])
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence)) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i])
            i += 1
        i += 1
        if path:
            edits.append(Edit(path, None, "".join(body), f"file block {len(edits) + 1}"))
    return edits


def parse_reply(text: str, known: list[str]) -> ParsedReply:
    """Read the description and the edits out of a free-text reply. `known`: editable paths."""
    description = _description(text)
    if SEARCH_MARK in text:
        return ParsedReply(description, _parse_search_replace(text, known), "search_replace")
    diff = _parse_diff(text)
    if diff:
        return ParsedReply(description, diff, "diff")
    whole = _parse_whole_files(text, known)
    if whole:
        return ParsedReply(description, whole, "whole_file")
    raise EditError(
        "no edits found in the reply; give each change as a SEARCH/REPLACE block: the file path alone on a line, "
        f"then '{SEARCH_MARK}', the exact current lines, '{DIVIDER}', the new lines, '{REPLACE_MARK}'"
    )


def _extract_json(text: str) -> object:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    # Models often wrap JSON in a fence or add prose; take the outermost object.
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            return json.loads(text[start : end + 1])
        except json.JSONDecodeError as err:
            raise EditError(f"the reply is not valid JSON ({err.msg} at char {err.pos}); reply with one JSON object") from None
    raise EditError("the reply holds no JSON object; reply with {\"description\": ..., \"edits\": [...]}")


def parse_json_reply(text: str) -> ParsedReply:
    data = _extract_json(text)
    if not isinstance(data, dict):
        raise EditError("the reply must be a JSON object with keys 'description' and 'edits'")
    description = data.get("description")
    edits_raw = data.get("edits")
    if not isinstance(description, str):
        raise EditError("'description' must be a string saying what the change tries")
    if not isinstance(edits_raw, list) or not edits_raw:
        raise EditError("'edits' must be a non-empty list of {\"file\", \"search\", \"replace\"} objects")
    edits: list[Edit] = []
    for n, item in enumerate(edits_raw, 1):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("file", "search", "replace")):
            raise EditError(f"edit {n}: must be an object with string fields 'file', 'search' and 'replace'")
        # No whole-file form here: small models fill an empty search with a fragment and wipe the file.
        edits.append(Edit(item["file"].strip(), item["search"], item["replace"], f"edit {n}"))
    return ParsedReply(description.strip(), edits, "json")


JSON_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "description": {"type": "string"},
        "edits": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"file": {"type": "string"}, "search": {"type": "string"}, "replace": {"type": "string"}},
                "required": ["file", "search", "replace"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["description", "edits"],
    "additionalProperties": False,
}


# --- applying --------------------------------------------------------------------------------


def is_editable(path: str, editable: list[str]) -> bool:
    """Editable entries are paths or glob patterns relative to the experiment root."""
    return any(path == pat or fnmatch.fnmatchcase(path, pat) for pat in editable)


def _closest(text: str, search: str) -> str:
    """The stretch of `text` most like `search`, to show the model what is really there."""
    hay = text.splitlines()
    needle = search.splitlines()
    if not hay or not needle:
        return ""
    n = len(needle)
    best, best_i = 0.0, 0
    joined = "\n".join(needle)
    for i in range(0, max(1, len(hay) - n + 1)):
        ratio = difflib.SequenceMatcher(None, "\n".join(hay[i : i + n]), joined, autojunk=False).quick_ratio()
        if ratio > best:
            best, best_i = ratio, i
    if best < 0.5:
        return ""
    return "\n".join(hay[best_i : best_i + n])


def _replace_once(text: str, edit: Edit) -> str:
    assert edit.search is not None
    search, replace = edit.search, edit.replace
    if search.strip() == "":
        raise EditError(f"{edit.label} ({edit.file}): the SEARCH part is empty; copy the exact lines to change into it")
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1)
    if count > 1:
        raise EditError(f"{edit.label} ({edit.file}): the SEARCH text occurs {count} times; add surrounding lines so it matches once")
    # Models often drop trailing whitespace or the final newline: match line by line, ignoring it.
    hay = text.splitlines(keepends=True)
    needle = [ln.rstrip() for ln in search.splitlines()]
    lead = trail = 0
    while needle and not needle[0]:
        needle.pop(0)
        lead += 1
    while needle and not needle[-1]:
        needle.pop()
        trail += 1
    hits = [i for i in range(len(hay) - len(needle) + 1) if [ln.rstrip() for ln in hay[i : i + len(needle)]] == needle]
    if len(hits) == 1:
        i = hits[0]
        return "".join(hay[:i]) + _trim_blank_edges(replace, lead, trail) + "".join(hay[i + len(needle) :])
    if len(hits) > 1:
        raise EditError(f"{edit.label} ({edit.file}): the SEARCH text occurs {len(hits)} times; add surrounding lines so it matches once")
    near = _closest(text, search)
    hint = f"; the closest lines in the file are:\n{near}" if near else ""
    raise EditError(f"{edit.label} ({edit.file}): the SEARCH text does not match the file exactly{hint}")


def _trim_blank_edges(replace: str, lead: int, trail: int) -> str:
    """Replacement for a line-wise match: drop as many blank edge lines as the search lost; end in a newline."""
    lines = replace.splitlines()
    while lead and lines and not lines[0].strip():
        lines.pop(0)
        lead -= 1
    while trail and lines and not lines[-1].strip():
        lines.pop()
        trail -= 1
    return "".join(ln + "\n" for ln in lines)


def apply_edits(files: dict[str, str], edits: list[Edit], editable: list[str]) -> dict[str, str]:
    """Apply edits in order; return {path: new text} for every file that changed."""
    if not edits:
        raise EditError("the reply contains no edits")
    new = dict(files)
    for edit in edits:
        if not edit.file:
            raise EditError(f"{edit.label}: no file named")
        if edit.file not in files and not is_editable(edit.file, editable):
            allowed = ", ".join(sorted(files)) or ", ".join(editable)
            raise EditError(f"{edit.label}: {edit.file} is not editable; only these files may change: {allowed}")
        if edit.search is None:
            new[edit.file] = edit.replace
            continue
        if edit.file not in new:
            raise EditError(f"{edit.label}: {edit.file} does not exist yet; give its whole text instead of a SEARCH/REPLACE block")
        new[edit.file] = _replace_once(new[edit.file], edit)
    changed = {p: t for p, t in new.items() if files.get(p) != t}
    if not changed:
        raise EditError("the edits change nothing; the new text equals the current text")
    return changed


def check_syntax(changed: dict[str, str]) -> None:
    """Python files must still compile; the message names file, line and the offending text."""
    for path, text in changed.items():
        if not path.endswith(".py"):
            continue
        try:
            compile(text, path, "exec", dont_inherit=True)
        except SyntaxError as err:
            line = (err.text or "").rstrip()
            where = f"line {err.lineno}" + (f": {line.strip()}" if line else "")
            raise EditError(f"{path} no longer compiles: {err.msg} at {where}") from None
        except ValueError as err:  # e.g. null bytes
            raise EditError(f"{path} no longer compiles: {err}") from None
