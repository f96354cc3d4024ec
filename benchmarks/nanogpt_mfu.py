"""Training-step throughput and MFU of the bundled GPT, against a matmul peak measured alongside.

    python benchmarks/nanogpt_mfu.py [--rounds 30] [--set WIDTH=512 BATCH_SIZE=16] [--compile]

On a shared or virtual machine the matmul rate moves from second to second (on the development
VM a 2048x2048 bf16 matmul ran at 0.6-2.0 TFLOP/s within a minute), so an MFU against a peak
measured at another time says as much about the neighbours as about the code. This script
alternates, in one process: one peak sample (two 2048x2048 matmuls in the autocast dtype), then one training step
of each variant, for --rounds rounds, and reports each variant's median step time, tokens/s and
MFU against the median and the best peak sample of the same run, and against the peak cached by
`prepare.py` (what train.py's `mfu_percent` uses).

Variants: `shipped` is train.py's model and optimizers (Muon for the block matrices, AdamW for
the rest; code taken from the file itself), eager; `sdpa` swaps in SDPA's CPU attention kernel;
`--compile` adds the model under torch.compile, as train.py runs it by default (the compile time is
printed). `matmuls only` runs nothing but the model's matmuls (forward and backward shapes, in the
autocast dtype prepare.py chose): its MFU is the ceiling of this model shape on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nanogpt"


def train_module(overrides: list[str]) -> dict:
    """train.py's imports, hyperparameters and model classes (everything above its setup section)."""
    source = (EXAMPLE / "train.py").read_text()
    for item in overrides:
        name, value = item.split("=", 1)
        source, n = re.subn(rf"^{name} = [^ \n]+", f"{name} = {value}", source, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"train.py has no knob {name}")
    head = source.split("\n# Setup:", 1)[0].rsplit("\n# ----", 1)[0]
    sys.path.insert(0, str(EXAMPLE))
    module = type(sys)(f"train_head_{len(sys.modules)}")
    sys.modules[module.__name__] = module  # @dataclass looks its module up
    exec(compile(head, str(EXAMPLE / "train.py"), "exec"), module.__dict__)
    return module.__dict__


def make_step(ns: dict, vocab: int, seq_len: int, dtype: torch.dtype, *, compiled=False):
    torch.manual_seed(0)
    config = ns["GPTConfig"](vocab_size=vocab, seq_len=seq_len, depth=ns["DEPTH"], width=ns["WIDTH"],
                             head_dim=ns["HEAD_DIM"], mlp_ratio=ns["MLP_RATIO"])
    model = ns["GPT"](config)
    forward = torch.compile(model) if compiled else model
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
    others = [p for p in model.parameters() if all(p is not m for m in matrices)]
    optimizers = [torch.optim.AdamW(others, lr=1e-3, betas=(ns["ADAM_BETA1"], ns["ADAM_BETA2"]), fused=True),
                  ns["Muon"](matrices, lr=ns["MATRIX_LR"], momentum=ns["MUON_MOMENTUM"],
                             weight_decay=ns["WEIGHT_DECAY"], dtype=dtype)]
    batch = ns["BATCH_SIZE"]
    x = torch.randint(0, vocab, (batch, seq_len))
    y = torch.randint(0, vocab, (batch, seq_len))

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = forward(x)
        loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss.item()
    return step, model.flops_per_token() * batch * seq_len, batch * seq_len


def make_matmul_step(ns: dict, vocab: int, seq_len: int, dtype: torch.dtype):
    """Only the model's matmuls, in the shapes and orientations of its forward and backward pass, in
    `dtype`: the step time if nothing but matmuls cost anything, so its MFU is this shape's ceiling.
    Same FLOP count as GPT.flops_per_token."""
    depth, width, batch, ratio = ns["DEPTH"], ns["WIDTH"], ns["BATCH_SIZE"], ns["MLP_RATIO"]
    heads = max(1, width // ns["HEAD_DIM"])
    head_dim, tokens = width // heads, batch * seq_len

    def t(*shape):
        return torch.randn(*shape, dtype=dtype)
    pairs = []
    shapes = [(width, 3 * width), (width, width), (width, ratio * width), (ratio * width, width)] * depth + [(width, vocab)]
    shapes += [(min(32, width), heads) for layer in range(depth) if ns["has_value_embedding"](layer, depth)]  # the gates
    for k, n in shapes:
        x, w, g = t(tokens, k), t(n, k), t(tokens, n)
        pairs += [(x, w.t()), (g, w), (g.t(), x)]  # y = x w^T; dx = g w; dw = g^T x
    q, scores = t(batch * heads, seq_len, head_dim), t(batch * heads, seq_len, seq_len)
    for _ in range(depth):  # q k^T, p v; backward: dp = do v^T, dv = p^T do, dq = ds k, dk = ds^T q
        pairs += [(q, q.transpose(1, 2)), (scores, q), (q, q.transpose(1, 2)), (scores.transpose(1, 2), q),
                  (scores, q), (scores.transpose(1, 2), q)]
    flops = sum(2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1) for a, b in pairs)

    def step():
        for a, b in pairs:
            torch.matmul(a, b)
    return step, flops, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--set", nargs="*", default=[], help="NAME=VALUE hyperparameters of train.py")
    ap.add_argument("--compile", action="store_true", help="also time train.py's model under torch.compile")
    args = ap.parse_args()

    ns = train_module(args.set)
    prepare = ns["hardware"].__globals__
    hw = ns["hardware"]()
    if hw["device"] != "cpu":
        raise SystemExit("this benchmark measures the CPU path; on a GPU use train.py's own mfu_percent")
    dtype = ns["autocast_dtype"](hw)
    torch.set_num_threads(hw["threads"])
    vocab, seq_len = prepare["VOCAB_SIZE"], prepare["SEQ_LEN"]

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    before = train_module(args.set)
    before["causal_attention"] = sdpa  # the model's methods look it up in this namespace at call time
    variants = {"shipped": make_step(ns, vocab, seq_len, dtype),
                "sdpa": make_step(before, vocab, seq_len, dtype),
                "matmuls only": make_matmul_step(ns, vocab, seq_len, dtype)}
    assert variants["matmuls only"][1] == variants["shipped"][1], "the matmul list must count the model's FLOPs"
    if args.compile:
        t = time.perf_counter()
        variants["compiled"] = make_step(ns, vocab, seq_len, dtype, compiled=True)
        variants["compiled"][0]()
        print(f"compile: {time.perf_counter() - t:.1f} s")

    a = torch.randn(2048, 2048, dtype=dtype)

    def peak_sample():
        a @ a
        a @ a
    peak_flops = 4 * 2048**3

    for fn, *_ in variants.values():
        fn()
    peak_sample()
    times: dict[str, list[float]] = {"peak": [], **{name: [] for name in variants}}
    for _ in range(args.rounds):
        for name, fn in [("peak", peak_sample), *((n, v[0]) for n, v in variants.items())]:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    median_peak = peak_flops / statistics.median(times["peak"])
    best_peak = peak_flops / min(times["peak"])
    print(f"knobs: {' '.join(args.set) or 'as shipped'}; {args.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    print(f"peak samples (2048x2048 {dtype}): median {median_peak / 1e12:.2f}, best {best_peak / 1e12:.2f}, "
          f"cached by prepare.py {hw['peak_flops'] / 1e12:.2f} TFLOP/s")
    print("| variant | step ms | tokens/s | MFU vs median peak | vs best peak | vs cached peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (_, flops, tokens) in variants.items():
        dt = statistics.median(times[name])
        rate = flops / dt
        print(f"| {name} | {dt * 1000:.1f} | {tokens / dt:,.0f} | {100 * rate / median_peak:.1f}% | "
              f"{100 * rate / best_peak:.1f}% | {100 * rate / hw['peak_flops']:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
