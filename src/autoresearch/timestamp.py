"""RFC 3161 time-stamps of the ledger's chain head: a witness the agent (and the key holder) cannot reach.

Every `timestamp_every` records, and at every stop, the harness sends the chain head to a time-stamp
authority (TSA). The request's message imprint is the sha256 of the ledger's last line, which is
exactly the chain head (`ledger.chain_head`), so the TSA signs "this ledger, up to this record,
existed no later than this time". Tokens are stored as `.autoresearch/timestamps/<count>-<head>.tsr`
(plain DER TimeStampResponses, readable with `openssl ts -reply -in F -text`), outside every
sandbox's sight.

`verify` checks each token: the TSA's signature chains to the trusted certificate (`[evidence]
timestamp_ca`), its imprint is the head of the ledger at `count` records today. A key holder can
re-sign a rewritten ledger, but cannot make a TSA sign the old time for the new head: history older
than a token is fixed. A network failure is a warning; the run never stops for its witness.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .ledger import LEDGER_NAME, line_hash

TOKEN_DIR = "timestamps"
_TOKEN_NAME = re.compile(r"^(\d+)-([0-9a-f]{64})\.tsr$")
MAX_RESPONSE = 1 << 20  # a time-stamp reply is a few KB; refuse to read more


def token_dir(state_dir: Path) -> Path:
    return Path(state_dir) / TOKEN_DIR


def _line_at(state_dir: Path, count: int) -> bytes | None:
    """The ledger's `count`-th line (1-based, without its newline), or None if there are fewer."""
    n = 0
    try:
        with open(Path(state_dir) / LEDGER_NAME, "rb") as fh:
            for line in fh:
                if line.strip():
                    n += 1
                    if n == count:
                        return line.rstrip(b"\n")
    except FileNotFoundError:
        pass
    return None


def _warn_default(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _post(url: str, body: bytes, timeout: float) -> bytes:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/timestamp-query", "Accept": "application/timestamp-reply"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (the URL is the user's TSA)
        data = resp.read(MAX_RESPONSE + 1)
    if len(data) > MAX_RESPONSE:
        raise ValueError(f"the reply is larger than {MAX_RESPONSE} bytes")
    return data


def request_token(line: bytes, url: str, timeout: float = 10.0) -> bytes:
    """Ask the TSA at `url` to stamp sha256(line); return the DER TimeStampResponse after checking it
    answers this request (status granted, same imprint, same nonce). Raises OSError/ValueError."""
    from rfc3161_client import HashAlgorithm, TimestampRequestBuilder, decode_timestamp_response

    req = TimestampRequestBuilder().data(line).hash_algorithm(HashAlgorithm.SHA256).nonce(nonce=True).build()
    raw = _post(url, req.as_bytes(), timeout)
    resp = decode_timestamp_response(raw)
    if resp.status not in (0, 1):  # granted, granted with modifications
        raise ValueError(f"the TSA refused the request (status {resp.status}: {' '.join(resp.status_string)})")
    if resp.tst_info.message_imprint.message != hashlib.sha256(line).digest():
        raise ValueError("the TSA stamped a different digest than the one sent")
    if resp.tst_info.nonce != req.nonce:
        raise ValueError("the TSA's reply carries another nonce (a replayed or foreign token)")
    return raw


def maybe_stamp(state_dir: Path, evidence: Any, count: int, head: str, force: bool = False,
                warn: Callable[[str], None] | None = None) -> Path | None:
    """The loop's hook: call after each ledger append (`force=False`) and at every stop (`force=True`).

    `evidence` is the `[evidence]` config section; `count, head` come from `ledger.chain_head`.
    Stamps when a URL is set and (force or count is a multiple of timestamp_every), unless this head
    already has a token. Returns the token's path, or None. Never raises for the network or the TSA:
    those end in one warning through `warn` (default: stderr)."""
    url = getattr(evidence, "timestamp_url", "") or ""
    every = int(getattr(evidence, "timestamp_every", 0) or 0)
    if not url or count <= 0 or not (force or (every and count % every == 0)):
        return None
    folder = token_dir(state_dir)
    dest = folder / f"{count}-{head}.tsr"
    if dest.exists():
        return dest
    warn = warn or _warn_default
    line = _line_at(state_dir, count)
    if line is None or line_hash(line) != head:
        warn(f"not time-stamping record {count}: the ledger's record {count} does not hash to head {head[:16]}…")
        return None
    try:
        token = request_token(line, url, float(getattr(evidence, "timestamp_timeout", 10.0)))
    except (OSError, ValueError, urllib.error.URLError) as err:  # HTTPError and timeouts are OSErrors
        warn(f"time-stamping the chain head at {url} failed ({err}); the run goes on, and the next stamp covers these records")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(token)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    return dest


# ---- verification ------------------------------------------------------------------------------

@dataclass
class TokenCheck:
    ok: bool = True
    checked: int = 0
    trusted: bool = False  # signatures checked against a configured TSA certificate
    latest: str | None = None  # "record N at <time>" of the newest good token
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load_trust(ca_path: Path):
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(Path(ca_path).read_bytes())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the TSA certificates {ca_path} ({err}); set [evidence] timestamp_ca to a PEM file") from None
    roots = [c for c in certs if c.issuer == c.subject]
    others = [c for c in certs if c.issuer != c.subject]
    if not roots:
        raise UserError(f"{ca_path} holds no self-signed root certificate; include the TSA's root CA in it")
    return roots, others


def check_tokens(state_dir: Path, hashes: list[str], ca_path: Path | None) -> TokenCheck:
    """Check every stored token against the ledger whose line hashes are `hashes` (`hashes[i]` is the
    chain head after record i+1). Without `ca_path`, the imprints are checked but not who signed them."""
    result = TokenCheck()
    folder = token_dir(state_dir)
    files = sorted(folder.glob("*.tsr"), key=lambda p: (len(p.name), p.name)) if folder.is_dir() else []
    if not files:
        return result
    try:
        from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response
    except ImportError:
        raise UserError(f"{folder} holds time-stamp tokens, and checking them needs rfc3161-client; "
                        "install it with `pip install rfc3161-client` (a dependency of autoresearch)") from None
    verifier = None
    if ca_path is not None:
        roots, others = _load_trust(ca_path)
        verifier = VerifierBuilder(roots=roots, intermediates=others).build()
        result.trusted = True

    def fail(name: str, text: str) -> None:
        result.ok = False
        result.problems.append(f"{TOKEN_DIR}/{name}: {text}")

    for path in files:
        m = _TOKEN_NAME.match(path.name)
        if not m:
            fail(path.name, "not named <count>-<head>.tsr, so it names no record")
            continue
        count = int(m.group(1))
        try:
            resp = decode_timestamp_response(path.read_bytes())
            imprint = resp.tst_info.message_imprint.message.hex()
            when = resp.tst_info.gen_time.isoformat()
        except (OSError, ValueError) as err:
            fail(path.name, f"not a readable RFC 3161 reply ({err})")
            continue
        if imprint != m.group(2):
            fail(path.name, f"stamps head {imprint[:16]}…, not the head its name says")
            continue
        if verifier is not None:
            try:
                verifier.verify(resp, bytes.fromhex(imprint))
            except (VerificationError, ValueError) as err:
                fail(path.name, f"is not signed by the trusted time-stamp authority ({err})")
                continue
        if count > len(hashes) or count < 1:
            fail(path.name, f"the TSA saw {count} records at {when}, but the ledger now holds {len(hashes)}: "
                            "records were removed after they were time-stamped")
            continue
        if hashes[count - 1] != imprint:
            fail(path.name, f"the ledger up to record {count} no longer hashes to the head the TSA stamped at {when}: "
                            "history older than the token was rewritten")
            continue
        result.checked += 1
        result.latest = f"record {count} at {when}"
    return result


def load_evidence_config(root: Path) -> Any:
    """The `[evidence]` section of ROOT/autoresearch.toml alone (verify must work even when other
    sections no longer validate); defaults if the file or section is missing."""
    import tomllib

    from .config import CONFIG_NAME, EvidenceConfig

    path = Path(root) / CONFIG_NAME
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return EvidenceConfig()
    section = data.get("evidence") or {}
    try:
        return EvidenceConfig.model_validate(section)
    except Exception as err:  # pydantic's ValidationError; one sentence, not a traceback
        raise UserError(f"{path}: [evidence] is not valid ({str(err).splitlines()[-1].strip()}); fix that section") from None
