"""Dashboard and report numbers, measured on this machine.

    python benchmarks/dashboard.py [--n 10000] [--report-n 1000] [--updates 10]

1. Page load: from navigation to the page drawn with every record, in headless chromium (Debian's,
   through playwright), for a signed ledger of N experiments; on their own, the server's start (it
   reads the whole ledger once), its share of a load, and Optuna's importances (fetched after the
   first paint).
2. Update latency: from `Ledger.append` of one signed record to the page having drawn it (median of
   --updates appends, each waited for), over the server-sent event stream.
3. The static report of --report-n experiments (diffs and logs on disk): bytes, gzipped bytes, time.
Each is also taken on a 100-experiment ledger in the same run, and printed as a ratio against it.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from autoresearch.dashboard import make_server
from autoresearch.ledger import Ledger
from autoresearch.report import write_report_html
from autoresearch.signing import Signer

CHROMIUM = "/usr/bin/chromium"
KNOBS = {"LEARNING_RATE": (1e-4, 1e-1), "WEIGHT_DECAY": (0.0, 0.3), "DEPTH": (2, 12), "WARMUP_RATIO": (0.0, 0.2)}


def record(i: int, rng: random.Random, best: float) -> dict:
    """One experiment shaped like the loop's: tune params, a repeat or two, host and hashes."""
    params = {k: (rng.randint(*v) if isinstance(v[0], int) else round(rng.uniform(*v), 5)) for k, v in KNOBS.items()}
    status = "baseline" if i == 0 else rng.choices(["discard", "keep", "crash", "timeout"], [85, 4, 8, 3])[0]
    metric = None if status in ("crash", "timeout") else (best - rng.uniform(0.001, 0.01) if status == "keep" else best + rng.uniform(0, 0.3))
    runs = [{"seed": k, "exit_code": 1 if status == "crash" else 0, "wall_s": round(rng.uniform(280, 300), 3),
             "peak_rss_mb": 812.5, "timed_out": status == "timeout", "metrics": {"val_bpb": metric, "mfu": 27.1},
             "log_sha256": "e" * 64, "sandbox": "bwrap", "enforced": {"network": True, "hidden": ["data/val.bin"]}}
            for k in range(3 if i == 0 else 1)]
    rec = {"kind": "experiment", "id": i, "status": status, "reason": f"val_bpb {metric} vs best {best:.4f}; a keep needs 0.002 below it",
           "flags": [], "description": ", ".join(f"{k} -> {v}" for k, v in list(params.items())[:2]), "proposer": "tune",
           "proposal": {"params": params, "base": params, "strategy": "tpe", "cost_usd": 0.0},
           "parent": f"{i:040x}", "commit": f"{i + 1:040x}", "tree": "c" * 40, "diff_sha256": "d" * 64, "changed": ["train.py"],
           "metric": metric, "metrics": runs[0]["metrics"], "runs": runs, "best": min(best, metric or best),
           "delta": None if metric is None or i == 0 else metric - best, "noise_used": 0.001, "min_delta_used": 0.002,
           "memory_gb": 0.8, "command": "uv run train.py", "protected": {"prepare.py": "f" * 64, "evaluate.py": "f" * 64},
           "seeds": [r["seed"] for r in runs], "host": {"cpu": "x86_64", "cores": 2, "python": "3.11.7"},
           "start": "2026-11-26T00:00:00.000+00:00", "end": "2026-11-26T00:05:00.000+00:00"}
    if i == 0:
        rec["noise"] = 0.001
    if status in ("crash", "timeout"):
        rec["log_tail"] = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"
    return rec


def build(root: Path, n: int, files: bool = False) -> tuple[Ledger, random.Random, float]:
    """A signed ledger of N experiments; with files, each experiment's diff.patch and run.log too."""
    state = root / ".autoresearch"
    state.mkdir(parents=True)
    ledger = Ledger(state, signer=Signer.load_or_create("bench-dashboard"))
    ledger.append({"kind": "start", "tag": "bench", "branch": "autoresearch/bench", "metric": "val_bpb", "goal": "minimize",
                   "public_key": ledger.signer.public_key, "key_id": "bench-dashboard"})
    rng, best = random.Random(0), 1.2
    for i in range(n):
        rec = ledger.append(record(i, rng, best))
        if rec["status"] in ("baseline", "keep"):
            best = rec["metric"]
        if files:
            run_dir = state / "runs" / str(i)
            run_dir.mkdir(parents=True)
            (run_dir / "diff.patch").write_text("--- a/train.py\n+++ b/train.py\n@@ -30,3 +30,3 @@\n-LEARNING_RATE = 0.001\n+LEARNING_RATE = 0.002\n"
                                                " DEPTH = 8\n-WEIGHT_DECAY = 0.1\n+WEIGHT_DECAY = 0.05\n")
            (run_dir / "run.log").write_text("".join(f"step {s:5d} | loss {3 - s / 1e4:.4f} | 1.2e5 tok/s\n" for s in range(0, 5000, 50)))
    return ledger, rng, best


def measure_page(root: Path, ledger: Ledger, rng: random.Random, best: float, updates: int, browser) -> dict:
    t = time.perf_counter()
    srv = make_server(root, 0)  # reads the whole ledger once
    start_s = time.perf_counter() - t
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        t = time.perf_counter()
        srv.dashboard.page()
        server_s = time.perf_counter() - t
        t = time.perf_counter()
        srv.dashboard.importances()
        importances_s = time.perf_counter() - t
        srv.dashboard._importances = None  # the browser's own fetch below computes them again
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        n = len(ledger.experiments())
        t = time.perf_counter()
        page.goto(srv.url)
        page.wait_for_function(f"document.body.dataset.records === '{n}'", polling="raf", timeout=120_000)
        load_s = time.perf_counter() - t
        page.wait_for_selector("#live.on", timeout=30_000)
        first_draw_ms = float(page.evaluate("document.body.dataset.drawMs"))
        lat, draws = [], []
        for _ in range(updates):
            n += 1
            t = time.perf_counter()
            rec = ledger.append(record(n - 1, rng, best))
            page.wait_for_function(f"document.body.dataset.records === '{n}'", polling="raf", timeout=60_000)
            lat.append(time.perf_counter() - t)
            draws.append(float(page.evaluate("document.body.dataset.drawMs")))
            best = rec.get("best") or best
        page.close()
        return {"start_s": start_s, "server_s": server_s, "importances_s": importances_s, "load_s": load_s,
                "first_draw_ms": first_draw_ms, "update_s": statistics.median(lat), "update_max_s": max(lat),
                "draw_ms": statistics.median(draws)}
    finally:
        srv.shutdown()
        srv.server_close()


def measure_report(root: Path, n: int) -> dict:
    ledger, _, _ = build(root, n, files=True)
    path = root / ".autoresearch" / "report.html"
    t = time.perf_counter()
    write_report_html(ledger.experiments(), ledger.header(), path, state_dir=ledger.state_dir)
    seconds = time.perf_counter() - t
    data = path.read_bytes()
    return {"bytes": len(data), "gzip": len(gzip.compress(data)), "s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--report-n", type=int, default=1_000)
    ap.add_argument("--updates", type=int, default=10)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["AUTORESEARCH_KEY_DIR"] = str(tmp / "keys")  # never the user's keys
        small_r, big_r = measure_report(tmp / "r-small", 100), measure_report(tmp / "r-big", args.report_n)
        print(f"static report: {args.report_n} experiments {big_r['bytes'] / 1e6:.2f} MB ({big_r['gzip'] / 1e6:.2f} MB gzipped), "
              f"written in {big_r['s']:.2f} s; 100 experiments {small_r['bytes'] / 1e6:.2f} MB "
              f"({big_r['bytes'] / small_r['bytes']:.1f}x for {args.report_n / 100:.0f}x the experiments)")
        t = time.perf_counter()
        small, big = build(tmp / "small", 100), build(tmp / "big", args.n)
        print(f"built signed ledgers of 100 and {args.n} experiments in {time.perf_counter() - t:.1f} s "
              f"({(tmp / 'big/.autoresearch/ledger.jsonl').stat().st_size / 1e6:.1f} MB)")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-quic",
                                                                         "--disable-background-networking", "--disable-sync"])
            try:
                measure_page(tmp / "small", *small, 2, browser)  # warm the browser and the imports
                a = measure_page(tmp / "small", *small, args.updates, browser)
                b = measure_page(tmp / "big", *big, args.updates, browser)
            finally:
                browser.close()
        for name, r in (("100", a), (str(args.n), b)):
            print(f"{name:>6} experiments: server start {r['start_s']:.2f} s; page load {r['load_s']:.2f} s (the server writes the page "
                  f"in {r['server_s']:.2f} s, the first draw takes {r['first_draw_ms']:.0f} ms; importances {r['importances_s']:.2f} s, "
                  f"after the first paint); update latency median {r['update_s'] * 1e3:.0f} ms (drawing {r['draw_ms']:.0f} ms), "
                  f"max {r['update_max_s'] * 1e3:.0f} ms")
        print(f"ratios {args.n} / 100: load {b['load_s'] / a['load_s']:.1f}x, update {b['update_s'] / a['update_s']:.1f}x; "
              f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
