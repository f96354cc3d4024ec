"""RFC 3161 time-stamps of the chain head, against a LOCAL time-stamp authority: `openssl ts -reply`
behind a small http.server on 127.0.0.1 (a thread that stops itself). From the attacker's side:
even the holder of the run's key cannot rewrite or truncate history older than a token."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from autoresearch.config import EvidenceConfig
from autoresearch.ledger import Ledger, chain_head
from autoresearch.signing import Signer, fingerprint
from autoresearch.timestamp import maybe_stamp, request_token
from autoresearch.verify import verify_bundle, verify_run
from conftest import cli, git
from test_evidence import ledger_records, make_run, report, resign

OPENSSL_CNF = """\
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[tsa_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,nonRepudiation
extendedKeyUsage = critical,timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[tsa]
default_tsa = tsa_config
[tsa_config]
serial = {dir}/serial
crypto_device = builtin
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.2
digests = sha256, sha384, sha512
accuracy = secs:1
ess_cert_id_alg = sha256
ordering = no
tsa_name = no
ess_cert_id_chain = no
"""


class LocalTSA:
    """A CA and a TSA certificate made with openssl, and `openssl ts -reply` served over HTTP on
    loopback. Single-threaded, bounded request size, shut down by the fixture or after 5 minutes."""

    def __init__(self, folder: Path, name: str):
        self.dir = folder
        folder.mkdir(parents=True)
        self.cnf = folder / "openssl.cnf"
        self.cnf.write_text(OPENSSL_CNF.format(dir=folder))
        (folder / "serial").write_text("01\n")
        self.ca = folder / "ca.pem"
        self.requests = 0

        def ossl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", f"/CN={name} root",
             "-extensions", "ca_ext", "-config", str(self.cnf))
        ossl("req", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", f"/CN={name} tsa")
        ossl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tsa.pem",
             "-days", "30", "-extfile", str(self.cnf), "-extensions", "tsa_ext")
        tsa = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= 65536:
                    self.send_error(400)
                    return
                query = tsa.dir / "q.tsq"
                query.write_bytes(self.rfile.read(length))
                tsa.requests += 1
                out = tsa.dir / "r.tsr"
                proc = subprocess.run(["openssl", "ts", "-reply", "-queryfile", str(query), "-signer", "tsa.pem",
                                       "-inkey", "tsa.key", "-out", str(out), "-config", str(tsa.cnf)],
                                      cwd=tsa.dir, capture_output=True, timeout=30)
                if proc.returncode != 0:
                    self.send_error(500)
                    return
                body = out.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tsr"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.deadline = threading.Timer(300, self.server.shutdown)  # never outlives a stuck test session
        self.deadline.daemon = True
        self.deadline.start()

    def close(self) -> None:
        self.deadline.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def tsa(tmp_path):
    t = LocalTSA(tmp_path / "tsa", "trusted")
    yield t
    t.close()


@pytest.fixture
def rogue_tsa(tmp_path):
    t = LocalTSA(tmp_path / "rogue", "rogue")
    yield t
    t.close()


def stamped_run(root: Path, tsa: LocalTSA, values=(2.0, 2.5, 1.5, 3.5)):
    """A run whose loop stamps after every append (every 2 records) and at the stop (forced),
    as the loop's hook does; the TSA's CA is trusted in [evidence]."""
    evidence = f'timestamp_url = "{tsa.url}"\ntimestamp_every = 2\ntimestamp_ca = "{tsa.ca}"\n'
    warnings: list[str] = []

    def hook(session):
        maybe_stamp(session.ws.state, session.config.evidence, *chain_head(session.ws.state), warn=warnings.append)

    s = make_run(root, values, evidence=evidence, after_append=hook)
    maybe_stamp(s.ws.state, s.config.evidence, *chain_head(s.ws.state), force=True, warn=warnings.append)
    assert not warnings, warnings
    return s


def tokens(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".autoresearch/timestamps").glob("*.tsr"))


def test_stamps_are_stored_beside_the_ledger_and_verify_checks_them(tmp_path, tsa):
    root = tmp_path / "e"
    stamped_run(root, tsa)  # start + baseline + 4 experiments = 6 records: stamps at 2, 4, 6 (the stop adds none)
    state = root / ".autoresearch"
    lines = (state / "ledger.jsonl").read_bytes().splitlines()
    assert [int(n.split("-")[0]) for n in tokens(root)] == [2, 4, 6]
    assert tsa.requests == 3
    for name in tokens(root):
        count, head = name[:-4].split("-")
        assert head == hashlib.sha256(lines[int(count) - 1]).hexdigest()
        # a third party checks a token with openssl alone: the imprint is the chain head itself
        ossl = subprocess.run(["openssl", "ts", "-verify", "-in", str(state / "timestamps" / name), "-digest", head,
                               "-CAfile", str(tsa.ca), "-untrusted", str(tsa.dir / "tsa.pem")],
                              capture_output=True, text=True, timeout=30)
        assert "Verification: OK" in ossl.stdout, ossl.stdout + ossl.stderr
    rep = verify_run(root)
    assert rep.ok, report(rep)
    assert "timestamps: 3 tokens match the chain (signed by the trusted TSA); latest record 6" in report(rep)
    res = cli("verify", root)  # the CA comes from [evidence] timestamp_ca
    assert res.returncode == 0 and "signed by the trusted TSA" in res.stdout, res.stdout
    # Stamping the same head again asks nobody.
    again = maybe_stamp(state, EvidenceConfig(timestamp_url=tsa.url, timestamp_every=2), *chain_head(state), force=True)
    assert again is not None and tsa.requests == 3


def test_truncating_a_stamped_ledger_fails_verify_naming_the_token(tmp_path, tsa):
    """The key holder cuts the last records (and makes results.tsv and the branch agree): without
    the token this would pass; with it, verify names the token that saw more records."""
    root = tmp_path / "e"
    stamped_run(root, tsa)
    state = root / ".autoresearch"
    lines = (state / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    (state / "ledger.jsonl").write_bytes(b"".join(lines[:5]))
    Ledger(state).rewrite_results()
    records = ledger_records(root)
    kept = [r for r in records if r.get("status") == "keep"]
    git(root, "update-ref", f"refs/heads/{records[0]['branch']}", kept[-1]["commit"] if kept else records[0]["base_commit"])
    rep = verify_run(root)
    assert not rep.ok
    assert "timestamps/6-" in report(rep) and "the ledger now holds 5: records were removed" in report(rep)
    (state / "timestamps").rename(state / "aside")
    assert verify_run(root).ok  # the forgery itself is self-consistent; only the witness catches it


def test_rewriting_an_old_record_and_re_signing_with_the_run_key_fails_verify(tmp_path, tsa):
    root = tmp_path / "e"
    stamped_run(root, tsa)
    state = root / ".autoresearch"
    records = ledger_records(root)
    assert records[3]["status"] == "discard"
    records[3]["reason"] = "never mind"  # record 4: an old discard, rewritten
    records[3]["metric"] = 0.0
    header = records[0]
    signer = Signer.load_or_create(header["key_id"])  # the real key: the attacker holds it
    assert signer.public_key == header["public_key"]
    (state / "ledger.jsonl").write_bytes(resign(records, signer))
    Ledger(state).rewrite_results()
    rep = verify_run(root)
    text = report(rep)
    assert not rep.ok
    assert "timestamps/4-" in text and "no longer hashes to the head the TSA stamped" in text
    assert "timestamps/2-" not in text  # history before the rewrite is still what the TSA saw
    res = cli("verify", root)
    assert res.returncode == 1 and "history older than the token was rewritten" in res.stdout


def test_a_token_from_an_untrusted_tsa_fails(tmp_path, tsa, rogue_tsa):
    """An attacker who forges a ledger can stamp it at a TSA of their own; it is not the one trusted."""
    root = tmp_path / "e"
    stamped_run(root, rogue_tsa, values=(2.0,))
    rep = verify_run(root, tsa_ca=tsa.ca)
    assert not rep.ok
    assert "is not signed by the trusted time-stamp authority" in report(rep)
    assert verify_run(root, tsa_ca=rogue_tsa.ca).ok
    res = cli("verify", root, "--tsa-ca", tsa.ca)
    assert res.returncode == 1 and "timestamps/2-" in res.stdout


def test_without_a_trusted_tsa_certificate_verify_says_the_signer_was_not_checked(tmp_path, tsa):
    root = tmp_path / "e"
    stamped_run(root, tsa, values=(2.0,))
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace(f'timestamp_ca = "{tsa.ca}"', ""))
    rep = verify_run(root)
    assert rep.ok and "their signer NOT checked" in report(rep)


def test_bundle_carries_the_tokens_and_verify_bundle_checks_them(tmp_path, tsa):
    root = tmp_path / "e"
    stamped_run(root, tsa, values=(2.0, 2.5))
    bundle = tmp_path / "b.tar.gz"
    assert cli("export", root, "-o", bundle).returncode == 0
    with tarfile.open(bundle) as tar:
        assert sorted(n for n in tar.getnames() if n.startswith("timestamps/")) == [f"timestamps/{t}" for t in tokens(root)]
    fp = fingerprint(ledger_records(root)[0]["public_key"])
    rep = verify_bundle(bundle, key=fp, tsa_ca=tsa.ca)
    assert rep.ok and "signed by the trusted TSA" in report(rep), report(rep)
    res = cli("verify", "--bundle", bundle, "--key", fp, "--tsa-ca", tsa.ca, cwd=tmp_path)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("where", ["closed-port", "http-500", "garbage"])
def test_an_unreachable_or_broken_tsa_is_one_warning_never_a_crash(tmp_path, where):
    class Bad(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if where == "http-500":
                self.send_error(500)
                return
            body = b"not a time-stamp reply"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Bad)
    port = server.server_address[1]
    if where == "closed-port":
        server.server_close()
    else:
        threading.Thread(target=server.handle_request, daemon=True).start()
    state = tmp_path / "state"
    state.mkdir()
    line = b'{"kind":"start"}'
    (state / "ledger.jsonl").write_bytes(line + b"\n")
    warnings: list[str] = []
    ev = EvidenceConfig(timestamp_url=f"http://127.0.0.1:{port}/tsr", timestamp_every=1, timestamp_timeout=5)
    got = maybe_stamp(state, ev, 1, hashlib.sha256(line).hexdigest(), warn=warnings.append)
    assert got is None and len(warnings) == 1 and "the run goes on" in warnings[0]
    assert not (state / "timestamps").exists() or not list((state / "timestamps").iterdir())
    if where != "closed-port":
        server.server_close()


def test_stamping_is_off_without_a_url_and_follows_timestamp_every(tmp_path, tsa):
    state = tmp_path / "state"
    state.mkdir()
    lines = [json.dumps({"n": i}).encode() for i in range(3)]
    (state / "ledger.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    head = hashlib.sha256(lines[2]).hexdigest()
    assert maybe_stamp(state, EvidenceConfig(), 3, head, force=True) is None
    ev = EvidenceConfig(timestamp_url=tsa.url, timestamp_every=2)
    assert maybe_stamp(state, ev, 3, head) is None and tsa.requests == 0
    assert maybe_stamp(state, ev, 3, head, force=True).name == f"3-{head}.tsr"
    warnings: list[str] = []
    assert maybe_stamp(state, ev, 2, head, warn=warnings.append) is None  # head is not record 2's hash
    assert warnings and tsa.requests == 1
    assert request_token(lines[0], tsa.url)  # the low-level call returns the checked DER reply


def test_bad_evidence_config_is_one_sentence(tmp_path):
    from conftest import make_experiment

    root = make_experiment(tmp_path / "e")
    with open(root / "autoresearch.toml", "a") as fh:
        fh.write('\n[evidence]\ntimestamp_url = "ftp://x"\n')
    res = cli("run", root, "-n", "0")
    assert res.returncode == 2 and "timestamp_url" in res.stderr and "Traceback" not in res.stderr


def test_the_ledgers_own_chain_head_agrees_with_the_file(tmp_path):
    """The loop stamps with `session.ledger.chain_head()` (no re-read); it must be the file's head."""
    root = tmp_path / "e"
    s = make_run(root, values=(2.0,))
    assert s.ledger.chain_head() == chain_head(s.ws.state)
    assert Ledger(s.ws.state).chain_head() == chain_head(s.ws.state)
