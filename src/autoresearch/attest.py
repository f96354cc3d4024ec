"""Evidence in standard form: each experiment record as an in-toto Statement v1 in a DSSE envelope.

`autoresearch export DIR --format in-toto -o FILE` writes one JSON envelope per line, signed with the
run's own Ed25519 key, and the public key beside it (`FILE.pub.pem`). Anyone can check the envelopes
with stock tools (securesystemslib, or openssl over the DSSE pre-authentication encoding); see
docs/evidence.md for the predicate schema and the recipes. securesystemslib is imported lazily: the
core of autoresearch runs without it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from .errors import UserError
from .ledger import LEDGER_NAME, verify_chain
from .signing import canonical_json, fingerprint, load_run_signer, public_key_pem

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://autoresearch.dev/experiment/v1"


def _need_securesystemslib() -> None:
    try:
        import securesystemslib  # noqa: F401
    except ImportError:
        raise UserError("in-toto export needs securesystemslib; install it with `pip install securesystemslib` (a dependency of autoresearch)") from None


def statement(record: dict[str, Any], header: dict[str, Any], line: int, line_sha256: str) -> dict[str, Any]:
    """The in-toto Statement for one experiment record (line `line` of the ledger, hashing to
    `line_sha256`). Field names inside the predicate are the ledger record's own."""
    exp_dir = header.get("experiment_dir") or "."
    subject: list[dict[str, Any]] = []
    if record.get("tree"):
        subject.append({"name": f"git-tree:{exp_dir}", "digest": {"gitTree": record["tree"]}})
    if record.get("commit"):
        subject.append({"name": f"git-commit:{header.get('branch', '')}", "digest": {"gitCommit": record["commit"]}})
    if record.get("diff_sha256"):
        subject.append({"name": "diff.patch", "digest": {"sha256": record["diff_sha256"]}})
    # Always present, so even a proposal that never ran (no commit, no diff) has a subject.
    subject.append({"name": f"ledger.jsonl#{line}", "digest": {"sha256": line_sha256}})
    runs = record.get("runs") or []
    config = header.get("config") or {}
    predicate = {
        "run": {
            "tag": header.get("tag"), "branch": header.get("branch"), "base_commit": header.get("base_commit"),
            "experiment_dir": exp_dir, "metric": header.get("metric"), "goal": header.get("goal"),
            "key_fingerprint": fingerprint(header["public_key"]),
        },
        "experiment": {k: record.get(k) for k in (
            "id", "description", "proposer", "parent", "commit", "tree", "diff_sha256", "changed", "start", "end")},
        "decision": {k: record.get(k) for k in ("status", "reason", "flags")},
        "measurement": {k: record.get(k) for k in (
            "metric", "metrics", "best", "delta", "noise", "noise_used", "min_delta_used", "memory_gb", "seeds", "runs")},
        "budget": {
            "budget_s": record.get("budget_s"), "timeout_s": (config.get("experiment") or {}).get("timeout"),
            "command": record.get("command"), "evaluate": record.get("evaluate"),
        },
        "sandbox": [{"mode": r.get("sandbox"), "enforced": r.get("enforced")} for r in runs],
        "protected": record.get("protected"),
        "host": record.get("host"),
        "proposal": record.get("proposal"),
        "ledger": {"line": line, "sha256": line_sha256, "prev": record.get("prev")},
    }
    return {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def export_in_toto(root: Path, out: Path | None = None) -> tuple[Path, int, str]:
    """Write every experiment record of the run in ROOT as a signed envelope, one per line.
    Returns (file, envelopes written, key fingerprint). Refuses a ledger that is not intact."""
    from .workspace import STATE_DIR

    _need_securesystemslib()
    from securesystemslib.dsse import Envelope

    path = Path(root) / STATE_DIR / LEDGER_NAME
    if not path.exists():
        raise UserError(f"{path} not found; there is no run to export in {root}")
    chain = verify_chain(path)
    if not chain.ok:
        raise UserError(f"{path} is not intact ({chain.problems[0]}); attesting it would sign the damage, "
                        f"so check it with `autoresearch verify {root}` first")
    header = chain.parsed[0]
    signer = load_run_signer(header)
    dsse = signer.dsse_signer()
    out = Path(out) if out else Path(root) / f"autoresearch-{header.get('tag', 'run')}.intoto.jsonl"
    n = 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:
        # In id order: with workers, experiments are recorded in the order they finish; each
        # statement names its ledger line, so the chain's order stays checkable.
        numbered = [(line, rec, sha) for line, (rec, sha) in enumerate(zip(chain.parsed, chain.hashes), 1)
                    if rec.get("kind") == "experiment"]
        for line, rec, sha in sorted(numbered, key=lambda t: t[1].get("id", 0)):
            env = Envelope(canonical_json(statement(rec, header, line, sha)), PAYLOAD_TYPE, {})
            env.sign(dsse)
            fh.write(json.dumps(env.to_dict(), separators=(",", ":")).encode() + b"\n")
            n += 1
    tmp.replace(out)
    pub = out.with_name(out.name + ".pub.pem")
    pub.write_bytes(public_key_pem(header["public_key"]))
    return out, n, signer.fingerprint


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding, the bytes a DSSE signature is taken over."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def _public_key_for(path: Path, key: str) -> str:
    """The public key (hex) to check FILE's envelopes with: the key `--key` names, or the
    FILE.pub.pem beside it when `--key` is that key's fingerprint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .signing import trusted_key_ids

    trusted = trusted_key_ids(key)

    def pem_key(source: Path) -> str | None:
        try:
            pem = serialization.load_pem_public_key(source.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(pem, Ed25519PublicKey):
            return None
        return pem.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()

    given = Path(key).expanduser()
    if given.is_file():  # a key file: the key itself (PEM, raw or hex), never what lies beside the export
        found = pem_key(given)
        if found is None:
            data = given.read_bytes()
            found = data.hex() if len(data) == 32 else data.decode("utf-8", "replace").strip().lower()
        return found
    beside = path.with_name(path.name + ".pub.pem")
    found = pem_key(beside) if beside.is_file() else None
    if found is not None and fingerprint(found) in trusted:
        return found
    if found is not None and found != key.strip().lower():
        raise UserError(f"no public key matching --key {key[:64]}: {beside.name} beside {path.name} is key "
                        f"{fingerprint(found)}, not the one you trust; the export was re-signed or is another run's")
    return key.strip().lower().removeprefix("sha256:")  # the key itself in hex (a fingerprint just fails to verify)


def verify_in_toto(path: Path, key: str):
    """Check every envelope of an in-toto export against a key the verifier trusts."""
    from .verify import VerifyReport

    _need_securesystemslib()
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    from .signing import dsse_key

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; pass the file written by `autoresearch export --format in-toto`")
    public = _public_key_for(path, key)
    try:
        sslib_key = dsse_key(public)
    except ValueError:
        raise UserError(f"--key {key[:64]} holds no Ed25519 public key; pass the run's .pub.pem or its fingerprint") from None
    rep = VerifyReport()
    n, next_id = 0, 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            where = f"{path.name} line {n}"
            try:
                data = json.loads(raw)
                env = Envelope.from_dict(data)
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                rep.fail(f"{where}: not a DSSE envelope ({err})")
                continue
            if env.payload_type != PAYLOAD_TYPE:
                rep.fail(f"{where}: payloadType is {env.payload_type!r}, not {PAYLOAD_TYPE}")
                continue
            try:
                env.verify([sslib_key], 1)
            except (VerificationError, ValueError):
                rep.fail(f"{where}: no valid signature by key {fingerprint(public)[:16]}…; the statement was altered or re-signed")
                continue
            try:
                st = json.loads(env.payload)
                exp_id = st["predicate"]["experiment"]["id"]
            except (ValueError, KeyError, TypeError):
                rep.fail(f"{where}: the payload is not an autoresearch statement")
                continue
            if st.get("_type") != STATEMENT_TYPE or st.get("predicateType") != PREDICATE_TYPE:
                rep.fail(f"{where}: not an in-toto v1 statement of type {PREDICATE_TYPE}")
            elif exp_id != next_id:
                rep.fail(f"{where}: holds experiment {exp_id}, expected {next_id}; envelopes were removed or reordered")
            next_id = (exp_id if isinstance(exp_id, int) else next_id) + 1
    if n == 0:
        rep.fail(f"{path} holds no envelopes")
    if rep.ok:
        rep.note(f"in-toto: {n} envelopes, each a signed {PREDICATE_TYPE} statement by key {fingerprint(public)[:16]}…")
    rep.note("OK: the attestations are intact" if rep.ok else "the attestations are NOT intact")
    return rep


def envelope_signature(envelope: dict[str, Any]) -> tuple[bytes, bytes]:
    """(PAE bytes, raw signature) of one exported envelope: what `openssl pkeyutl -verify` checks."""
    payload = base64.b64decode(envelope["payload"])
    return pae(envelope["payloadType"], payload), base64.b64decode(envelope["signatures"][0]["sig"])
