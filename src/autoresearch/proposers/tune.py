"""`tune`: the offline proposer. Searches the numeric knobs of the editable files with Optuna.

Knobs are module-level `UPPER_CASE = <number>` assignments (see knobs.py). Each knob gets a search
range around its value in the baseline (floats log-uniform over x10 each way, ints over x4, powers
of two stay powers of two), which `[proposer.space.NAME]` can override. The space never moves; it
only grows, a step at a time, where a best lands near the edge of a default range, so every trial
stays in the study. Every experiment is one Optuna trial over the absolute values of all knobs; the
in-memory study is rebuilt from the ledger, so a resumed run continues where it stopped, and crashes
are told to it as failures. The study is mirrored, for `optuna-dashboard`, to
`.autoresearch/optuna.journal` (rewritten from the ledger at every rebuild; never read back).
Trials of other runs (`--learn-from`) warm-start the sampler; they are never this run's records.
"""

from __future__ import annotations

import ast
import math
import os
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import Config, SpaceSpec
from ..errors import ConfigError, ProposalInvalid
from ..record import ADVANCES_BEST, MEASURED, STOPPED_EARLY, Status
from ..knobs import Knob, Number, find_knobs, format_value, rewrite, same_literal
from . import Context, Proposal, Proposer

# Statuses whose metric was measured on the code that ran; everything else that ran is a failure.
_MEASURED = MEASURED
_NOT_RUN = (Status.INTERRUPTED,)  # dropped from the study; an invalid proposal is told as a failed trial
_STOPPED_EARLY = STOPPED_EARLY  # told to Optuna as PRUNED, with how far they got


def _early_values(rec: dict[str, Any]) -> dict[int, float]:
    """The intermediate values of a run stopped early (its pruned curve, or its screening score at
    step 0), as Optuna steps; the pruned trial's rank among pruned ones comes from them."""
    for run in rec.get("runs") or []:
        if run.get("curve"):
            out = {}
            for p, v in run["curve"]:
                if isinstance(v, (int, float)) and math.isfinite(v):
                    out[int(p * 100)] = float(v)
            return out
    screen = (rec.get("screen") or {}).get("metric")
    return {0: float(screen)} if isinstance(screen, (int, float)) and math.isfinite(screen) else {}
_MAX_RESAMPLES = 40
# Measured on examples/quickstart (12 seeds x 20 experiments, `python benchmarks/tune_quickstart.py
# --simulate`, with the earlier pooled-noise judge): TPE over every knob at once with 5 startup
# trials beat one-or-two-knob mutations of the best, or only mutating. That run preferred ranges
# re-centred on the best to ranges fixed at the baseline; fixed ranges that grow at their edges
# keep every trial instead, and `python benchmarks/tune_vs_optuna.py` measures the whole loop.
_MUTATE_P = 0.0  # share of proposals that move only one or two knobs of the current best
_TPE_STARTUP = 5  # random trials (the baseline counts as one) before TPE models the results
# Ranges centred on the knob values of the "baseline" (fixed, so the study keeps every trial), or
# re-centred on the current "best" at every keep (the earlier behaviour; the study then loses the
# trials outside the new ranges). benchmarks/tune_vs_optuna.py measures one against the other.
_ANCHOR = "baseline"
_GROW = True  # a default range grows where a best lands in its outer tenth
_EDGE = 0.1
JOURNAL = "optuna.journal"


@dataclass(frozen=True)
class Dim:
    """The search range of one knob, and how its values map to the Optuna parameter."""

    key: str
    kind: str  # "float", "int", "pow" (param is the exponent), "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    base: int = 2
    negate: bool = False  # negative ranges are searched over the magnitude
    choices: tuple[Any, ...] = ()
    is_float: bool = False  # the knob's values are floats (decides the literal written)
    grows: bool = True  # False where [proposer.space] set the range: the user's bounds stay

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        return IntDistribution(int(self.low), int(self.high), log=self.log)

    def value(self, param: Any) -> Number:
        """Knob value for an Optuna parameter value."""
        if self.kind == "choice":
            return param
        if self.kind == "pow":
            v: Number = self.base ** int(param)
            return float(v) if self.is_float else v
        v = float(param) if self.kind == "float" else int(param)
        return -v if self.negate else v

    def param(self, value: Number) -> Any | None:
        """Optuna parameter value for a knob value, or None when the value lies outside this range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.kind == "choice":
            for c in self.choices:
                if isinstance(c, (int, float)) and math.isclose(c, value, rel_tol=1e-9, abs_tol=1e-12):
                    return c
            return None
        v = -value if self.negate else value
        if self.kind == "pow":
            if v <= 0:
                return None
            e = round(math.log(v, self.base))
            if not math.isclose(self.base**e, v, rel_tol=1e-9) or not self.low <= e <= self.high:
                return None
            return e
        if self.kind == "int":
            if v != int(v) or not self.low <= v <= self.high:
                return None
            return int(v)
        # Literals are rounded to ~4 significant digits, so allow that much slack at the edges.
        slack = 1e-3 * max(abs(self.low), abs(self.high))
        if not self.low - slack <= v <= self.high + slack:
            return None
        return min(max(float(v), self.low), self.high)


def _is_pow2(v: int) -> bool:
    return v >= 2 and v & (v - 1) == 0


def default_dim(knob: Knob) -> Dim:
    """The range searched when [proposer.space] says nothing about KNOB."""
    v = knob.value
    base = knob.power_base
    if base is not None and v > 0:
        e = round(math.log(v, base))
        reach = max(1, round(math.log(4, base)))  # x4 each way, at least one step
        low = e - reach if (e - reach >= 0 or knob.type == "float") else 0
        return Dim(knob.key, "pow", low, e + reach, base=base, is_float=knob.type == "float")
    if knob.type == "int":
        if _is_pow2(int(v)):
            e = int(v).bit_length() - 1
            return Dim(knob.key, "pow", max(0, e - 2), e + 2, base=2)
        if v == 0:
            return Dim(knob.key, "int", 0, 4)
        mag = abs(int(v))
        return Dim(knob.key, "int", max(1, mag // 4), mag * 4, log=True, negate=v < 0)
    if v == 0:
        return Dim(knob.key, "float", 0.0, 1.0, is_float=True)  # a ratio or a switch that is off
    mag = abs(float(v))
    return Dim(knob.key, "float", mag / 10, mag * 10, log=True, negate=v < 0, is_float=True)


def grow(dim: Dim, value: Number) -> Dim:
    """DIM widened, a step at a time, until VALUE lies inside it and away from its edges. Only
    default ranges grow, and never across zero; a grown space still holds every earlier trial."""
    if not dim.grows or dim.kind == "choice" or isinstance(value, bool):
        return dim
    v = -value if dim.negate else value
    for _ in range(12):
        lo, hi = dim.low, dim.high
        if dim.kind == "pow":
            if v <= 0:
                return dim
            at = math.log(v, dim.base)
            down, up = at <= lo + 1e-9, at >= hi - 1e-9
            step = 1
        elif dim.log:
            if v <= 0 or lo <= 0:
                return dim
            width = math.log(hi) - math.log(lo)
            u = (math.log(v) - math.log(lo)) / width
            down, up = u < _EDGE, u > 1 - _EDGE
        else:
            width = hi - lo
            u = (v - lo) / width
            down, up = u < _EDGE and lo > 0, u > 1 - _EDGE
        if not (down or up):
            return dim
        if dim.kind == "pow":
            if down and (dim.is_float or lo - step >= 0):  # an int knob stays a whole power
                lo -= step
            hi = hi + step if up else hi
        elif dim.log:
            factor = math.exp(width / 4)
            if dim.kind == "int":
                lo, hi = (max(1, math.floor(lo / factor)) if down else lo), (math.ceil(hi * factor) if up else hi)
            else:
                lo, hi = (lo / factor if down else lo), (hi * factor if up else hi)
        else:
            step = width / 4
            lo, hi = (max(0.0, lo - step) if down else lo), (hi + step if up else hi)
            if dim.kind == "int":
                lo, hi = math.floor(lo), math.ceil(hi)
        if (lo, hi) == (dim.low, dim.high):
            return dim
        dim = replace(dim, low=lo, high=hi)
    return dim


def _where(knob_key: str) -> str:
    return f"autoresearch.toml: [proposer.space.{knob_key}]" if ":" not in knob_key else f'autoresearch.toml: [proposer.space."{knob_key}"]'


def space_dim(knob: Knob, spec: SpaceSpec, name: str) -> Dim:
    """KNOB's range with the overrides of one [proposer.space] table applied."""
    where = _where(name)
    if spec.choices is not None:
        if not spec.choices:
            raise ConfigError(f"{where}: choices is empty; list at least two values or remove it")
        bad = [c for c in spec.choices if isinstance(c, (bool, str))]
        if bad:
            raise ConfigError(f"{where}: choices must be numbers (got {bad[0]!r}); {knob.name} is a numeric knob")
        return Dim(knob.key, "choice", choices=tuple(spec.choices), is_float=knob.type == "float")
    base_dim = default_dim(knob)
    if spec.low is None and spec.high is None and spec.log is None:
        return base_dim
    # Fill an unspecified bound from the default range, in knob values.
    lo_default = min(base_dim.value(base_dim.low), base_dim.value(base_dim.high))
    hi_default = max(base_dim.value(base_dim.low), base_dim.value(base_dim.high))
    low = float(spec.low) if spec.low is not None else float(lo_default)
    high = float(spec.high) if spec.high is not None else float(hi_default)
    if not low < high:
        raise ConfigError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if base_dim.kind == "pow" and spec.log is not False:
        b = base_dim.base
        if low <= 0:
            raise ConfigError(f"{where}: {knob.name} is a power of {b}, so low must be > 0 (or set log = false to search all integers)")
        e_lo, e_hi = math.ceil(math.log(low, b) - 1e-9), math.floor(math.log(high, b) + 1e-9)
        if e_lo >= e_hi:
            raise ConfigError(f"{where}: [{low:g}, {high:g}] holds fewer than two powers of {b}; widen it or set log = false")
        if knob.type == "int" and e_lo < 0:
            e_lo = 0
        return Dim(knob.key, "pow", e_lo, e_hi, base=b, is_float=knob.type == "float")
    log = spec.log if spec.log is not None else (base_dim.log and (low > 0 or high < 0))
    negate = False
    if log:
        if low <= 0 <= high:
            raise ConfigError(f"{where}: log = true needs a range that does not include 0 (low > 0, or high < 0)")
        if high < 0:
            low, high, negate = -high, -low, True
    if knob.type == "int":
        lo_i, hi_i = math.ceil(low), math.floor(high)
        if lo_i >= hi_i:
            raise ConfigError(f"{where}: [{low:g}, {high:g}] holds fewer than two integers for the int knob {knob.name}")
        return Dim(knob.key, "int", lo_i, hi_i, log=log, negate=negate)
    return Dim(knob.key, "float", low, high, log=log, negate=negate, is_float=True)


def build_space(knobs: list[Knob], space: dict[str, SpaceSpec]) -> dict[str, Dim]:
    """Search ranges by knob key, after [proposer.space] overrides; excluded knobs are left out."""
    by_name: dict[str, list[Knob]] = {}
    for k in knobs:
        by_name.setdefault(k.name, []).append(k)
    specs: dict[str, tuple[str, SpaceSpec]] = {}
    for name, spec in space.items():
        matched = [k for k in knobs if k.key == name or f"{k.path}:{k.name}" == name]
        if not matched and name in by_name:
            matched = by_name[name]  # a bare name covers the knob in every file that has it
        if not matched:
            found = ", ".join(k.key for k in knobs) or "none"
            raise ConfigError(
                f"{_where(name)} names no knob of the editable files (knobs found: {found}); "
                "fix the name or remove the table"
            )
        for k in matched:
            specs[k.key] = (name, spec)
    dims: dict[str, Dim] = {}
    for k in knobs:
        if k.key in specs:
            name, spec = specs[k.key]
            if spec.exclude:
                continue
            set_by_user = spec.low is not None or spec.high is not None or spec.log is not None or spec.choices is not None
            dims[k.key] = replace(space_dim(k, spec, name), grows=not set_by_user)
        else:
            dims[k.key] = default_dim(k)
    return dims


def _literal_number(text: str) -> Number:
    """The number a literal we wrote (or found) stands for."""
    t = text.strip()
    if "**" in t:
        base, exp = t.split("**")
        return int(base.strip(" ()")) ** int(exp.strip(" ()").replace(" ", ""))
    return ast.literal_eval(t)


def _vector_key(texts: dict[str, str]) -> tuple[tuple[str, Number], ...]:
    return tuple(sorted((k, _literal_number(t)) for k, t in texts.items()))


def record_vectors(records: list[dict[str, Any]]) -> dict[int, dict[str, Number]]:
    """Knob values of the code each experiment record ran, where its run's tune records tell them
    (a tune record names its own values and its parent's; the baseline's come from the first)."""
    by_commit: dict[str, dict[str, Number]] = {}
    for rec in records:
        meta = rec.get("proposal") or {}
        if isinstance(meta.get("base"), dict) and rec.get("parent"):
            by_commit.setdefault(rec["parent"], dict(meta["base"]))
    out: dict[int, dict[str, Number]] = {}
    for rec in records:
        meta = rec.get("proposal") or {}
        if isinstance(meta.get("params"), dict):
            out[rec["id"]] = {**(meta.get("base") or {}), **meta["params"]}
        elif rec.get("commit") in by_commit and rec.get("status") in _MEASURED:
            out[rec["id"]] = by_commit[rec["commit"]]
    return out


@dataclass(frozen=True)
class Prior:
    """A measured experiment of another run: what the sampler may learn from, never a record here."""

    source: str  # that run's experiment folder
    id: int
    vector: dict[str, Number]
    status: str
    metric: float | None


def read_priors(dirs: list[Path], config: Config) -> list[Prior]:
    """The tune-readable experiments of other runs, read (never written) through their ledgers.
    A folder that is not a run of this metric is an error here: tune was asked to start from it."""
    from .digest import read_run

    out: list[Prior] = []
    for d in dirs:
        records = read_run(Path(d), config).records
        vectors = record_vectors(records)
        for rec in records:
            if rec["id"] in vectors and rec.get("status") not in _NOT_RUN:
                metric = rec.get("metric")
                ok = rec.get("status") in _MEASURED and isinstance(metric, (int, float)) and math.isfinite(metric)
                out.append(Prior(str(d), rec["id"], vectors[rec["id"]], rec["status"], float(metric) if ok else None))
    return out


class TuneProposer(Proposer):
    name = "tune"

    def __init__(self, config: Config, history: list[dict[str, Any]]):
        super().__init__(config, history)
        import optuna

        # Optuna logs every trial at INFO and failed trials at WARNING; the loop reports progress itself.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self._optuna = optuna
        self._seed = config.proposer.seed
        self._rng = random.Random(self._seed)
        self._records: dict[int, dict[str, Any]] = {r["id"]: r for r in history if r.get("kind", "experiment") == "experiment"}
        self._study: Any = None
        self._dims: dict[str, Dim] = {}
        self._sig: tuple = ()
        self._in_study: set[int] = set()  # record ids already added to or told to the study
        self._pending: dict[int, Any] = {}  # experiment id -> the asked, not yet told, trial
        self._vectors: dict[str, dict[str, Number]] = {}  # commit -> knob values of that code
        for rec in self._records.values():
            self._learn_vectors(rec)
        self._priors: list[Prior] = []  # other runs' experiments (--learn-from)
        self._queue: list[dict[str, Number]] = []  # their best code, to try here first
        self._journal: Any = None  # the mirror of the study for optuna-dashboard
        self._journal_path: Path | None = None

    def learn_from(self, dirs: list[Path], warn: Any = None) -> bool:
        """Warm-start the sampler with the trials of other runs of this experiment."""
        self._priors = read_priors(dirs, self.config)
        sign = -1 if self.config.maximize else 1
        by_run: dict[str, list[Prior]] = {}
        for prior in self._priors:
            if prior.status in ADVANCES_BEST and prior.metric is not None:
                by_run.setdefault(prior.source, []).append(prior)
        self._queue = [min(kept, key=lambda q: sign * q.metric).vector for kept in by_run.values()]
        return True

    # ---- history ---------------------------------------------------------------------------------
    def _learn_vectors(self, rec: dict[str, Any]) -> None:
        """A tune record tells the knob values of its own code and of its parent's."""
        meta = rec.get("proposal") or {}
        if isinstance(meta.get("base"), dict) and rec.get("parent"):
            self._vectors.setdefault(rec["parent"], dict(meta["base"]))
        if isinstance(meta.get("params"), dict) and rec.get("commit"):
            full = dict(meta.get("base") or {})
            full.update(meta["params"])
            self._vectors.setdefault(rec["commit"], full)

    def _record_vector(self, rec: dict[str, Any]) -> dict[str, Number] | None:
        meta = rec.get("proposal") or {}
        if isinstance(meta.get("params"), dict):
            full = dict(meta.get("base") or {})
            full.update(meta["params"])
            return full
        if rec.get("commit") and rec.get("status") in _MEASURED:
            return self._vectors.get(rec["commit"])
        return None

    def _frozen(self, rec: dict[str, Any], vector: dict[str, Number], source: str = "") -> Any | None:
        """The record as a finished Optuna trial over the current space, or None if it does not fit."""
        if rec.get("status") in _NOT_RUN:
            return None
        params, dists = {}, {}
        for key, dim in self._dims.items():
            if key not in vector:
                return None
            p = dim.param(vector[key])
            if p is None:
                return None
            params[key], dists[key] = p, dim.distribution()
        TrialState = self._optuna.trial.TrialState
        metric = rec.get("metric")
        attrs = {"experiment": rec.get("id"), "status": rec.get("status"), "description": rec.get("description", "")}
        if source:
            attrs["learned_from"] = source
        if rec.get("status") in _MEASURED and isinstance(metric, (int, float)) and math.isfinite(metric):
            return self._optuna.trial.create_trial(params=params, distributions=dists, value=float(metric), user_attrs=attrs)
        if rec.get("status") in _STOPPED_EARLY:
            return self._optuna.trial.create_trial(params=params, distributions=dists, state=TrialState.PRUNED, user_attrs=attrs,
                                                   intermediate_values=_early_values(rec))
        return self._optuna.trial.create_trial(params=params, distributions=dists, state=TrialState.FAIL, user_attrs=attrs)

    def _add_known(self) -> None:
        """Put every record whose knob values are known and not yet in the study into it."""
        for rid in sorted(self._records):
            if rid in self._in_study or rid in self._pending:
                continue
            rec = self._records[rid]
            vec = self._record_vector(rec)
            if vec is None:
                continue
            trial = self._frozen(rec, vec)
            self._in_study.add(rid)
            if trial is not None:
                self._study.add_trial(trial)
                self._mirror(trial)

    def _add_priors(self) -> None:
        """Other runs' experiments that fit the current space, as trials the sampler learns from."""
        for prior in self._priors:
            rec = {"id": prior.id, "status": prior.status, "metric": prior.metric, "description": ""}
            trial = self._frozen(rec, prior.vector, source=prior.source)
            if trial is not None:
                self._study.add_trial(trial)

    # ---- the journal (optuna-dashboard) ----------------------------------------------------------
    def _open_journal(self, name: str, direction: str) -> None:
        """A fresh journal file holding nothing yet; the ledger's trials follow as they are added."""
        if self._journal_path is None:
            return
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        lock = _flock_journal_lock(self._journal_path.with_name(JOURNAL + ".flock"))
        tmp = self._journal_path.with_name(JOURNAL + ".new")
        tmp.unlink(missing_ok=True)
        storage = JournalStorage(JournalFileBackend(str(tmp), lock_obj=lock))
        self._optuna.create_study(storage=storage, study_name=name, direction=direction)
        os.replace(tmp, self._journal_path)
        storage = JournalStorage(JournalFileBackend(str(self._journal_path), lock_obj=lock))
        self._journal = self._optuna.load_study(study_name=name, storage=storage)

    def _mirror(self, trial: Any) -> None:
        if self._journal is not None:
            self._journal.add_trial(trial)

    def _make_sampler(self, current: dict[str, Number], exp_id: int) -> Any:
        samplers = self._optuna.samplers
        # Seeded per rebuild point, so a resumed run draws what an uninterrupted one would have.
        seed = None if self._seed is None else self._seed * 100_003 + exp_id
        kind = self.config.proposer.sampler
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "random":
                return samplers.RandomSampler(seed=seed)
            if kind == "cmaes":
                try:
                    import cmaes  # noqa: F401  (Optuna's CMA-ES needs it)
                except ImportError:
                    raise ConfigError(
                        'autoresearch.toml: [proposer] sampler = "cmaes" needs the cmaes package; '
                        'install it with `pip install cmaes`, or use sampler = "tpe"'
                    ) from None
                x0 = {}
                for key, dim in self._dims.items():
                    p = dim.param(current[key]) if key in current else None
                    if p is not None and dim.kind != "choice":
                        x0[key] = p
                return samplers.CmaEsSampler(
                    x0=x0 if len(x0) == len([d for d in self._dims.values() if d.kind != "choice"]) else None,
                    seed=seed,
                    warn_independent_sampling=False,
                )
            # constant_liar: with several workers, trials still running count as if they scored badly,
            # so parallel asks spread out instead of proposing the same point twice.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return samplers.TPESampler(seed=seed, n_startup_trials=_TPE_STARTUP, multivariate=True, constant_liar=True)

    def _rebuild(self, current: dict[str, Number], exp_id: int, name: str = "autoresearch") -> None:
        """A fresh study over the current space, holding every past experiment that fits in it
        (and the other runs' experiments that do), mirrored to a fresh journal."""
        direction = "maximize" if self.config.maximize else "minimize"
        self._pending.clear()  # trials of the old study; their results come back as records instead
        self._study = self._optuna.create_study(direction=direction, sampler=self._make_sampler(current, exp_id))
        self._open_journal(name, direction)
        self._add_priors()
        self._in_study = set()
        self._add_known()

    def _space(self, knobs: list[Knob]) -> dict[str, Dim]:
        """The ranges: fixed at the baseline, grown (never shrunk) along the run's bests so far, so
        a resumed run derives the same space from the same ledger."""
        dims = build_space(self._anchor_knobs(knobs), self.config.proposer.space)
        if not _GROW:
            return dims
        path = [r for r in sorted(self._records.values(), key=lambda r: r["id"]) if r.get("status") in ADVANCES_BEST]
        # The other runs' bests first (the space must hold what is tried here first), then ours.
        vectors = [q.vector for q in self._priors if q.status in ADVANCES_BEST]
        vectors += [self._vectors.get(r.get("commit") or "") for r in path] + [{k.key: k.value for k in knobs}]
        for vec in vectors:
            for key, dim in dims.items():
                if vec and key in vec:
                    dims[key] = grow(dim, vec[key])
        return dims

    # ---- proposing -------------------------------------------------------------------------------
    def propose(self, ctx: Context) -> Proposal:
        for rec in ctx.history:
            if rec.get("kind", "experiment") == "experiment" and rec["id"] not in self._records:
                self._records[rec["id"]] = rec
                self._learn_vectors(rec)
        knobs = find_knobs(ctx.files)
        if not knobs:
            files = ", ".join(sorted(ctx.files)) or "none"
            raise ConfigError(
                f"the tune proposer found no knobs in the editable files ({files}); add module-level "
                "UPPER_CASE = <number> assignments there, or set [proposer] kind to llm or agent in autoresearch.toml"
            )
        if ctx.best and ctx.best.get("commit"):
            self._vectors[ctx.best["commit"]] = {k.key: k.value for k in knobs}
        dims = self._space(knobs)
        if not dims:
            raise ConfigError("autoresearch.toml: [proposer.space] excludes every knob; leave at least one to tune")
        current = {k.key: k.value for k in knobs if k.key in dims}
        sig = tuple(sorted((k, repr(d)) for k, d in dims.items()))
        if self._study is None or sig != self._sig:
            self._dims, self._sig = dims, sig
            if ctx.run_dir.parent.name == "runs":  # .autoresearch/runs/<id>: the journal lives beside the ledger
                self._journal_path = ctx.run_dir.parent.parent / JOURNAL
            self._rebuild(current, ctx.experiment_id, name=ctx.root.name or "autoresearch")
        else:
            self._add_known()
        stale = self._pending.pop(ctx.experiment_id, None)
        if stale is not None:  # the loop refused our last proposal for this id before running it
            self._study.tell(stale, state=self._optuna.trial.TrialState.FAIL)

        texts, strategy = self._sample(knobs, current, ctx)
        by_key = {k.key: k for k in knobs}
        changed = {key: t for key, t in texts.items() if not same_literal(by_key[key].text, t)}
        edits: dict[str, str] = {}
        for path in sorted({by_key[key].path for key in changed}):
            here = [k for k in knobs if k.path == path]
            edits[path] = rewrite(ctx.files[path], here, {key: t for key, t in changed.items() if by_key[key].path == path})
        order = [k.key for k in knobs if k.key in changed]
        description = ", ".join(f"{key} {by_key[key].text} -> {changed[key]}" for key in order)
        meta = {
            "params": {key: _literal_number(t) for key, t in texts.items()},
            "base": dict(current),
            "strategy": strategy,
        }
        if self._priors:
            meta["learned_from"] = sorted({p.source for p in self._priors})
        return Proposal(description=description, edits=edits, meta=meta)

    def _anchor_knobs(self, knobs: list[Knob]) -> list[Knob]:
        if _ANCHOR != "baseline":
            return knobs
        base = next((r for r in sorted(self._records.values(), key=lambda r: r["id"]) if r.get("status") == "baseline"), None)
        vec = self._vectors.get(base.get("commit", "")) if base else None
        if not vec:
            return knobs
        return [replace(k, value=vec[k.key]) if k.key in vec else k for k in knobs]

    def _known_outcomes(self) -> dict[tuple, dict[str, Any]]:
        """Code already measured, by knob vector -> its record."""
        out: dict[tuple, dict[str, Any]] = {}
        for rec in self._records.values():
            if rec.get("status") in _NOT_RUN:
                continue
            vec = self._record_vector(rec)
            if vec is not None and all(k in vec for k in self._dims):
                out[tuple(sorted((k, vec[k]) for k in self._dims))] = rec
        return out

    def _sample(self, knobs: list[Knob], current: dict[str, Number], ctx: Context) -> tuple[dict[str, str], str]:
        """Values for every tuned knob, as literal text, that differ from every code already tried."""
        by_key = {k.key: k for k in knobs}
        known = self._known_outcomes()
        TrialState = self._optuna.trial.TrialState
        dists = {key: dim.distribution() for key, dim in self._dims.items()}
        use_mutation = self.config.proposer.sampler == "tpe" and _MUTATE_P > 0
        for attempt in range(_MAX_RESAMPLES):
            strategy = "mutate" if (use_mutation and self._rng.random() < _MUTATE_P) else self.config.proposer.sampler
            queued = self._queued()
            if queued is not None:  # another run's best, tried here first
                strategy = "learned"
                self._study.enqueue_trial(queued)
            elif strategy == "mutate" or attempt >= _MAX_RESAMPLES // 2:
                # Also the way out when the sampler keeps returning code that already ran.
                strategy = "mutate"
                params = self._mutate(current)
                if params is None:
                    break
                self._study.enqueue_trial(params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = self._study.ask(dists)
            texts = {key: format_value(self._dims[key].value(trial.params[key]), by_key[key]) for key in self._dims}
            vkey = _vector_key(texts)
            if vkey == _vector_key({key: by_key[key].text for key in self._dims}):
                seen: dict[str, Any] | None = ctx.best or {"status": "no-op"}
            else:
                seen = known.get(vkey)
            if seen is None:
                self._pending[ctx.experiment_id] = trial
                return texts, strategy
            # Already measured: tell the sampler what that code scored, and ask again.
            metric = seen.get("metric")
            if seen.get("status") in _MEASURED and isinstance(metric, (int, float)) and math.isfinite(metric):
                self._study.tell(trial, float(metric))
            else:
                self._study.tell(trial, state=TrialState.FAIL)
        raise ProposalInvalid(
            "tune: every candidate drawn from the search space was already tried; widen the ranges in "
            "[proposer.space] of autoresearch.toml or switch to another proposer"
        )

    def _queued(self) -> dict[str, Any] | None:
        """The next queued vector of another run, as parameters of the current space (or None)."""
        while self._queue:
            vec = self._queue.pop(0)
            params = {}
            for key, dim in self._dims.items():
                p = dim.param(vec[key]) if key in vec else None
                if p is None:
                    break
                params[key] = p
            else:
                return params
        return None

    def _mutate(self, current: dict[str, Number]) -> dict[str, Any] | None:
        """The current best with one or two knobs moved to a new value of their range."""
        keys = [k for k in self._dims if k in current]
        if not keys:
            return None
        base = {k: self._dims[k].param(current[k]) for k in keys}
        n = 1 if len(keys) == 1 or self._rng.random() < 0.7 else 2
        chosen = self._rng.sample(keys, n)
        params = {}
        for k, dim in self._dims.items():
            p = base.get(k)
            if p is None or k in chosen:
                p = self._draw(dim, exclude=p)
                if p is None:
                    return None
            params[k] = p
        return params

    def _draw(self, dim: Dim, exclude: Any = None) -> Any | None:
        """A uniformly random parameter value of DIM (in log space for log ranges), unlike EXCLUDE."""
        for _ in range(20):
            if dim.kind == "choice":
                p: Any = self._rng.choice(dim.choices)
            elif dim.kind in ("int", "pow"):
                lo, hi = int(dim.low), int(dim.high)
                if dim.log and dim.kind == "int":
                    p = int(round(math.exp(self._rng.uniform(math.log(lo), math.log(hi)))))
                else:
                    p = self._rng.randint(lo, hi)
            elif dim.log:
                p = math.exp(self._rng.uniform(math.log(dim.low), math.log(dim.high)))
            else:
                p = self._rng.uniform(dim.low, dim.high)
            if exclude is None or p != exclude:
                return p
        return None

    # ---- results ---------------------------------------------------------------------------------
    def observe(self, record: dict[str, Any]) -> None:
        rid = record.get("id")
        if rid is None:
            return
        self._records[rid] = record
        self._learn_vectors(record)
        trial = self._pending.pop(rid, None)
        if trial is None or self._study is None:
            return
        self._in_study.add(rid)
        TrialState = self._optuna.trial.TrialState
        status, metric = record.get("status"), record.get("metric")
        trial.set_user_attr("experiment", rid)
        trial.set_user_attr("status", status)
        if status in _NOT_RUN:
            # Never measured: the trial is dropped (FAIL tells the sampler nothing).
            self._study.tell(trial, state=TrialState.FAIL)
            self._in_study.discard(rid)
            return
        if status in _MEASURED and isinstance(metric, (int, float)) and math.isfinite(metric):
            self._study.tell(trial, float(metric))
        elif status in _STOPPED_EARLY:
            # Optuna ranks pruned trials below every finished one, by how far they got: what they are.
            for step, value in _early_values(record).items():
                trial.report(value, step)
            self._study.tell(trial, state=TrialState.PRUNED)
        else:
            self._study.tell(trial, state=TrialState.FAIL)
        vec = self._record_vector(record)
        frozen = self._frozen(record, vec) if vec is not None else None
        if frozen is not None:
            self._mirror(frozen)

    def close(self) -> None:
        self._study = None
        self._journal = None
        self._pending.clear()


def _flock_journal_lock(path: Path) -> Any:
    """A journal lock the kernel drops when its holder dies. Optuna's own file locks outlive a
    SIGKILLed harness and make the next start wait their 30 s grace period, at every restart."""
    import fcntl

    from optuna.storages.journal import JournalFileOpenLock

    class FlockJournalLock(JournalFileOpenLock):
        def __init__(self) -> None:
            self._fh: Any = None

        def acquire(self) -> bool:
            fh = open(path, "a")
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._fh = fh
            return True

        def release(self) -> None:
            fh, self._fh = self._fh, None
            if fh is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()

    return FlockJournalLock()
