"""
Train a small GPT on the prepared corpus for a fixed wall-clock budget, then save it for scoring.

This is the file the proposer edits: the model, the optimizer and the training loop, read top to
bottom. The budget is $AUTORESEARCH_BUDGET_S seconds of training (default 300; start-up and the
first warm-up steps do not count). The trained model is saved as a torch.export program to
$AUTORESEARCH_ARTIFACTS/model.pt2; the protected `python evaluate.py` scores it in val_bpb.
Run `python prepare.py` once first.
"""

import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # set before torch loads: spinning threads stall on shared cores
# torch.compile's kernels go to a folder that autoresearch.toml declares `[experiment] cache`: it survives
# from one experiment to the next (its hash is in each record), so only the first run compiles cold.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(".cache/compile").resolve()))
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F

from prepare import (EVAL_BATCH_SIZE, SEQ_LEN, Tokenizer, autocast_dtype, hardware, holdout_windows, train_batches,
                     train_bytes_per_token)

# ---------------------------------------------------------------------------
# Hyperparameters (int and float literals: the `tune` proposer searches them)

DEPTH = 4               # transformer blocks
WIDTH = 256             # model dimension
HEAD_DIM = 128          # dimension per attention head
MLP_RATIO = 4           # hidden width of the MLP, as a multiple of WIDTH
BATCH_SIZE = 16         # sequences of SEQ_LEN tokens per optimizer step
MATRIX_LR = 0.04        # Muon learning rate for the matrices of the blocks
EMBED_LR = 0.6          # AdamW learning rate for the token and value embeddings (x 1/sqrt(WIDTH/768))
UNEMBED_LR = 0.004      # AdamW learning rate for the output head (x 1/sqrt(WIDTH/768))
SCALAR_LR = 0.5         # AdamW learning rate for the per-layer residual mixing scalars
WEIGHT_DECAY = 0.2      # Muon weight decay at the start, decaying to zero with the learning rate
ADAM_BETA1 = 0.8        # AdamW momentum
ADAM_BETA2 = 0.95       # AdamW second-moment decay
MUON_MOMENTUM = 0.95    # Muon momentum, ramped up from 0.85 over the first MOMENTUM_WARMUP steps
MOMENTUM_WARMUP = 300   # steps
WARMUP_RATIO = 0.0      # share of the budget spent raising the learning rate from zero
WARMDOWN_RATIO = 0.5    # share of the budget at the end spent decaying it
FINAL_LR_FRAC = 0.0     # learning rate at the end, as a fraction of the peak
SOFTCAP = 15.0          # logits are squashed into (-SOFTCAP, SOFTCAP) by tanh
X0_LAMBDA = 0.1         # initial weight of the first layer's input mixed back into every block
COMPILE = True          # torch.compile the model (its first step compiles, and is not counted)

# On a CUDA GPU these replace DEPTH, WIDTH and BATCH_SIZE (autoresearch.toml leaves them out of the
# CPU search). An H200 reads the default corpus more than 100 times a minute, so on a GPU the
# weights saved are those that did best on held-out training text, not the last ones.
GPU_DEPTH = 4
GPU_WIDTH = 384
GPU_BATCH_SIZE = 128

# ---------------------------------------------------------------------------
# The model: a GPT with rotary positions, normalised queries and keys, value embeddings on
# alternating layers, a squared-ReLU MLP and soft-capped logits


@dataclass
class GPTConfig:
    vocab_size: int
    seq_len: int
    depth: int
    width: int
    head_dim: int
    mlp_ratio: int


def norm(x):
    return F.rms_norm(x, (x.size(-1),))  # no learned gain


def has_value_embedding(layer, depth):
    return layer % 2 == (depth - 1) % 2  # every other layer, the last one included


def rotary_tables(seq_len, head_dim, base=10000.0):
    """cos and sin of each position's rotation angles, shaped to broadcast over (B, heads, T, head_dim / 2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, None], angles.sin()[None, None]


def rotate(x, cos, sin):
    """Rotary position embedding: turn each pair of channels by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head = max(1, config.width // config.head_dim)
        self.head_dim = config.head_dim
        inner = self.n_head * self.head_dim
        self.q = nn.Linear(config.width, inner, bias=False)
        self.k = nn.Linear(config.width, inner, bias=False)
        self.v = nn.Linear(config.width, inner, bias=False)
        self.proj = nn.Linear(inner, config.width, bias=False)
        # How much of this layer's value embedding each head takes, read from the first channels of x.
        self.gate_channels = min(32, config.width)
        self.ve_gate = (nn.Linear(self.gate_channels, self.n_head, bias=False)
                        if has_value_embedding(layer, config.depth) else None)

    def forward(self, x, ve, cos, sin):
        B, T, _ = x.shape
        q, k, v = (f(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.gate_channels]))  # (B, T, heads), 1 at the start
            v = v + gate.transpose(1, 2).unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = norm(rotate(q, cos, sin)), norm(rotate(k, cos, sin))
        y = causal_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


def causal_attention(q, k, v):
    """Softmax attention over earlier positions only. On a GPU, SDPA's flash kernel; on a CPU the plain
    form (softmax in float32, as flash computes it), which timed from 8% faster to 3% slower per step
    than SDPA's CPU kernel on the 2-core VM (benchmarks/nanogpt.md): a starting point for proposers."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.size(-2)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = (q @ k.transpose(-2, -1)).masked_fill(future, float("-inf")) * q.size(-1) ** -0.5
    return scores.softmax(-1, dtype=torch.float32).to(v.dtype) @ v


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.width, config.mlp_ratio * config.width, bias=False)
        self.proj = nn.Linear(config.mlp_ratio * config.width, config.width, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(norm(x), ve, cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        inner = max(1, config.width // config.head_dim) * config.head_dim
        self.wte = nn.Embedding(config.vocab_size, config.width)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(config.vocab_size, inner)
                                           for i in range(config.depth) if has_value_embedding(i, config.depth)})
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.depth))
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)  # not tied to wte
        # Before block i: x = resid_lambdas[i] * x + x0_lambdas[i] * (the normalised embedding).
        self.resid_lambdas = nn.Parameter(torch.ones(config.depth))
        self.x0_lambdas = nn.Parameter(torch.full((config.depth,), X0_LAMBDA))
        cos, sin = rotary_tables(config.seq_len, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        bound = 3 ** 0.5 * config.width ** -0.5  # uniform with std 1/sqrt(width)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or "ve_gate" in name:
                nn.init.zeros_(p)  # each block starts as the identity; value-embedding gates at 1
            elif name == "lm_head.weight":
                nn.init.normal_(p, std=0.001)
            elif name == "wte.weight":
                nn.init.normal_(p, std=1.0)
            elif p.dim() == 2:
                nn.init.uniform_(p, -bound, bound)

    def forward(self, idx):
        B, T = idx.shape
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
        logits = self.lm_head(norm(x))  # no .float() here: the export would pin the dtype the evaluator autocasts
        return SOFTCAP * torch.tanh(logits / SOFTCAP)

    def flops_per_token(self):
        """Matmul FLOPs of one training token (forward + backward), attention included."""
        c = self.config
        lookups = ("wte.", "value_embeds.")  # embeddings are table lookups, not matmuls
        matmul_params = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and not n.startswith(lookups))
        return 6 * matmul_params + 12 * c.depth * c.width * c.seq_len


# ---------------------------------------------------------------------------
# The optimizer: Muon for the matrices of the blocks, AdamW for the rest


def orthogonalize(g, dtype, steps=5):
    """The nearest semi-orthogonal matrix to g (U V^T of its SVD), approximately: a quintic
    Newton-Schulz iteration, computed in `dtype`."""
    x = g.to(dtype)
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        a = x @ x.mT
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    return (x if wide else x.mT).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum (Nesterov), orthogonalised per matrix, scaled for its shape; decoupled weight decay."""

    def __init__(self, params, lr, momentum, weight_decay, dtype):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, dtype=dtype))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]), group["dtype"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)


# ---------------------------------------------------------------------------
# Setup: device, data, model, optimizer

t_start = time.time()
budget_s = float(os.environ.get("AUTORESEARCH_BUDGET_S") or 300)
seed = int(os.environ.get("AUTORESEARCH_SEED") or 0)
artifacts = Path(os.environ.get("AUTORESEARCH_ARTIFACTS") or "artifacts")
torch.manual_seed(seed)

hw = hardware()  # device, threads, fastest dtype and matmul peak, measured by prepare.py
device = torch.device(hw["device"])
amp_dtype = autocast_dtype(hw)
if device.type == "cuda":  # a GPU affords a bigger model and batch in the same budget
    DEPTH, WIDTH, BATCH_SIZE = GPU_DEPTH, GPU_WIDTH, GPU_BATCH_SIZE
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
many_epochs = device.type == "cuda"  # choose among checkpoints on held-out training text

tokenizer = Tokenizer.load()
config = GPTConfig(vocab_size=tokenizer.vocab_size, seq_len=SEQ_LEN, depth=DEPTH, width=WIDTH,
                   head_dim=HEAD_DIM, mlp_ratio=MLP_RATIO)
model = GPT(config).to(device)
num_params = sum(p.numel() for p in model.parameters())
flops_per_token = model.flops_per_token()
print(f"device: {hw['device_name']} ({device.type}, {hw['threads']} threads), autocast {hw['dtype']}, "
      f"matmul peak {hw['peak_flops'] / 1e12:.2f} TFLOP/s")
print(f"model: {config}, {num_params / 1e6:.2f}M parameters")

matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
assert len(matrices) == len(list(model.blocks.parameters())), "Muon takes only matrices: give others an AdamW group"
adam_scale = (WIDTH / 768) ** -0.5  # the AdamW rates were set for a 768-wide model
adam_groups = [dict(params=[model.wte.weight, *model.value_embeds.parameters()], lr=EMBED_LR * adam_scale),
               dict(params=[model.lm_head.weight], lr=UNEMBED_LR * adam_scale),
               dict(params=[model.resid_lambdas, model.x0_lambdas], lr=SCALAR_LR)]
# fused: one kernel for all parameters (CPU and CUDA)
adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=True)
# Newton-Schulz in bfloat16 where the machine multiplies it fast, as prepare.py measured
muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY,
            dtype=torch.bfloat16 if device.type == "cuda" or amp_dtype == torch.bfloat16 else torch.float32)
optimizers = [adamw, muon]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

train_model = torch.compile(model) if COMPILE else model
holdout = holdout_windows(64).to(device) if many_epochs else None  # up to 64 windows from the end of the training split
batches = train_batches(BATCH_SIZE, device, seed=seed, holdout_tokens=0 if holdout is None else holdout.numel())


@torch.no_grad()
def holdout_bpb():
    """Loss on the held-out training windows, in bits per byte (bytes per token averaged over the split)."""
    model.eval()
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        logits = model(holdout[:, :-1])
    model.train()
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), holdout[:, 1:].reshape(-1))
    return loss.item() / math.log(2) / train_bytes_per_token()


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return max(progress / WARMUP_RATIO, 0.02)  # not zero: the first (untimed) steps still learn
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------
# Training loop: stop when the training time reaches the budget

untimed_steps = 3 if device.type == "cuda" else 1  # warm-up (compilation, kernel selection) is not counted
training_time = 0.0
step = 0
smooth_loss = 0.0
tokens_timed = 0
best = (float("inf"), 0, None)  # holdout bpb, step, weights
next_check = 0.0
last_print = last_metric = time.time()
t_loop = time.time()
while True:
    t0 = time.time()
    progress = min(training_time / budget_s, 1.0)
    lrm = lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
    for group in muon.param_groups:
        ramp = min(step / MOMENTUM_WARMUP, 1.0) if MOMENTUM_WARMUP > 0 else 1.0
        group["momentum"] = 0.85 + ramp * (MUON_MOMENTUM - 0.85)
        group["weight_decay"] = WEIGHT_DECAY * (1 - progress)

    x, y, epoch = next(batches)
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        logits = train_model(x)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    loss_value = loss.item()  # waits for the device
    if not math.isfinite(loss_value):
        raise SystemExit(f"training diverged at step {step}: loss is {loss_value}")
    if holdout is not None and (training_time >= next_check or training_time >= budget_s):
        next_check += budget_s / 50  # part of the training time, so checks cost budget
        score = holdout_bpb()
        if score < best[0]:
            best = (score, step + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})

    dt = time.time() - t0
    step += 1
    if step > untimed_steps:
        training_time += dt
        tokens_timed += x.numel()
    smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
    debiased = smooth_loss / (1 - 0.9 ** step)
    if time.time() - last_metric >= 3:  # the curve the harness may stop a hopeless run on ([judge.prune])
        last_metric = time.time()
        print(f"METRIC train_loss={debiased:.4f} progress={min(training_time / budget_s, 1.0):.3f}", flush=True)
    if time.time() - last_print >= 10 or training_time >= budget_s:
        last_print = time.time()
        tok_per_s = x.numel() / dt
        mfu = 100 * flops_per_token * tok_per_s / hw["peak_flops"]
        print(f"step {step:05d} ({100 * progress:.1f}%) | loss {debiased:.4f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms "
              f"| tok/s {tok_per_s:,.0f} | mfu {mfu:.1f}% | epoch {epoch} | remaining {max(0.0, budget_s - training_time):.0f}s",
              flush=True)
    if training_time >= budget_s:
        break

# ---------------------------------------------------------------------------
# Save the model for the evaluator: a torch.export program (a graph of tensor ops, no Python),
# in float32 and eval mode; the evaluator picks the precision and feeds (EVAL_BATCH_SIZE, SEQ_LEN).

if best[2] is not None:
    model.load_state_dict(best[2])
    print(f"saving the weights of step {best[1]}, best on the held-out training text ({best[0]:.4f} bpb)")
model.eval()
artifacts.mkdir(parents=True, exist_ok=True)
example = torch.zeros(EVAL_BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=device)
with torch.no_grad():
    program = torch.export.export(model, (example,))
torch.export.save(program, artifacts / "model.pt2")

if device.type == "cuda":
    peak_mem = ("peak_vram_mb", torch.cuda.max_memory_allocated() / 2**20)
else:
    peak_mem = ("peak_mem_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
mfu = 100 * flops_per_token * tokens_timed / max(training_time, 1e-9) / hw["peak_flops"]
print("---")
print(f"train_bpb:        {debiased / math.log(2) / train_bytes_per_token():.6f}")  # estimate; evaluate.py gives val_bpb
if best[2] is not None:
    print(f"holdout_bpb:      {best[0]:.6f}")
    print(f"best_step:        {best[1]}")
print(f"training_seconds: {training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"{peak_mem[0] + ':':<17} {peak_mem[1]:.1f}")
print(f"mfu_percent:      {mfu:.2f}")
print(f"tokens_per_s:     {tokens_timed / max(training_time, 1e-9):.0f}")
print(f"total_tokens_M:   {step * BATCH_SIZE * SEQ_LEN / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
