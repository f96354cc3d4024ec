"""Per-experiment cost of the `llm` proposer, measured against the scripted server on 127.0.0.1.

For each provider and history length it runs `--n` proposals and reports the median and 90th
percentile of propose() wall time, the same for a bare SDK call with the same prompt (the baseline
taken in the same run), their ratio (what prompt building, parsing and saving add), and the tokens
per experiment (the scripted server counts 4 characters as one token, roughly what real tokenizers do
for code). A repair turn costs one more call; its row shows the tokens of a one-repair experiment.

    python benchmarks/llm_proposer.py [--n 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from fake_llm_server import ScriptedLLMServer, reply  # noqa: E402

from autoresearch.config import parse_config  # noqa: E402
from autoresearch.proposers import Context  # noqa: E402
from autoresearch.proposers.llm import LLMProposer  # noqa: E402
from autoresearch.proposers.prompt import build_prompt  # noqa: E402

KEY = "bench-key"
QUICKSTART = ROOT / "examples" / "quickstart"


def files() -> dict[str, str]:
    train = QUICKSTART / "train.py"
    if train.is_file():
        return {"train.py": train.read_text()}
    return {"train.py": "LEARNING_RATE = 0.001\nHIDDEN_SIZE = 32\n" + "x = 1\n" * 150}


def history(n: int) -> list[dict]:
    recs = [{"kind": "experiment", "id": 0, "status": "baseline", "metric": 0.5, "description": "baseline", "reason": "first"}]
    for i in range(1, n + 1):
        status = "keep" if i % 7 == 0 else "crash" if i % 11 == 0 else "discard"
        recs.append({"kind": "experiment", "id": i, "status": status, "metric": None if status == "crash" else 0.5 - i * 1e-4,
                     "delta": -1e-4, "description": f"LEARNING_RATE 0.001 -> 0.00{i % 9 + 1} and HIDDEN_SIZE tweak {i}",
                     "reason": "within noise" if status == "discard" else "beats best",
                     "log_tail": "Traceback (most recent call last):\n  File \"train.py\", line 40\nValueError: bad shape\n" if status == "crash" else ""})
    return recs


def edit_reply(text: str) -> str:
    line = next(ln for ln in text.splitlines() if ln.startswith("LEARNING_RATE"))
    return f"DESCRIPTION: lower the learning rate\n\ntrain.py\n<<<<<<< SEARCH\n{line}\n=======\nLEARNING_RATE = 0.0007\n>>>>>>> REPLACE\n"


def config(provider: str, base: str, hist: int):
    tmp = ROOT / "examples" / "quickstart"
    protected = ["prepare.py", "evaluate.py"] if (tmp / "prepare.py").is_file() else []
    return parse_config({
        "experiment": {"run": "python train.py", "editable": ["train.py"], "protected": protected},
        "metric": {"name": "val_loss"},
        "proposer": {"kind": "llm", "provider": provider, "model": "bench", "base_url": base, "api_key_env": "BENCH_KEY",
                     "history": hist, "max_retries": 0},
    }, Path("autoresearch.toml"))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    os.environ["BENCH_KEY"] = KEY
    fs = files()
    good = edit_reply(fs["train.py"])
    bad = good.replace("LEARNING_RATE = 0.0", "LEARNING_RATE = 9.9", 1)  # a SEARCH that does not match
    root = QUICKSTART if QUICKSTART.is_dir() else Path(tempfile.mkdtemp())
    print(f"{'provider':9} {'history':>7} {'propose p50 ms':>15} {'p90':>6} {'bare SDK p50 ms':>16} {'ratio':>6} "
          f"{'in tok':>7} {'out tok':>7} {'in tok w/ 1 repair':>19}")
    for provider in ("openai", "anthropic"):
        for hist_n in (0, 20, 100):
            hist = history(hist_n)
            with ScriptedLLMServer(key=KEY, default=reply(good)) as srv, tempfile.TemporaryDirectory() as tmp:
                base = srv.openai_base_url if provider == "openai" else srv.url
                cfg = config(provider, base, 20)
                prop = LLMProposer(cfg, [])
                times, bare, tokens = [], [], []
                for i in range(args.n):
                    run_dir = Path(tmp) / str(i)
                    ctx = Context(config=cfg, root=root, worktree=root, files=dict(fs), history=hist, best=hist[0],
                                  noise=0.002, run_dir=run_dir, experiment_id=len(hist))
                    t0 = time.perf_counter()
                    p = prop.propose(ctx)
                    times.append(time.perf_counter() - t0)
                    tokens.append((p.meta["usage"]["input_tokens"], p.meta["usage"]["output_tokens"]))
                    # Baseline: the same request straight through the SDK, no prompt building or parsing.
                    system, user = build_prompt(ctx)
                    t0 = time.perf_counter()
                    prop._chat.complete(system, [{"role": "user", "content": user}], False)
                    bare.append(time.perf_counter() - t0)
                srv.push(reply(bad), reply(good))
                ctx.run_dir = Path(tmp) / "repair"
                repaired = prop.propose(ctx)
                prop.close()
            p50, b50 = statistics.median(times), statistics.median(bare)
            print(f"{provider:9} {hist_n:>7} {p50 * 1e3:>15.1f} {pct(times, 0.9) * 1e3:>6.1f} {b50 * 1e3:>16.1f} "
                  f"{p50 / b50:>6.2f} {statistics.median(t[0] for t in tokens):>7.0f} {statistics.median(t[1] for t in tokens):>7.0f} "
                  f"{repaired.meta['usage']['input_tokens']:>19}")


if __name__ == "__main__":
    main()
