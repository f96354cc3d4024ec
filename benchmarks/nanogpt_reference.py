"""
The original autoresearch's recipe, ported to the CPU: a frozen reference for the bundled GPT.

A drop-in train.py for examples/nanogpt (same prepare.py data, same torch.export hand-off, scored by
the same protected evaluate.py), written from the public description of the original (its train.py
and README, March 2026) with the small-machine settings its README gives: depth 4, width 256
(aspect ratio 64), head dimension 128, full attention, 2^14 tokens per optimizer step, sequence
length 256, torch.compile. It stays as it is when the shipped train.py changes, so the two can be
compared run after run (benchmarks/nanogpt_side_by_side.py).

    cp benchmarks/nanogpt_reference.py myexp/train.py   # or let the side-by-side script do it

What it is: rotary positions, weightless RMSNorm, QK-norm, squared-ReLU MLP (4x), logits capped
by 15 tanh(z / 15), untied embeddings; value embeddings on alternating layers mixed into the values
through an input-dependent gate; x = lambda_resid x + lambda_0 x0 before every block. Muon (Nesterov
momentum orthogonalised by a quintic Newton-Schulz iteration) for the block matrices, momentum
0.85 -> 0.95 over 300 steps, weight decay 0.2 decaying to zero; AdamW (0.8, 0.95) for embeddings
(0.6), head (0.004) and scalars (0.5), the first two scaled by 1/sqrt(width/768). No warm-up, a
linear warm-down to zero over the last half. Training time is the sum of step times after the
first 10 steps (compilation is not counted).
"""

import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F

from prepare import EVAL_BATCH_SIZE, SEQ_LEN, Tokenizer, autocast_dtype, hardware, train_batches, train_bytes_per_token

DEPTH, ASPECT_RATIO, HEAD_DIM = 4, 64, 128
TOKENS_PER_STEP = 2**14
MICRO_BATCH = 16  # sequences per forward pass; TOKENS_PER_STEP / (MICRO_BATCH * SEQ_LEN) of them per step
EMBED_LR, UNEMBED_LR, MATRIX_LR, SCALAR_LR = 0.6, 0.004, 0.04, 0.5
WEIGHT_DECAY, BETAS, WARMDOWN = 0.2, (0.8, 0.95), 0.5
UNTIMED_STEPS = 10


def rms(x):
    return F.rms_norm(x, (x.size(-1),))


class Attention(nn.Module):
    def __init__(self, width, heads, value_embedding):
        super().__init__()
        self.heads, self.dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.gate = nn.Linear(32, heads, bias=False) if value_embedding else None

    def forward(self, x, ve, rope):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        if self.gate is not None:
            g = 2 * torch.sigmoid(self.gate(x[..., :32])).transpose(1, 2)[..., None]
            v = v + g * ve.view(B, T, self.heads, self.dim).transpose(1, 2)
        cos, sin = rope
        half = self.dim // 2

        def turn(t):
            return torch.cat([t[..., :half] * cos + t[..., half:] * sin, t[..., half:] * cos - t[..., :half] * sin], -1)

        q, k = rms(turn(q)), rms(turn(k))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = (q @ k.transpose(-2, -1) / math.sqrt(self.dim)).masked_fill(mask, float("-inf"))
        y = att.softmax(-1, dtype=torch.float32).to(v.dtype) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Layer(nn.Module):
    def __init__(self, width, heads, value_embedding):
        super().__init__()
        self.attn = Attention(width, heads, value_embedding)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)

    def forward(self, x, ve, rope):
        x = x + self.attn(rms(x), ve, rope)
        return x + self.down(F.relu(self.up(rms(x))).square())


class Reference(nn.Module):
    def __init__(self, vocab, depth, width, heads):
        super().__init__()
        ve_layers = [i for i in range(depth) if i % 2 == (depth - 1) % 2]
        self.embed = nn.Embedding(vocab, width)
        self.ve = nn.ModuleDict({str(i): nn.Embedding(vocab, width) for i in ve_layers})
        self.layers = nn.ModuleList(Layer(width, heads, i in ve_layers) for i in range(depth))
        self.head = nn.Linear(width, vocab, bias=False)
        self.lambda_resid = nn.Parameter(torch.ones(depth))
        self.lambda_x0 = nn.Parameter(torch.full((depth,), 0.1))
        dim = width // heads
        angle = torch.outer(torch.arange(SEQ_LEN).float(), 10000.0 ** (-torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("cos", angle.cos()[None, None], persistent=False)
        self.register_buffer("sin", angle.sin()[None, None], persistent=False)
        s = 3**0.5 / width**0.5
        for name, p in self.named_parameters():
            if name.startswith("embed"):
                nn.init.normal_(p, std=1.0)
            elif name.startswith("head"):
                nn.init.normal_(p, std=0.001)
            elif name.endswith(("out.weight", "down.weight", "gate.weight")):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                nn.init.uniform_(p, -s, s)

    def forward(self, idx):
        T = idx.size(1)
        rope = (self.cos[:, :, :T], self.sin[:, :, :T])
        x = x0 = rms(self.embed(idx))
        for i, layer in enumerate(self.layers):
            x = self.lambda_resid[i] * x + self.lambda_x0[i] * x0
            x = layer(x, self.ve[str(i)](idx) if str(i) in self.ve else None, rope)
        z = self.head(rms(x))  # no .float(): the export would pin the dtype the evaluator autocasts
        return 15 * torch.tanh(z / 15)


def newton_schulz(g, dtype):
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(5):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    return (x.T if tall else x).to(g.dtype)


@torch.no_grad()
def muon_step(params, state, lr, momentum, wd, dtype):
    for p in params:
        buf = state.setdefault(p, torch.zeros_like(p))
        buf.lerp_(p.grad, 1 - momentum)
        p.mul_(1 - lr * wd)
        p.add_(newton_schulz(p.grad.lerp(buf, momentum), dtype), alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


t_start = time.time()
budget_s = float(os.environ.get("AUTORESEARCH_BUDGET_S") or 300)
seed = int(os.environ.get("AUTORESEARCH_SEED") or 0)
artifacts = Path(os.environ.get("AUTORESEARCH_ARTIFACTS") or "artifacts")
torch.manual_seed(seed)
hw = hardware()
device = torch.device(hw["device"])
amp = autocast_dtype(hw)
width = DEPTH * ASPECT_RATIO
model = Reference(Tokenizer.load().vocab_size, DEPTH, width, width // HEAD_DIM).to(device)
print(f"reference: depth {DEPTH}, width {width}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
      f"autocast {hw['dtype']}")
matrices = [p for p in model.layers.parameters() if p.dim() == 2]
scale = (width / 768) ** -0.5
adamw = torch.optim.AdamW([dict(params=[model.embed.weight, *model.ve.parameters()], lr=EMBED_LR * scale),
                           dict(params=[model.head.weight], lr=UNEMBED_LR * scale),
                           dict(params=[model.lambda_resid, model.lambda_x0], lr=SCALAR_LR)],
                          betas=BETAS, eps=1e-10, weight_decay=0.0, fused=True)
base_lrs = [g["lr"] for g in adamw.param_groups]
muon_state: dict = {}
ns_dtype = torch.bfloat16 if amp == torch.bfloat16 or device.type == "cuda" else torch.float32
compiled = torch.compile(model)
accum = max(1, TOKENS_PER_STEP // (MICRO_BATCH * SEQ_LEN))
batches = train_batches(MICRO_BATCH, device, seed=seed)

training_time, step, smooth = 0.0, 0, 0.0
while training_time < budget_s:
    t0 = time.time()
    progress = training_time / budget_s
    lrm = 1.0 if progress < 1 - WARMDOWN else (1 - progress) / WARMDOWN
    for group, lr in zip(adamw.param_groups, base_lrs):
        group["lr"] = lr * lrm
    for _ in range(accum):
        x, y, _ = next(batches)
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp != torch.float32):
            logits = compiled(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        (loss / accum).backward()
    adamw.step()
    muon_step(matrices, muon_state, MATRIX_LR * lrm, 0.85 + 0.10 * min(step / 300, 1.0), WEIGHT_DECAY * (1 - progress),
              ns_dtype)
    model.zero_grad(set_to_none=True)
    value = loss.item()
    if not math.isfinite(value):
        raise SystemExit(f"training diverged at step {step}")
    step += 1
    if step > UNTIMED_STEPS:
        training_time += time.time() - t0
    smooth = 0.9 * smooth + 0.1 * value
    if step % 20 == 0:
        print(f"step {step} | loss {smooth / (1 - 0.9 ** step):.4f} | {100 * progress:.0f}%", flush=True)

model.eval()
artifacts.mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    program = torch.export.export(model, (torch.zeros(EVAL_BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=device),))
torch.export.save(program, artifacts / "model.pt2")
timed_tokens = max(step - UNTIMED_STEPS, 0) * accum * MICRO_BATCH * SEQ_LEN
print("---")
print(f"train_bpb:        {smooth / (1 - 0.9 ** step) / math.log(2) / train_bytes_per_token():.6f}")
print(f"training_seconds: {training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"tokens_per_s:     {timed_tokens / max(training_time, 1e-9):.0f}")
print(f"num_steps:        {step}")
