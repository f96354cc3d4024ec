"""Evidence a hostile agent cannot bend: the chain of kept commits, the chain head, bundles checked
against a key the verifier already trusts, and in-toto/DSSE exports that stock tools verify.
Each security promise is tested from the attacker's side. Real git, real subprocesses (openssl,
a standalone securesystemslib script)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from autoresearch.ledger import GENESIS, chain_head, chain_head_line
from autoresearch.loop import Session, step
from autoresearch.trymode import try_change
from autoresearch.progress import Progress
from autoresearch.proposers import Proposal, Proposer
from autoresearch.signing import Signer, canonical_json, fingerprint, public_key_pem, trusted_key_ids
from autoresearch.verify import verify_run
from conftest import cli, git, make_experiment


class Scripted(Proposer):
    """Each propose() sets X in train.py to the next scripted value."""

    name = "scripted"

    def __init__(self, config, values):
        super().__init__(config, [])
        self.values = list(values)

    def propose(self, ctx):
        value = self.values.pop(0)
        text = re.sub(r"^X = .*$", f"X = {value}", ctx.files["train.py"], flags=re.M)
        return Proposal(f"X -> {value}", {"train.py": text})


def make_run(root: Path, values=(2.0, 2.5, 1.5), *, evidence: str = "", after_append=None) -> Session:
    """A real run in a temp git repository, in-process: baseline, then one experiment per value.
    `after_append(session)` is called after every record, as the loop's hook would be."""
    make_experiment(root, baseline_runs=1)
    if evidence:
        with open(root / "autoresearch.toml", "a") as fh:
            fh.write("\n[evidence]\n" + textwrap.dedent(evidence))
        git(root, "commit", "-qam", "evidence")
    s = Session(root, progress=Progress(quiet=True))
    s.open()
    if after_append:
        after_append(s)
    s.measure_baseline()
    if after_append:
        after_append(s)
    for v in values:
        step(s, Scripted(s.config, [v]))
        if after_append:
            after_append(s)
    return s


def resign(records: list[dict], signer: Signer) -> bytes:
    """What a forger holding some key does: rebuild the chain and sign every record again."""
    out, prev = [], GENESIS
    for rec in records:
        rec = {k: v for k, v in rec.items() if k not in ("prev", "sig")}
        if rec.get("kind") == "start":
            rec["public_key"] = signer.public_key
        rec["prev"] = prev
        rec["sig"] = signer.sign(canonical_json(rec))
        line = canonical_json(rec)
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    return b"\n".join(out) + b"\n"


def ledger_records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / ".autoresearch/ledger.jsonl").read_text().splitlines()]


def report(rep) -> str:
    return "\n".join(rep.lines)


# ---- the chain of kept commits -----------------------------------------------------------------

def test_an_honest_run_has_one_chain_of_kept_commits(tmp_path):
    root = tmp_path / "e"
    make_run(root)
    rep = verify_run(root)
    assert rep.ok, report(rep)
    assert "kept commits form one chain" in report(rep) and "no other commits on the branch" in report(rep)


def test_an_agent_commit_on_the_run_branch_under_a_kept_record_is_reported(tmp_path):
    """The agent commits a change of its own in the run's worktree (here: a protected-looking
    file), then hands an honest-looking edit to `try`, which keeps it on top: the agent's commit
    rides along unrecorded."""
    root = tmp_path / "e"
    s = make_run(root, values=())
    wt = s.ws.worktree
    (wt / "extra.py").write_text("SNEAKY = True\n")
    git(wt, "add", "extra.py")
    git(wt, "commit", "-qm", "agent: sneak a file in")
    train = (wt / "train.py").read_text()
    (wt / "train.py").write_text(train.replace("X = 3.0", "X = 1.5"))
    rec = try_change(wt, "X -> 1.5", progress=Progress(quiet=True))
    assert rec["status"] == "keep"
    rep = verify_run(root)
    text = report(rep)
    assert not rep.ok, text
    assert "is not the run's base commit" in text
    assert "holds 1 commit(s) that no kept record names" in text and "agent: sneak a file in" in text


def test_a_keep_whose_parent_is_not_the_previous_keep_is_reported(tmp_path):
    """After two keeps the agent resets the run branch to the base (dropping both kept results from
    history; recovery only re-applies a keep whose branch move is pending), then a new keep is built
    on the base: the kept commits no longer form one chain."""
    root = tmp_path / "e"
    s = make_run(root, values=(2.0, 1.5))
    keeps = [r for r in s.ledger.experiments() if r["status"] == "keep"]
    assert len(keeps) == 2
    base = ledger_records(root)[0]["base_commit"]
    wt = s.ws.worktree
    git(wt, "reset", "-q", "--hard", base)
    train = (wt / "train.py").read_text()
    (wt / "train.py").write_text(train.replace("X = 3.0", "X = 1.2"))
    rec = try_change(wt, "X -> 1.2", progress=Progress(quiet=True))
    assert rec["status"] == "keep" and rec["parent"] == base
    rep = verify_run(root)
    text = report(rep)
    assert not rep.ok
    assert (f"experiment {rec['id']} (keep): its parent {base[:12]} is not the previous kept commit "
            f"{keeps[-1]['commit'][:12]}") in text


# ---- the chain head ----------------------------------------------------------------------------

def test_status_prints_the_chain_head_the_loop_can_print_too(tmp_path):
    root = tmp_path / "e"
    make_run(root, values=(2.0,))
    lines = (root / ".autoresearch/ledger.jsonl").read_bytes().splitlines()
    count, head = chain_head(root / ".autoresearch")
    assert count == len(lines) == 3
    assert head == hashlib.sha256(lines[-1]).hexdigest()
    assert chain_head_line(root / ".autoresearch") == f"chain: 3 records, head {head[:16]}…"
    res = cli("status", root)
    assert res.returncode == 0, res.stderr
    assert f"chain: 3 records, head {head[:16]}…" in res.stdout
    assert chain_head(tmp_path / "nothing") == (0, GENESIS)


# ---- bundles against a trusted key -------------------------------------------------------------

def _forge_bundle(bundle: Path, work: Path, signer: Signer) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    records = [json.loads(x) for x in (work / "ledger.jsonl").read_text().splitlines()]
    for rec in records:
        if rec.get("kind") == "experiment" and rec["status"] == "discard":
            rec["metric"] = 0.0  # a better number than was measured
    (work / "ledger.jsonl").write_bytes(resign(records, signer))
    from autoresearch.ledger import Ledger

    Ledger(work).rewrite_results()
    manifest = json.loads((work / "MANIFEST.json").read_text())
    manifest["public_key"] = signer.public_key
    manifest["files"] = {name: hashlib.sha256((work / name).read_bytes()).hexdigest() for name in manifest["files"]}
    (work / "MANIFEST.json").write_text(json.dumps(manifest))
    forged = work.parent / "forged.tar.gz"
    with tarfile.open(forged, "w:gz") as tar:
        for f in sorted(work.rglob("*")):
            if f.is_file():
                tar.add(f, arcname=str(f.relative_to(work)))
    return forged


def test_a_bundle_re_signed_with_a_fresh_key_fails_against_the_trusted_key(tmp_path):
    root = tmp_path / "e"
    make_run(root)
    bundle = tmp_path / "evidence.tar.gz"
    res = cli("export", root, "-o", bundle)
    assert res.returncode == 0, res.stderr
    original = fingerprint(ledger_records(root)[0]["public_key"])
    assert f"key fingerprint {original}" in res.stdout  # what the verifier notes and compares later
    forger = Signer.load_or_create("forger", tmp_path / "forger-keys")
    forged = _forge_bundle(bundle, tmp_path / "x", forger)

    alone = cli("verify", "--bundle", forged, cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout  # self-consistent, and it says so plainly
    assert "only self-consistent" in alone.stdout and fingerprint(forger.public_key) in alone.stdout

    bad = cli("verify", "--bundle", forged, "--key", original, cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout
    assert f"not by the key you trust ({original})" in bad.stdout

    pem = tmp_path / "run.pub.pem"
    pem.write_bytes(public_key_pem(ledger_records(root)[0]["public_key"]))
    assert cli("verify", "--bundle", forged, "--key", pem, cwd=tmp_path).returncode == 1
    good = cli("verify", "--bundle", bundle, "--key", pem, cwd=tmp_path)
    assert good.returncode == 0 and "signed by the trusted key" in good.stdout and "self-consistent" not in good.stdout
    assert cli("verify", "--bundle", bundle, "--key", "sha256:" + original.upper(), cwd=tmp_path).returncode == 0


def test_verify_of_a_folder_checks_the_trusted_key_too(tmp_path):
    root = tmp_path / "e"
    make_run(root, values=(2.0,))
    other = Signer.load_or_create("other", tmp_path / "other-keys")
    assert cli("verify", root, "--key", fingerprint(ledger_records(root)[0]["public_key"])).returncode == 0
    res = cli("verify", root, "--key", other.fingerprint)
    assert res.returncode == 1 and "not by the key you trust" in res.stdout


def test_key_specs_fingerprint_pem_raw_and_hex(tmp_path):
    s = Signer.load_or_create("k", tmp_path / "keys")
    fp = s.fingerprint
    assert fp == hashlib.sha256(bytes.fromhex(s.public_key)).hexdigest() == fingerprint(s.public_key)
    (tmp_path / "k.pem").write_bytes(public_key_pem(s.public_key))
    (tmp_path / "k.raw").write_bytes(bytes.fromhex(s.public_key))
    (tmp_path / "k.hex").write_text(s.public_key + "\n")
    for spec in (fp, f"sha256:{fp}", str(tmp_path / "k.pem"), str(tmp_path / "k.raw"), str(tmp_path / "k.hex"), s.public_key):
        assert fp in trusted_key_ids(spec), spec
    res = cli("verify", "--bundle", tmp_path / "missing.tar.gz", "--key", "abc")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (tmp_path / "b").write_bytes(b"x")
    res = cli("verify", "--bundle", tmp_path / "b", "--key", "not-a-key")
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError):
        fingerprint("zz")


# ---- in-toto statements in DSSE envelopes -------------------------------------------------------

STANDALONE = r'''
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

envelopes, pem, trusted = sys.argv[1], sys.argv[2], sys.argv[3]
pub = load_pem_public_key(open(pem, "rb").read())
keyid = hashlib.sha256(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()
assert keyid == trusted, "the key file is not the key I trust"
key = SSlibKey.from_crypto(pub, keyid=keyid)
n = 0
for line in open(envelopes):
    env = Envelope.from_dict(json.loads(line))
    assert env.payload_type == "application/vnd.in-toto+json"
    env.verify([key], 1)
    st = json.loads(env.payload)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://autoresearch.dev/experiment/v1"
    n += 1
assert "autoresearch" not in sys.modules
print(f"verified {n}")
'''


def test_in_toto_export_verifies_with_openssl_and_a_standalone_script(tmp_path):
    root = tmp_path / "e"
    make_run(root)
    out = tmp_path / "run.intoto.jsonl"
    res = cli("export", root, "--format", "in-toto", "-o", out)
    assert res.returncode == 0, res.stderr
    pem = tmp_path / "run.intoto.jsonl.pub.pem"
    records = ledger_records(root)
    fp = fingerprint(records[0]["public_key"])
    assert pem.is_file() and fp in res.stdout
    exps = [r for r in records if r.get("kind") == "experiment"]
    envelopes = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(envelopes) == len(exps) == 4
    for i, (env, rec) in enumerate(zip(envelopes, exps)):
        assert env["payloadType"] == "application/vnd.in-toto+json"
        assert env["signatures"][0]["keyid"] == fp
        payload = base64.b64decode(env["payload"])
        pae = b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(payload), payload)
        (tmp_path / "pae.bin").write_bytes(pae)
        (tmp_path / "sig.bin").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
        ossl = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin",
                               "-in", tmp_path / "pae.bin", "-sigfile", tmp_path / "sig.bin"],
                              capture_output=True, text=True, timeout=30)
        assert ossl.returncode == 0 and "Signature Verified Successfully" in ossl.stdout, ossl.stdout + ossl.stderr
        st = json.loads(payload)
        digests = {s["name"]: s["digest"] for s in st["subject"]}
        pred = st["predicate"]
        assert pred["experiment"]["id"] == rec["id"] == i
        assert pred["decision"]["status"] == rec["status"] and pred["measurement"]["metric"] == rec["metric"]
        assert pred["run"]["key_fingerprint"] == fp and pred["budget"]["budget_s"] == rec["budget_s"]
        assert pred["sandbox"][0]["enforced"] == rec["runs"][0]["enforced"]
        assert digests["git-tree:."] == {"gitTree": git(root, "rev-parse", f"{rec['commit']}^{{tree}}").strip()}
        assert digests[f"git-commit:{records[0]['branch']}"] == {"gitCommit": rec["commit"]}
        assert digests["diff.patch"] == {"sha256": rec["diff_sha256"]}
        if rec["status"] != "baseline":
            patch = root / ".autoresearch/runs" / str(rec["id"]) / "diff.patch"
            assert hashlib.sha256(patch.read_bytes()).hexdigest() == rec["diff_sha256"]
        line = (root / ".autoresearch/ledger.jsonl").read_bytes().splitlines()[i + 1]
        assert digests[f"ledger.jsonl#{i + 2}"] == {"sha256": hashlib.sha256(line).hexdigest()}
    script = tmp_path / "check.py"
    script.write_text(STANDALONE)
    alone = subprocess.run([sys.executable, "-I", script, out, pem, fp], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)
    assert alone.returncode == 0 and "verified 4" in alone.stdout, alone.stderr
    ours = cli("verify", "--in-toto", out, "--key", fp, cwd=tmp_path)
    assert ours.returncode == 0 and "OK: the attestations are intact" in ours.stdout, ours.stdout


def test_an_altered_or_re_signed_envelope_fails_every_verifier(tmp_path):
    root = tmp_path / "e"
    make_run(root, values=(2.5,))
    out = tmp_path / "a.jsonl"
    assert cli("export", root, "--format", "in-toto", "-o", out).returncode == 0
    fp = fingerprint(ledger_records(root)[0]["public_key"])
    pem = tmp_path / "trusted.pem"
    pem.write_bytes((tmp_path / "a.jsonl.pub.pem").read_bytes())
    lines = out.read_text().splitlines()
    env = json.loads(lines[1])
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["decision"]["status"] = "keep"  # claim the discard was kept
    env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    out.write_text("\n".join([lines[0], json.dumps(env)]) + "\n")
    res = cli("verify", "--in-toto", out, "--key", pem)
    assert res.returncode == 1 and "a.jsonl line 2: no valid signature" in res.stdout
    payload = base64.b64decode(env["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(payload), payload)
    (tmp_path / "pae.bin").write_bytes(pae)
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
    ossl = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin", "-in", tmp_path / "pae.bin",
                           "-sigfile", tmp_path / "sig.bin"], capture_output=True, text=True, timeout=30)
    assert ossl.returncode != 0

    # A forger re-signs the altered statement with a fresh key and ships its public key beside it.
    forger = Signer.load_or_create("forger", tmp_path / "forger-keys")
    from securesystemslib.dsse import Envelope

    forged = Envelope(payload, env["payloadType"], {})
    forged.sign(forger.dsse_signer())
    out.write_text("\n".join([lines[0], json.dumps(forged.to_dict())]) + "\n")
    (tmp_path / "a.jsonl.pub.pem").write_bytes(public_key_pem(forger.public_key))
    assert cli("verify", "--in-toto", out, "--key", pem).returncode == 1
    res = cli("verify", "--in-toto", out, "--key", fp)
    assert res.returncode == 2 and "no public key matching" in res.stderr  # the key beside it is not the trusted one
    # Dropping an envelope is noticed too.
    out.write_text(lines[1] + "\n")
    (tmp_path / "a.jsonl.pub.pem").write_bytes(pem.read_bytes())
    res = cli("verify", "--in-toto", out, "--key", fp)
    assert res.returncode == 1 and "expected 0" in res.stdout


def test_in_toto_export_and_verify_user_errors(tmp_path, monkeypatch):
    root = tmp_path / "e"
    make_run(root, values=())
    res = cli("verify", "--in-toto", tmp_path / "x.jsonl")
    assert res.returncode == 2 and "--key" in res.stderr
    res = cli("export", root, "--format", "in-toto", env={"AUTORESEARCH_KEY_DIR": str(tmp_path / "empty")})
    assert res.returncode == 2 and "private key" in res.stderr and "Traceback" not in res.stderr
    path = root / ".autoresearch/ledger.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["metric"] = 0.0
    path.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    res = cli("export", root, "--format", "in-toto")
    assert res.returncode == 2 and "not intact" in res.stderr and len(res.stderr.strip().splitlines()) == 1
