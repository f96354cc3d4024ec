"""Numeric knobs: module-level `UPPER_CASE = <number>` assignments in editable Python files.

A knob is what the `tune` proposer searches over, like the hyperparameter block at the top of the
original train.py. Recognised right-hand sides: an int or float literal (`8`, `0.04`, `1e-3`,
`1_000`), with an optional sign (`-0.5`), and an integer power (`2**19`, `2 ** -3` is a float).
Booleans, tuples, names and expressions are not knobs. Only the literal's own characters are
rewritten, so comments, spacing and everything else in the file stay byte for byte.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Literal

_KNOB_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

Number = int | float


@dataclass(frozen=True)
class Knob:
    name: str
    path: str  # editable file, relative posix path
    line: int  # 1-based line of the literal's first character
    col: int  # 0-based character column of the literal's first character
    end_line: int
    end_col: int  # character column just past the literal
    value: Number
    type: Literal["int", "float"]
    text: str  # the literal exactly as written, e.g. "2**19" or "1e-3"
    key: str = ""  # unique id across files: NAME, or path:NAME when several files define NAME

    @property
    def power_base(self) -> int | None:
        """The base when written as `base**exp` (e.g. 2 for `2**19`), else None."""
        m = _POWER_TEXT.match(self.text)
        return int(m.group(1)) if m else None


_POWER_TEXT = re.compile(r"^\(?\s*(\d+)\s*\)?\s*\*\*\s*\(?\s*([+-]?\s*\d+)\s*\)?$")


def _literal_value(node: ast.expr) -> Number | None:
    """The number a knob literal stands for, or None if NODE is not a knob literal."""
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return v if math.isfinite(v) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = node.operand
        if isinstance(inner, ast.Constant) and not isinstance(inner.value, bool) and isinstance(inner.value, (int, float)):
            return -inner.value if isinstance(node.op, ast.USub) else inner.value
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exp = _literal_value(node.left), _literal_value(node.right)
        if (
            isinstance(node.left, ast.Constant)
            and isinstance(base, int)
            and isinstance(exp, int)
            and base >= 2
            and abs(exp) <= 64
        ):
            return base**exp
        return None
    return None


def _char_col(line_text: str, byte_col: int) -> int:
    """ast columns are UTF-8 byte offsets; edits need character offsets."""
    return len(line_text.encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))


def find_knobs_in(path: str, text: str) -> list[Knob]:
    """Knobs of one Python file, in file order. A file that does not parse has none."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines(keepends=True)
    found: dict[str, Knob] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1:
                continue
            target, value_node = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value_node = stmt.target, stmt.value
        else:
            continue
        if not isinstance(target, ast.Name) or not _KNOB_NAME.match(target.id):
            continue
        value = _literal_value(value_node)
        if value is None or value_node.end_lineno is None or value_node.end_col_offset is None:
            continue
        line, end_line = value_node.lineno, value_node.end_lineno
        col = _char_col(lines[line - 1], value_node.col_offset)
        end_col = _char_col(lines[end_line - 1], value_node.end_col_offset)
        if line == end_line:
            literal = lines[line - 1][col:end_col]
        else:  # a literal split over lines (inside parentheses); rare, but keep it exact
            literal = lines[line - 1][col:] + "".join(lines[line : end_line - 1]) + lines[end_line - 1][:end_col]
        # A later assignment to the same name is the one that takes effect.
        found.pop(target.id, None)
        found[target.id] = Knob(
            name=target.id,
            path=path,
            line=line,
            col=col,
            end_line=end_line,
            end_col=end_col,
            value=value,
            type="float" if isinstance(value, float) else "int",
            text=literal,
            key=target.id,
        )
    return sorted(found.values(), key=lambda k: (k.line, k.col))


def find_knobs(files: dict[str, str]) -> list[Knob]:
    """Knobs of every editable `.py` file, ordered by path then position, with unique keys."""
    knobs: list[Knob] = []
    for path in sorted(files):
        if path.endswith(".py"):
            knobs.extend(find_knobs_in(path, files[path]))
    counts: dict[str, int] = {}
    for k in knobs:
        counts[k.name] = counts.get(k.name, 0) + 1
    return [
        Knob(**{**k.__dict__, "key": k.name if counts[k.name] == 1 else f"{k.path}:{k.name}"})
        for k in knobs
    ]


def _strip_exponent(s: str) -> str:
    """'3.2e-04' -> '3.2e-4', '1.5e+05' -> '1.5e5'."""
    if "e" not in s:
        return s
    mant, exp = s.split("e")
    sign = "-" if exp.startswith("-") else ""
    return f"{mant}e{sign}{exp.lstrip('+-').lstrip('0') or '0'}"


def format_float(value: float, like: str = "", digits: int = 4) -> str:
    """A readable float literal with about DIGITS significant digits that still parses as a float.

    Scientific notation is used for very small or large values, and kept for values away from 1
    when the original literal LIKE used it (`1e-3` -> `3.2e-4`, not `0.00032`)."""
    if value == 0:
        return "0.0"
    mag = abs(value)
    sci = not 1e-4 <= mag < 1e6 or ("e" in like.lower() and not 0.01 <= mag < 1e4)
    if not sci:
        # Plain decimal rounded to DIGITS significant digits; repr gives the shortest exact text.
        return repr(round(value, digits - 1 - math.floor(math.log10(mag))))
    mant, exp = f"{value:.{digits - 1}e}".split("e")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return _strip_exponent(f"{mant}e{exp}")


def format_value(value: Number, like: Knob | None = None) -> str:
    """Source text for VALUE in the style of the knob it replaces (powers, underscores, exponent)."""
    if isinstance(value, bool):
        raise ValueError("a knob value must be a number, not a bool")
    text = like.text if like else ""
    base = like.power_base if like else None
    if base is not None and value > 0:
        exp = round(math.log(value, base))
        if base**exp == value and isinstance(base**exp, type(value)):
            m = re.search(r"\s*\*\*\s*", text)
            op = m.group(0) if m else "**"
            return f"{base}{op}{exp}"
    if isinstance(value, float):
        return format_float(value, text)
    if "_" in text:
        return f"{value:_}"
    return str(value)


def same_literal(a: str, b: str) -> bool:
    """Whether two literals denote the same number (so writing B over A would be a no-op)."""
    if a.strip() == b.strip():
        return True
    try:
        va, vb = ast.literal_eval(_to_expr(a)), ast.literal_eval(_to_expr(b))
    except (ValueError, SyntaxError):
        return False
    return type(va) is type(vb) and va == vb


def _to_expr(text: str) -> str:
    m = _POWER_TEXT.match(text.strip())
    if m:
        return str(int(m.group(1)) ** int(m.group(2).replace(" ", "")))
    return text.strip()


def rewrite(text: str, knobs: list[Knob], new_text: dict[str, str]) -> str:
    """Replace the literal of each knob in KNOBS whose key is in NEW_TEXT with that source text.

    KNOBS must come from this same TEXT; nothing outside the literals changes."""
    lines = text.splitlines(keepends=True)
    # Edit from the end so earlier positions stay valid.
    for k in sorted((k for k in knobs if k.key in new_text), key=lambda k: (k.line, k.col), reverse=True):
        first, last = lines[k.line - 1], lines[k.end_line - 1]
        merged = first[: k.col] + new_text[k.key] + last[k.end_col :]
        lines[k.line - 1 : k.end_line] = [merged]
    return "".join(lines)


def apply_values(files: dict[str, str], values: dict[str, Number | str]) -> dict[str, str]:
    """Set knobs (by key) to VALUES (numbers, or ready source text); return only the changed files."""
    knobs = find_knobs(files)
    by_path: dict[str, dict[str, str]] = {}
    known = {k.key: k for k in knobs}
    for key, value in values.items():
        if key not in known:
            raise KeyError(f"no knob {key!r}; knobs are {sorted(known)}")
        k = known[key]
        lit = value if isinstance(value, str) else format_value(value, k)
        if not same_literal(k.text, lit):
            by_path.setdefault(k.path, {})[key] = lit
    out: dict[str, str] = {}
    for path, new_text in by_path.items():
        out[path] = rewrite(files[path], [k for k in knobs if k.path == path], new_text)
    return out
