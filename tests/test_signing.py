"""Ed25519 keys, signatures and canonical JSON (autoresearch.signing)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from autoresearch.errors import UserError
from autoresearch.signing import (
    Signer,
    canonical_json,
    key_dir,
    sign_record,
    verify_record,
    verify_signature,
)


@pytest.fixture
def keys(tmp_path, monkeypatch):
    d = tmp_path / "keys"
    monkeypatch.setenv("AUTORESEARCH_KEY_DIR", str(d))
    return d


def test_key_dir_env_and_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_KEY_DIR", str(tmp_path / "explicit"))
    assert key_dir() == tmp_path / "explicit"
    assert stat.S_IMODE((tmp_path / "explicit").stat().st_mode) == 0o700

    monkeypatch.delenv("AUTORESEARCH_KEY_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    d = key_dir()
    assert d == tmp_path / "xdg" / "autoresearch" / "keys"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700

    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_dir() == tmp_path / "home" / ".config" / "autoresearch" / "keys"


def test_sign_verify_round_trip(keys):
    s = Signer.load_or_create("run-1")
    assert len(s.public_key) == 64 and bytes.fromhex(s.public_key)
    sig = s.sign(b"hello")
    assert len(sig) == 128
    assert verify_signature(s.public_key, b"hello", sig)
    # The same key comes back from disk.
    again = Signer.load_or_create("run-1")
    assert again.public_key == s.public_key
    assert verify_signature(s.public_key, b"hello", again.sign(b"hello"))
    # Another id is another key.
    assert Signer.load_or_create("run-2").public_key != s.public_key


def test_key_file_is_private(keys):
    s = Signer.load_or_create("tag")
    path = keys / "tag.key"
    assert s.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert s.public_key[:16] in repr(s) and "PRIVATE" not in repr(s)
    assert not [p for p in keys.iterdir() if p.name.startswith(".tmp-")]


def test_tamper_detection(keys):
    s = Signer.load_or_create("t")
    data = canonical_json({"id": 3, "metric": 0.9812, "status": "keep"})
    sig = s.sign(data)
    assert verify_signature(s.public_key, data, sig)
    assert not verify_signature(s.public_key, data.replace(b"0.9812", b"0.9811"), sig)
    flipped = bytes.fromhex(sig)
    flipped = flipped[:-1] + bytes([flipped[-1] ^ 1])
    assert not verify_signature(s.public_key, data, flipped.hex())
    other = Signer.load_or_create("other")
    assert not verify_signature(other.public_key, data, sig)
    # Malformed input is a failed check, never an exception.
    assert not verify_signature("zz", data, sig)
    assert not verify_signature(s.public_key, data, "not hex")
    assert not verify_signature(s.public_key, data, sig[:-2])
    assert not verify_signature(s.public_key[:-2], data, sig)


def test_sign_record_and_verify_record(keys):
    s = Signer.load_or_create("rec")
    rec = sign_record({"kind": "experiment", "id": 1, "metric": 1.25, "prev": "ab" * 32}, s)
    assert verify_record(rec, s.public_key)
    # A record survives a round trip through a JSON line.
    assert verify_record(json.loads(json.dumps(rec)), s.public_key)
    assert not verify_record({**rec, "metric": 1.24}, s.public_key)
    assert not verify_record({**rec, "extra": 1}, s.public_key)
    assert not verify_record({k: v for k, v in rec.items() if k != "sig"}, s.public_key)
    # Re-signing replaces the signature rather than signing over it.
    assert verify_record(sign_record(rec, s), s.public_key)


def test_refuses_key_readable_by_others(keys):
    Signer.load_or_create("loose")
    path = keys / "loose.key"
    path.chmod(0o644)
    with pytest.raises(UserError, match=r"chmod 600"):
        Signer.load_or_create("loose")
    path.chmod(0o640)
    with pytest.raises(UserError, match=r"readable by other users"):
        Signer.load_or_create("loose")
    path.chmod(0o600)
    Signer.load_or_create("loose")


def test_refuses_symlinked_or_garbage_key(keys, tmp_path):
    Signer.load_or_create("real")
    (keys / "link.key").symlink_to(keys / "real.key")
    with pytest.raises(UserError, match="not a link"):
        Signer.load_or_create("link")
    bad = keys / "bad.key"
    bad.write_bytes(b"this is not a key at all")
    bad.chmod(0o600)
    with pytest.raises(UserError, match="not an unencrypted Ed25519 key"):
        Signer.load_or_create("bad")


def test_raw_and_pem_keys_load(keys):
    keys.mkdir(mode=0o700, exist_ok=True)
    k = Ed25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    fd = os.open(keys / "raw.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, raw)
    os.close(fd)
    assert Signer.load_or_create("raw").public_key == pub
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(keys / "pem.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pem)
    os.close(fd)
    assert Signer.load_or_create("pem").public_key == pub


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 200, "a b"])
def test_bad_key_ids(keys, bad):
    with pytest.raises(ValueError):
        Signer.load_or_create(bad)


def test_concurrent_creation_yields_one_key(keys):
    """Two processes racing to create the same key end up with the same public key."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from autoresearch.signing import Signer; print(Signer.load_or_create('race').public_key)"
    )
    src = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "AUTORESEARCH_KEY_DIR": str(keys)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, src], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(4)
    ]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1


def test_canonical_json_stable():
    a = {"b": 1, "a": [1, 2.5, {"z": None, "y": True}], "é": "naïve ✓"}
    b = {"é": "naïve ✓", "a": [1, 2.5, {"y": True, "z": None}], "b": 1}
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) == '{"a":[1,2.5,{"y":true,"z":null}],"b":1,"é":"naïve ✓"}'.encode()
    # Floats keep their shortest round-trip form, so re-encoding a parsed record is byte-identical.
    x = {"m": 0.1 + 0.2, "n": 1e-300, "k": 12345678901234567890}
    assert canonical_json(json.loads(canonical_json(x))) == canonical_json(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_canonical_json_refuses_nan_and_inf(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        canonical_json({"metric": bad})
    with pytest.raises(ValueError):
        canonical_json({"runs": [{"metrics": {"loss": bad}}]})


def test_canonical_json_refuses_lone_surrogates():
    with pytest.raises(ValueError, match="invalid Unicode"):
        canonical_json({"log_tail": "bad \udcff byte"})


def test_host_info_is_cheap_cached_and_does_not_import_torch():
    """host_info() (recorded next to every signature) is JSON-ready and leaves torch unimported."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from autoresearch.hostinfo import host_info;"
        "a = host_info(); a['cores'] = -1; b = host_info();"
        "print(json.dumps({'info': b, 'torch': 'torch' in sys.modules}))"
    )
    src = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code, src], capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(out.stdout)
    assert got["torch"] is False
    info = got["info"]
    assert info["cores"] == os.cpu_count()  # a caller mutating its copy does not change the cache
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cpu"] and info["memory_gb"] > 0
    assert isinstance(info["gpus"], list)
    assert "numpy" in info["versions"]
    canonical_json(info)  # fits in a signed record

