"""Ed25519 keys and signatures for the evidence ledger, and the canonical JSON they are taken over.

The private key lives in the user's config folder (never inside an experiment), one file per run:
`<key_dir>/<key_id>.key`, mode 0600. Its public half goes into the ledger's first record, so anyone
holding the ledger can check every signature without the private key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import UserError

_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RAW_KEY_LEN = 32


def key_dir() -> Path:
    """Where private keys live: $AUTORESEARCH_KEY_DIR, else the XDG config folder. Created 0700."""
    explicit = os.environ.get("AUTORESEARCH_KEY_DIR")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        path = Path(base).expanduser() / "autoresearch" / "keys"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing folder; tighten our own.
    st = path.stat()
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def canonical_json(obj: Any) -> bytes:
    """The one byte string a record is hashed and signed over.

    Sorted keys, no whitespace, UTF-8 without escapes, and no NaN or infinity (JSON has none; a
    record holding one could not be read back identically by other tools).
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"cannot put a NaN or infinite number into a signed record: {e}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. from undecodable output
        raise ValueError(f"cannot put invalid Unicode into a signed record: {e}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_key_id(key_id: str) -> None:
    if not _KEY_ID.match(key_id):
        raise ValueError(
            f"bad key id {key_id!r}: use letters, digits, '.', '_' or '-' (at most 128), no path separators"
        )


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise UserError(f"cannot open the private key {path}: {e.strerror}; it must be a regular file, not a link") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path} is not a regular file; remove it so a new key can be made")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise UserError(
                f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run `chmod 600 {path}` and, if others may have copied it, start a new run tag"
            )
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read()
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) == _RAW_KEY_LEN:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} is not an unencrypted Ed25519 key in PEM or raw form ({e}); move it away") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; move it away")
    return key


def _write_new_key(path: Path) -> None:
    """Write a fresh key without ever exposing a partial or loose-permission file at `path`."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".key")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if another process made the key first
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


class Signer:
    """One run's private key. Load or create it with `Signer.load_or_create(key_id)`."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = private_key
        self.path = path
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key: str = raw.hex()

    @classmethod
    def load_or_create(cls, key_id: str, directory: Path | None = None) -> "Signer":
        _check_key_id(key_id)
        folder = directory if directory is not None else key_dir()
        path = folder / f"{key_id}.key"
        if not path.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_new_key(path)
        return cls(_read_private_key(path), path)

    def sign(self, data: bytes) -> str:
        return self._key.sign(data).hex()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def dsse_signer(self):
        """This key as a securesystemslib signer (for DSSE envelopes), its keyid our fingerprint.
        Imported lazily: only `export --format in-toto` needs securesystemslib."""
        from securesystemslib.signer import CryptoSigner

        return CryptoSigner(self._key, dsse_key(self.public_key))

    def __repr__(self) -> str:  # never print key material
        return f"Signer(public_key={self.public_key[:16]}…, path={self.path})"


def load_run_signer(header: dict[str, Any]) -> Signer:
    """The private key of the run whose start record is `header`, never a new one: a missing or
    different key is a user error (signing with another key would forge the run's identity)."""
    key_id = str(header.get("key_id", ""))
    _check_key_id(key_id)
    path = key_dir() / f"{key_id}.key"
    if not path.exists():
        raise UserError(f"the run's private key {path} is missing, so nothing can be signed for this run; "
                        "sign on the machine that ran it (or set AUTORESEARCH_KEY_DIR to the folder holding it)")
    signer = Signer(_read_private_key(path), path)
    if signer.public_key != header.get("public_key"):
        raise UserError(f"{path} is not the key the run's start record names (fingerprint "
                        f"{fingerprint(str(header.get('public_key')))[:16]}…); point AUTORESEARCH_KEY_DIR at the run's own keys")
    return signer


def fingerprint(public_key: str) -> str:
    """A run key's fingerprint: the sha256 (hex) of the raw 32-byte Ed25519 public key. This is
    what a verifier compares out of band (`verify --bundle B --key FINGERPRINT`)."""
    try:
        raw = bytes.fromhex(public_key)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != _RAW_KEY_LEN:
        raise ValueError(f"not an Ed25519 public key (64 hex digits): {str(public_key)[:80]!r}")
    return hashlib.sha256(raw).hexdigest()


def public_key_pem(public_key: str) -> bytes:
    """The hex public key as a SubjectPublicKeyInfo PEM, the form openssl and most tools read."""
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def dsse_key(public_key: str):
    """The hex public key as a securesystemslib SSlibKey whose keyid is our fingerprint."""
    from securesystemslib.signer import SSlibKey

    return SSlibKey(fingerprint(public_key), "ed25519", "ed25519", {"public": public_key})


_HEX64 = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")


def trusted_key_ids(spec: str) -> set[str]:
    """What `--key SPEC` trusts, as a set of fingerprints: SPEC is a fingerprint (64 hex digits,
    optionally `sha256:`-prefixed), or a file holding a PEM public key, a raw 32-byte key, or the
    key or its fingerprint in hex. 64 hex digits are taken both ways (a key or a fingerprint): a
    key whose fingerprint equals another key would be a sha256 preimage."""
    text = spec.strip()
    path = Path(text).expanduser()
    if path.is_file():
        data = path.read_bytes()
        if len(data) == _RAW_KEY_LEN:
            return {hashlib.sha256(data).hexdigest()}
        if b"-----BEGIN" in data:
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError as e:
                raise UserError(f"{path} holds no readable PEM public key ({e}); pass the run's public key or its fingerprint") from None
            if not isinstance(key, Ed25519PublicKey):
                raise UserError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
            return {fingerprint(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())}
        text = data.decode("utf-8", "replace").strip()
    m = _HEX64.match(text)
    if not m:
        raise UserError(f"--key {spec[:80]!r} is neither a key fingerprint (64 hex digits) nor a public key file "
                        "(PEM, raw 32 bytes or hex); copy the fingerprint the run printed")
    value = m.group(1).lower()
    return {value, fingerprint(value)}


def verify_signature(public_key_hex: str, data: bytes, sig_hex: str) -> bool:
    """True iff `sig_hex` is a valid Ed25519 signature of `data`; False for any malformed input."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(sig_hex), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sign_record(record: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """A copy of `record` with "sig" set: the signature over the canonical JSON of the rest."""
    body = {k: v for k, v in record.items() if k != "sig"}
    return {**body, "sig": signer.sign(canonical_json(body))}


def verify_record(record: dict[str, Any], public_key_hex: str) -> bool:
    """True iff the record's "sig" signs the canonical JSON of everything else in it."""
    sig = record.get("sig")
    if not isinstance(sig, str):
        return False
    body = {k: v for k, v in record.items() if k != "sig"}
    try:
        data = canonical_json(body)
    except (ValueError, TypeError):
        return False
    return verify_signature(public_key_hex, data, sig)
