"""What the exhaustive causality probe adds to the bundled GPT's evaluation, against the sampled
probe it replaced (6 random positions; reproduced below as the baseline), on the same model and
validation batches, median of --repeats. Prints seconds and ratios; asserts nothing.

    python examples/nanogpt/prepare.py            # once (the data and the hardware profile)
    python benchmarks/nanogpt_probe.py [--repeats 5] [--corpus shakespeare]

The model is the shipped train.py's default (DEPTH, WIDTH, ... as they stand), randomly
initialised, exported and loaded the way evaluate.py loads it; the time of a forward does not
depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nanogpt"
sys.path.insert(0, str(EXAMPLE))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import evaluate  # noqa: E402
import prepare  # noqa: E402


@torch.no_grad()
def sampled_probe(model, batches, device, autocast_dtype, vocab_size, trials=6, seed=0):
    """The probe before the exhaustive one: `trials` random positions, plus a determinism check."""
    gen = torch.Generator().manual_seed(seed)
    batches = [b[:, :-1] for b in batches]
    first = batches[0].to(device)
    a = prepare.forward_logits(model, first, device, autocast_dtype, vocab_size)
    b = prepare.forward_logits(model, first, device, autocast_dtype, vocab_size)
    scale = max(1.0, a.abs().max().item())
    if (a - b).abs().max().item() > 1e-4 * scale:
        return "not deterministic"
    B, T = first.shape
    for trial in range(trials):
        i = int(torch.randint(0, len(batches), (1,), generator=gen))
        j = (i + 1 + int(torch.randint(0, max(1, len(batches) - 1), (1,), generator=gen))) % len(batches)
        x, donor = batches[i].to(device), batches[j].to(device)
        row = int(torch.randint(0, B, (1,), generator=gen))
        t = T - 1 if trial == trials - 1 else int(torch.randint(0, T - 1, (1,), generator=gen))
        probe = donor.clone()
        probe[row, : t + 1] = x[row, : t + 1]
        ref = prepare.forward_logits(model, x, device, autocast_dtype, vocab_size)[row, : t + 1]
        out = prepare.forward_logits(model, probe, device, autocast_dtype, vocab_size)[row, : t + 1]
        if (ref - out).abs().max().item() > 1e-3 * scale:
            return "looks ahead"
    return None


def default_model(vocab_size: int, device: str):
    head = (EXAMPLE / "train.py").read_text().split("\n# Setup:", 1)[0]
    module = type(sys)("train_head")
    sys.modules["train_head"] = module  # @dataclass looks its module up
    exec(compile(head, "train.py", "exec"), module.__dict__)
    config = module.GPTConfig(vocab_size=vocab_size, seq_len=prepare.SEQ_LEN, depth=module.DEPTH, width=module.WIDTH,
                              head_dim=module.HEAD_DIM, mlp_ratio=module.MLP_RATIO)
    torch.manual_seed(0)
    model = module.GPT(config).to(device).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    example = torch.zeros(prepare.EVAL_BATCH_SIZE, prepare.SEQ_LEN, dtype=torch.long, device=device)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        torch.export.save(torch.export.export(model, (example,)), Path(tmp) / "model.pt2")
        return evaluate.load_model(Path(tmp) / "model.pt2", device), config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corpus", default=None)
    args = parser.parse_args()
    try:
        hw = prepare.hardware()
        tokenizer = prepare.Tokenizer.load(args.corpus)
        batches = prepare.val_batches(args.corpus)
    except prepare.PrepareError as err:
        print(f"nanogpt_probe.py: error: {err}", file=sys.stderr)
        return 1
    device, dtype = hw["device"], prepare.autocast_dtype(hw)
    vocab = tokenizer.vocab_size
    model, config = default_model(vocab, device)
    print(f"model: {config}; {len(batches)} validation batches of {tuple(batches[0].shape)}; "
          f"{hw['device_name']} ({device}, {hw['threads']} threads), {hw['dtype']}")
    try:
        print(f"load average: {os.getloadavg()[0]:.2f}")
    except OSError:
        pass

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    score_s, old_s, new_s = [], [], []
    for i in range(args.repeats):
        s, losses = timed(lambda: prepare.token_losses(model, batches, device, dtype, vocab))
        o, old = timed(lambda: sampled_probe(model, batches, device, dtype, vocab, seed=i))
        n, new = timed(lambda: prepare.causality_probe(model, batches, losses, device, dtype, vocab))
        assert old is None and new is None, (old, new)  # an honest model passes both
        score_s.append(s)
        old_s.append(o)
        new_s.append(n)
        print(f"repeat {i}: scoring {s:.2f}s, sampled probe {o:.2f}s, exhaustive probe {n:.2f}s", flush=True)
    score, old, new = (statistics.median(v) for v in (score_s, old_s, new_s))
    n_cut = -(-prepare.SEQ_LEN // prepare.EVAL_BATCH_SIZE)
    print("---")
    print(f"forwards: scoring {len(batches)}, sampled probe 14, exhaustive probe {1 + n_cut + prepare.PROBE_WHOLE_BATCHES}")
    print(f"median scoring:          {score:.2f} s")
    print(f"median sampled probe:    {old:.2f} s")
    print(f"median exhaustive probe: {new:.2f} s  ({new / old:.2f}x the sampled probe)")
    print(f"evaluation (scoring + probe): {score + old:.2f} s -> {score + new:.2f} s  ({(score + new) / (score + old):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
