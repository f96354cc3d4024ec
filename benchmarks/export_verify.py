"""In-toto export and independent verification of a 1,000-experiment run.

    python benchmarks/export_verify.py [--records 1000] [--openssl 1000]

Builds a synthetic signed ledger with the project's own Ledger and Signer (records shaped like
real ones, ~4 KB each, see benchmarks/signing.py), then times, each once over the whole ledger:

- baseline: `verify_chain` of the same ledger (what `autoresearch verify` spends on the chain);
- `export --format in-toto` (the library call): one in-toto Statement per record, DSSE-signed;
- verification by a third party with securesystemslib alone (no autoresearch code on the path:
  Envelope.from_dict + Envelope.verify per line), in a subprocess, start-up included;
- verification with `openssl pkeyutl -verify` over each envelope's PAE (one process per envelope,
  the recipe of docs/evidence.md), on the first --openssl envelopes;
- `autoresearch verify --in-toto` (the library call).
Printed as seconds, per envelope, and as ratios against the baseline. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STANDALONE = r'''
import hashlib, json, sys, time
t0 = time.perf_counter()
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
pub = load_pem_public_key(open(sys.argv[2], "rb").read())
key = SSlibKey.from_crypto(pub, keyid=hashlib.sha256(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest())
n = 0
for line in open(sys.argv[1]):
    env = Envelope.from_dict(json.loads(line))
    env.verify([key], 1)
    json.loads(env.payload)
    n += 1
assert "autoresearch" not in sys.modules
print(n, time.perf_counter() - t0)
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--openssl", type=int, default=1000, help="envelopes checked with openssl (one process each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ["AUTORESEARCH_KEY_DIR"] = str(tmp_path / "keys")
        from autoresearch.attest import envelope_signature, export_in_toto, verify_in_toto
        from autoresearch.hostinfo import host_info
        from autoresearch.ledger import Ledger, verify_chain
        from autoresearch.signing import Signer
        sys.path.insert(0, str(Path(__file__).parent))
        from signing import make_record  # the same realistic record as the signing benchmark

        root = tmp_path / "exp"
        state = root / ".autoresearch"
        signer = Signer.load_or_create("bench-export")
        ledger = Ledger(state, signer=signer)
        ledger.append({"kind": "start", "version": 1, "tag": "bench", "branch": "autoresearch/bench",
                       "base_commit": "a" * 40, "experiment_dir": ".", "metric": "val_bpb", "goal": "minimize",
                       "config": {"experiment": {"timeout": 600.0}}, "key_id": "bench-export",
                       "public_key": signer.public_key, "host": host_info()})
        host = host_info()
        for i in range(args.records):
            rec = make_record(i, host)
            rec["runs"] = [{**r, "sandbox": "bwrap", "enforced": {"network": True, "nproc_cap": True}} for r in rec["runs"]]
            rec.update(budget_s=300.0, command="uv run train.py", evaluate="")
            ledger.append(rec)
        size_mb = ledger.path.stat().st_size / 1e6

        t = time.perf_counter()
        assert verify_chain(ledger.path).ok
        base = time.perf_counter() - t

        out = tmp_path / "run.intoto.jsonl"
        t = time.perf_counter()
        _, n, _ = export_in_toto(root, out)
        export_s = time.perf_counter() - t
        pem = out.with_name(out.name + ".pub.pem")

        script = tmp_path / "standalone.py"
        script.write_text(STANDALONE)
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-I", str(script), str(out), str(pem)], capture_output=True, text=True, check=True)
        sslib_s = time.perf_counter() - t
        assert int(res.stdout.split()[0]) == n

        lines = out.read_text().splitlines()[: args.openssl]
        t = time.perf_counter()
        for line in lines:
            pae, sig = envelope_signature(json.loads(line))
            (tmp_path / "pae.bin").write_bytes(pae)
            (tmp_path / "sig.bin").write_bytes(sig)
            subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin", "-in",
                            str(tmp_path / "pae.bin"), "-sigfile", str(tmp_path / "sig.bin")], check=True, capture_output=True)
        openssl_s = time.perf_counter() - t

        t = time.perf_counter()
        assert verify_in_toto(out, signer.fingerprint).ok
        ours_s = time.perf_counter() - t
        env_kb = out.stat().st_size / n / 1e3

    print(f"{n} experiment records, ledger {size_mb:.1f} MB; in-toto file {env_kb:.1f} KB per envelope")
    print(f"baseline  verify_chain of the ledger          {base:7.3f} s   {base / n * 1e3:6.2f} ms/record   1.0x")
    for label, s, k in [("export --format in-toto", export_s, n),
                        ("securesystemslib alone (subprocess)", sslib_s, n),
                        (f"openssl pkeyutl, {len(lines)} processes", openssl_s, len(lines)),
                        ("autoresearch verify --in-toto", ours_s, n)]:
        print(f"{label:<42} {s:7.3f} s   {s / k * 1e3:6.2f} ms/record   {s / base * (n / k):5.1f}x")
    print(f"(openssl time per envelope includes process start-up; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
