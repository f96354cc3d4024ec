"""Signing and chaining overhead per ledger record, and the cost of checking them (issue 5).

    python benchmarks/signing.py [--records 10000]

A record here looks like a real experiment record: host info, three runs with metrics, a proposal
with parameters and a 50-line log tail (about 4 KB of canonical JSON). Printed, each as the median
over all records, in microseconds:

- sign+chain: what the ledger adds to each append before the write: canonical JSON of the record
  with `prev`, the Ed25519 signature, the canonical line with `sig`, and the sha256 of that line;
- canonical JSON alone (the share of the above that is serialisation, not cryptography);
- checking every record's own signature: parse the line, re-serialise without `sig`, check the
  signature, hash the line for the next link. `autoresearch verify` does less and proves the same:
  it hashes every link and checks only the last signature, which covers every earlier line through
  the chain (per-record signatures are checked only to name the first bad record). Its time on
  10,000 records (goal <= 2 s) is measured on the real command by benchmarks/harness.py;
- Ledger.append end to end (with its fsync), over 200 records, when the ledger module is present.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from autoresearch.hostinfo import host_info
from autoresearch.signing import Signer, canonical_json, verify_signature


def make_record(i: int, host: dict) -> dict:
    runs = [
        {"seed": s, "exit_code": 0, "wall_s": 301.2 + s, "peak_rss_mb": 2211.5, "timed_out": False,
         "metrics": {"val_bpb": 0.9979 - i * 1e-5 + s * 1e-4, "training_seconds": 300.1, "mfu_percent": 39.8}}
        for s in range(3)
    ]
    return {
        "kind": "experiment", "id": i, "status": "discard" if i % 3 else "keep",
        "reason": "no improvement beyond the noise floor (0.0012)",
        "description": f"MATRIX_LR 0.04 -> {0.04 - i * 1e-6:.6f}", "proposer": "tune",
        "proposal": {"params": {"MATRIX_LR": 0.031, "DEPTH": 8, "WARMUP_RATIO": 0.05}},
        "parent": "a" * 40, "commit": f"{i:040x}", "tree": "b" * 40, "diff_sha256": "c" * 64,
        "metric": 0.9979 - i * 1e-5, "metrics": runs[0]["metrics"], "runs": runs,
        "best": 0.9971, "delta": 0.0008, "start": "2025-01-01T00:00:00+00:00", "end": "2025-01-01T00:05:01+00:00",
        "host": host, "protected": {"prepare.py": "d" * 64, "autoresearch.toml": "e" * 64},
        "log_tail": "\n".join(f"step {k:05d} | loss 3.{k:04d} | lr 0.0400 | dt 312ms | tok/s 2,101,004" for k in range(50)),
    }


def median_us(xs: list[float]) -> float:
    return statistics.median(xs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000)
    args = ap.parse_args()
    n = args.records

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AUTORESEARCH_KEY_DIR"] = str(Path(tmp) / "keys")
        signer = Signer.load_or_create("bench")
        host = host_info()
        records = [make_record(i, host) for i in range(n)]

        sign_t, canon_t, lines = [], [], []
        prev = "0" * 64
        for rec in records:
            t0 = time.perf_counter()
            body = {**rec, "prev": prev}
            sig = signer.sign(canonical_json(body))
            line = canonical_json({**body, "sig": sig}) + b"\n"
            prev = hashlib.sha256(line.rstrip(b"\n")).hexdigest()
            sign_t.append(time.perf_counter() - t0)
            lines.append(line)
            t0 = time.perf_counter()
            canonical_json(body)
            canon_t.append(time.perf_counter() - t0)

        verify_t = []
        prev = "0" * 64
        total0 = time.perf_counter()
        for line in lines:
            t0 = time.perf_counter()
            rec = json.loads(line)
            sig = rec.pop("sig")
            assert rec["prev"] == prev
            assert verify_signature(signer.public_key, canonical_json(rec), sig)
            prev = hashlib.sha256(line.rstrip(b"\n")).hexdigest()
            verify_t.append(time.perf_counter() - t0)
        verify_total = time.perf_counter() - total0

        append_line = "Ledger.append (with fsync): not measured (autoresearch.ledger not importable)"
        try:
            from autoresearch.ledger import Ledger
        except ImportError:
            Ledger = None
        if Ledger is not None:
            ledger = Ledger(Path(tmp) / "state", signer=signer)
            ledger.append({"kind": "start", "tag": "bench", "metric": "val_bpb", "public_key": signer.public_key})
            append_t = []
            for rec in records[:200]:
                t0 = time.perf_counter()
                ledger.append(rec)
                append_t.append(time.perf_counter() - t0)
            append_line = f"Ledger.append end to end, with fsync (median of 200): {median_us(append_t):8.1f} µs"

    size = statistics.median(len(x) for x in lines)
    print(f"{n} records, median line {size:.0f} bytes, cryptography Ed25519")
    print(f"sign+chain per record (median):        {median_us(sign_t):8.1f} µs")
    print(f"  of which canonical JSON (median):    {median_us(canon_t):8.1f} µs")
    print(f"verify per record (median):            {median_us(verify_t):8.1f} µs")
    print(f"verify all {n} records (total):     {verify_total:8.3f} s")
    print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(append_line)


if __name__ == "__main__":
    main()
