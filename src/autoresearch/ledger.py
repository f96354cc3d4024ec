"""The evidence ledger: append-only, hash-chained, signed records; results.tsv; verification.

`ledger.jsonl` holds one canonical-JSON record per line. Every record carries `prev`, the sha256 of
the previous line's bytes (64 zeros for the first), and `sig`, a signature over its own canonical
JSON without `sig`. The first record (kind "start") holds the run's public key. Nothing but this
module writes the record; each append is fsync'd before the caller moves the branch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import UserError
from .signing import canonical_json as canonical

LEDGER_NAME = "ledger.jsonl"
RESULTS_NAME = "results.tsv"
GENESIS = "0" * 64


class SignerLike(Protocol):
    public_key: str

    def sign(self, data: bytes) -> str: ...


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def chain_head(state_dir: Path) -> tuple[int, str]:
    """(records, head): how many lines the ledger holds and the sha256 of the last one (64 zeros
    for none). The head commits to every earlier line, so a user who notes it (or a time-stamp
    authority that signs it) can later tell whether anything before it was rewritten or removed."""
    path = Path(state_dir) / LEDGER_NAME
    count, last = 0, GENESIS
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    count, last = count + 1, line_hash(line)
    except FileNotFoundError:
        pass
    return count, last


def format_chain_head(count: int, head: str) -> str:
    return f"chain: {count} records, head {head[:16]}…"


def chain_head_line(state_dir: Path) -> str:
    """The line the loop prints at every stop and `status` prints: `chain: 23 records, head 3f2a…`."""
    return format_chain_head(*chain_head(state_dir))


def _clean_cell(value: Any) -> str:
    return " ".join(str(value).split())  # no tabs or newlines inside a cell


def results_header(metric: str) -> list[str]:
    # The first five columns are exactly the original autoresearch's; ours follow.
    return ["commit", metric, "memory_gb", "status", "description", "id", "delta", "wall_s", "proposer", "reason"]


def results_row(record: dict[str, Any]) -> list[str]:
    value = record.get("metric")
    metric = f"{value:.6f}" if isinstance(value, (int, float)) and math.isfinite(value) else "0.000000"
    mem = record.get("memory_gb")
    delta = record.get("delta")
    wall = sum(r.get("wall_s") or 0 for r in record.get("runs", []))
    return [
        (record.get("commit") or "0000000")[:7],
        metric,
        f"{mem:.1f}" if isinstance(mem, (int, float)) else "0.0",
        record.get("status", ""),
        _clean_cell(record.get("description", "")),
        str(record.get("id")),
        f"{delta:+.6f}" if isinstance(delta, (int, float)) else "",
        f"{wall:.1f}",
        _clean_cell(record.get("proposer", "")),
        _clean_cell(record.get("reason", ""))[:200],
    ]


class LedgerError(UserError):
    """The ledger file cannot be read as a chain, or changed behind the harness's back. A user
    error: the CLI prints it as one sentence (exit 2), never a traceback."""


@dataclass
class Ledger:
    state_dir: Path
    signer: SignerLike | None = None
    _records: list[dict[str, Any]] = field(default_factory=list, init=False)
    _last_hash: str = field(default=GENESIS, init=False)
    _loaded: bool = field(default=False, init=False)
    _size: int = field(default=0, init=False)  # bytes on disk after our own last read or write

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / LEDGER_NAME

    @property
    def results_path(self) -> Path:
        return Path(self.state_dir) / RESULTS_NAME

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def load(self) -> list[dict[str, Any]]:
        """Read every record (no verification; `verify` does that)."""
        records, last = [], GENESIS
        self._size = 0
        if self.path.exists():
            with open(self.path, "rb") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        raise LedgerError(
                            f"{self.path}: line {n} is not valid JSON, so the ledger is damaged; `autoresearch verify` "
                            "names the first bad record (move the file aside to start a new run)"
                        ) from None
                    last = line_hash(line)
                self._size = fh.tell()
        self._records, self._last_hash, self._loaded = records, last, True
        return records

    def adopt(self, records: list[dict[str, Any]], last_hash: str | None = None) -> None:
        """Use records already parsed (by verify_chain) instead of reading the file again."""
        self._records, self._loaded = records, True
        if last_hash is not None:
            self._last_hash = last_hash

    def records(self) -> list[dict[str, Any]]:
        if not self._loaded:
            self.load()
        return self._records

    def chain_head(self) -> tuple[int, str]:
        """(records, head) as this ledger last read or wrote them: free after an append, unlike the
        module's `chain_head(state_dir)`, which reads the file."""
        if not self._loaded:
            self.load()
        return len(self._records), self._last_hash

    def header(self) -> dict[str, Any] | None:
        recs = self.records()
        return recs[0] if recs and recs[0].get("kind") == "start" else None

    def experiments(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("kind") == "experiment"]

    def repair_torn_tail(self) -> str | None:
        """A harness killed mid-write can leave a partial last line. Drop it and say what was dropped."""
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        cut = data.rfind(b"\n") + 1
        torn = data[cut:]
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        self._loaded = False
        return f"{self.path}: dropped a torn last line ({len(torn)} bytes, an unfinished write from a killed harness)"

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain, sign, write and fsync one record; then add its results.tsv row."""
        if not self._loaded:
            self.load()
        record = {k: v for k, v in record.items() if k not in ("prev", "sig")}
        record["prev"] = self._last_hash
        if self.signer is not None:
            record["sig"] = self.signer.sign(canonical(record))
        line = canonical(record) + b"\n"
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self._size:  # without a sandbox, an experiment can write the ledger
            raise LedgerError(
                f"{self.path} changed behind the harness's back ({self._size} -> {size} bytes) while it was open; "
                "nothing more is recorded; `autoresearch verify` names the first bad record "
                "(sandbox = \"bwrap\" keeps experiments away from it)"
            )
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._records.append(record)
        self._last_hash = line_hash(line)
        self._size = size + len(line)
        if record.get("kind") == "experiment":
            self._append_result(record)
        return record

    def _append_result(self, record: dict[str, Any]) -> None:
        header = self.header() or {}
        new = not self.results_path.exists()
        with open(self.results_path, "a", encoding="utf-8") as fh:
            if new:
                fh.write("\t".join(results_header(header.get("metric", "metric"))) + "\n")
            fh.write("\t".join(results_row(record)) + "\n")

    def rewrite_results(self) -> None:
        """Regenerate results.tsv from the ledger (after a crash between the two writes)."""
        header = self.header() or {}
        lines = ["\t".join(results_header(header.get("metric", "metric")))]
        lines += ["\t".join(results_row(r)) for r in self.experiments()]
        tmp = self.results_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, self.results_path)

    def results_agree(self) -> bool:
        header = self.header() or {}
        expected = ["\t".join(results_header(header.get("metric", "metric")))]
        expected += ["\t".join(results_row(r)) for r in self.experiments()]
        try:
            actual = self.results_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return not self.experiments()
        return actual == expected


MAX_IN_FLIGHT = 1024  # the most experiments at once ([resources] workers' upper bound)


class Intents:
    """Write-ahead intents of the experiments in flight: one small JSON file per experiment id in
    `pending/`, written before its first process starts and removed once its record is on disk.
    A harness killed in between leaves them behind, and the next one records each `interrupted`."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "pending"
        self.legacy = Path(state_dir) / "pending.json"  # one intent, from before there were workers

    def write(self, exp_id: int, **fields: Any) -> None:
        path = self.dir / f"{exp_id}.json"
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                pass
        data.update(fields)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def all(self) -> list[dict[str, Any]]:
        found = []
        paths = sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
        for path in [*paths, self.legacy]:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):  # absent, or torn by a kill mid-write: nothing started yet
                continue
            if isinstance(data, dict):
                found.append(data)
        return sorted(found, key=lambda d: d.get("id") if isinstance(d.get("id"), int) else -1)

    def clear(self, exp_id: int) -> None:
        (self.dir / f"{exp_id}.json").unlink(missing_ok=True)
        self.legacy.unlink(missing_ok=True)

    def clear_all(self) -> None:
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                path.unlink(missing_ok=True)
        self.legacy.unlink(missing_ok=True)


@dataclass
class ChainReport:
    ok: bool
    records: int
    problems: list[str]
    first_bad: int | None = None  # 1-based line number
    public_key: str | None = None
    parsed: list[dict[str, Any]] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)  # sha256 of each good line: the chain head after it


def verify_chain(path: Path, check_signatures: bool = True) -> ChainReport:
    """Re-walk the chain and name the first bad record: every line parses and links to the line
    before by sha256, experiment ids run 0, 1, 2, ... in order, and the signatures hold.

    The last record's signature covers its `prev` hash, which covers every earlier line's bytes,
    so one valid signature at the end authenticates the whole chain; individual signatures are
    checked only to name the first bad record when that one fails."""
    prev, n = GENESIS, 0
    seen_ids: set[int] = set()
    public_key: str | None = None
    records: list[dict[str, Any]] = []
    hashes: list[str] = []

    def bad(n: int, text: str) -> ChainReport:
        return ChainReport(False, n, [text], n, public_key, records, hashes)

    def label(rec: dict[str, Any], n: int) -> str:
        where = f"{path.name} line {n}"
        return f"{where} (experiment {rec.get('id')})" if rec.get("kind") == "experiment" else where

    def signature_ok(rec: dict[str, Any]) -> bool:
        from .signing import verify_signature

        sig = rec.get("sig")
        try:
            body = canonical({k: v for k, v in rec.items() if k != "sig"})
        except ValueError:
            return False
        return isinstance(sig, str) and verify_signature(public_key or "", body, sig)

    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return ChainReport(False, 0, [f"{path}: no ledger"], 1)
    with fh:
        for n, line in enumerate(fh, 1):
            where = f"{path.name} line {n}"
            if not line.endswith(b"\n"):
                return bad(n, f"{where}: torn (no newline at the end); the harness was killed mid-write")
            try:
                rec = json.loads(line)
            except ValueError:
                return bad(n, f"{where}: not valid JSON")
            if not isinstance(rec, dict):
                return bad(n, f"{where}: not a JSON object")
            if rec.get("prev") != prev:
                if records and public_key and check_signatures and not signature_ok(records[-1]):
                    return bad(n - 1, f"{label(records[-1], n - 1)}: bad signature; the record was altered after it was signed")
                return bad(n, f"{label(rec, n)}: its 'prev' hash does not match the line before; a record was altered, removed or reordered")
            if n == 1:
                if rec.get("kind") != "start":
                    return bad(n, f"{label(rec, n)}: the first record is not the run's start record")
                public_key = rec.get("public_key")
            if rec.get("kind") == "experiment":
                # With workers, experiments land in the order they finish, each with the id it got when
                # it started: an id may come early, but never twice, and never far past what was seen.
                exp_id = rec.get("id")
                if not isinstance(exp_id, int) or exp_id in seen_ids or exp_id > len(seen_ids) + MAX_IN_FLIGHT:
                    return bad(n, f"{label(rec, n)}: experiment id {exp_id!r} is out of place (seen {len(seen_ids)} experiments); "
                                  "records were removed, duplicated or reordered")
                seen_ids.add(exp_id)
            records.append(rec)
            prev = line_hash(line)
            hashes.append(prev)
    if n == 0:
        return bad(1, f"{path.name} is empty: even the run's start record is gone")
    if records and public_key and check_signatures and not signature_ok(records[-1]):
        for i, rec in enumerate(records, 1):  # find the first record whose own signature fails
            if not signature_ok(rec):
                return bad(i, f"{label(rec, i)}: bad or missing signature; the record was altered after it was signed")
    return ChainReport(True, n, [], None, public_key, records, hashes)
