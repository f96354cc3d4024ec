"""autoresearch.toml: schema, defaults, and one-sentence errors that name the key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

CONFIG_NAME = "autoresearch.toml"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """'5m' -> 300.0, '1h30m' -> 5400.0, '90' or 90 -> 90.0 (seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: use e.g. '90s', '5m', '1h30m'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"duration must be positive, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"bad duration {value!r}: use e.g. '90s', '5m', '1h30m'")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad duration {value!r}: use e.g. '90s', '5m', '1h30m'")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower() if m.group(2) else None]
        pos = m.end()
    if total <= 0:
        raise ValueError(f"bad duration {value!r}: must be positive, e.g. '90s', '5m', '1h30m'")
    return total


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExperimentConfig(_Strict):
    setup: str = ""
    run: str
    evaluate: str = ""
    budget: float = 300.0
    timeout: float = 600.0
    editable: list[str]
    protected: list[str] = Field(default_factory=list)
    # Not visible to `run` under the bwrap sandbox (visible to `evaluate`): files in the folder, or
    # paths outside it starting with /, ~ or $VAR (globs allowed), e.g. a cached validation split.
    hidden: list[str] = Field(default_factory=list)
    # auto: bubblewrap where it works, else process limits with a warning naming what is not enforced
    sandbox: Literal["auto", "none", "process", "bwrap"] = "auto"
    secrets: list[str] = Field(default_factory=list)  # extra env var names stripped by the sandbox
    max_log_mb: float = 10.0
    budget_grace: float = 0.25  # the baseline itself: over budget * (1 + grace) + 30 s is `over_budget`
    # A candidate over max(budget, the baseline's median wall time) * (1 + tolerance) + 2 s is `over_budget`.
    wall_tolerance: float = Field(default=0.10, ge=0.0, le=10.0)
    # Paths `run` may read although they lie inside a `hidden` entry or the home folder (which `run`
    # does not see under bwrap): e.g. the training split of a data folder whose held-out part is hidden.
    visible: list[str] = Field(default_factory=list)
    # Folders in the experiment (e.g. a compile cache) that survive from one experiment to the next;
    # everything else untracked or ignored is deleted before each run. Their hash goes into each record.
    cache: list[str] = Field(default_factory=list)
    # Runs after `evaluate`, confined like it, from the protected files: must exit 0 (the service's
    # tests still pass, the findings were fixed and not silenced), else the experiment is `rejected`.
    guard: str = ""
    # Scores a kept winner's saved artifacts on a second hidden split that the loop never optimises
    # on (run like `evaluate`, at stop and every `[judge] holdout_every` keeps): the honest answer to
    # "did the loop overfit the validation set?". Empty: no holdout.
    holdout: str = ""

    @field_validator("budget", "timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("run")
    @classmethod
    def _run_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty shell command, e.g. run = \"python train.py\"")
        return v

    @field_validator("cache")
    @classmethod
    def _cache_inside(cls, v: list[str]) -> list[str]:
        for entry in v:
            parts = entry.replace("\\", "/").strip("/").split("/")
            if not entry.strip() or entry.startswith(("/", "~", "$")) or ".." in parts:
                raise ValueError(f"entry {entry!r} must be a folder inside the experiment folder, e.g. cache = [\".cache/compile\"]")
        return [e.replace("\\", "/").strip("/") for e in v]

    @field_validator("editable")
    @classmethod
    def _editable_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one file a proposer may change, e.g. editable = [\"train.py\"]")
        return v

    @model_validator(mode="after")
    def _timeout_after_budget(self) -> "ExperimentConfig":
        if self.timeout < self.budget:
            raise ValueError(
                f"timeout ({self.timeout:g}s) is shorter than budget ({self.budget:g}s); "
                "set timeout above budget, e.g. twice it"
            )
        return self


class Constraint(_Strict):
    """[[metric.constraints]]: a bound on a recorded metric (the mean over repeats); a candidate
    that violates one is discarded with a reason naming the metric, the bound and the value.
    The *_vs_baseline bounds are relative to the baseline's mean of that metric."""

    name: str
    min: float | None = None
    max: float | None = None
    min_vs_baseline: float | None = None
    max_vs_baseline: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> "Constraint":
        if all(v is None for v in (self.min, self.max, self.min_vs_baseline, self.max_vs_baseline)):
            raise ValueError(f"constraint on {self.name!r} has no bound; give min, max, min_vs_baseline or max_vs_baseline")
        return self


class MetricConfig(_Strict):
    name: str = "val_bpb"
    goal: Literal["minimize", "maximize"] = "minimize"
    constraints: list[Constraint] = Field(default_factory=list)


class PruneConfig(_Strict):
    """[judge.prune]: stop a run early on its intermediate values (`METRIC name=value progress=f`
    lines). Intermediate values come from editable code: they only ever stop a run, never keep one."""

    metric: str = ""  # the intermediate metric, e.g. "train_loss"; empty: no pruning
    goal: Literal["minimize", "maximize"] | None = None  # default: the [metric] goal
    after: float = Field(default=0.2, gt=0.0, lt=1.0)  # never before this fraction of the budget
    # best-repeats: worse than every repeat of the best at the same progress by more than k x their
    # spread; median / halving: Optuna's MedianPruner / SuccessiveHalvingPruner over earlier runs.
    rule: Literal["best-repeats", "median", "halving"] = "best-repeats"
    k: float = Field(default=3.0, gt=0.0)
    min_runs: int = Field(default=3, ge=1)  # median/halving: earlier runs with a curve before it acts


class JudgeConfig(_Strict):
    baseline_runs: int = Field(default=3, ge=1, le=100)
    min_delta: float | Literal["auto"] = "auto"
    # "local": noise measured near the current best, seed for seed (see judge.py); "pooled": the
    # earlier rule, one std over every repeated experiment and a keep at 2 x that std.
    noise: Literal["local", "pooled"] = "local"
    confirm: bool = False
    # A gain beyond both bounds is `suspicious` and must be re-run before it can be kept.
    plausible_noise_factor: float = 10.0
    plausible_relative: float = 0.05
    prune: PruneConfig = Field(default_factory=PruneConfig)
    # Multi-fidelity: a candidate first runs at this shorter budget; only one that screens within
    # `promote` (relative) of the best's screening score runs the full budget. A screening score
    # never decides a keep. None: no screening.
    screen: float | None = None
    promote: float = Field(default=0.02, ge=0.0)
    holdout_every: int = Field(default=5, ge=0)  # re-score kept winners on the holdout every K keeps (0: at stop only)

    @field_validator("screen", mode="before")
    @classmethod
    def _screen_duration(cls, v: Any) -> float | None:
        return None if v is None or v == "" else parse_duration(v)

    @field_validator("min_delta")
    @classmethod
    def _nonneg(cls, v: Any) -> Any:
        if isinstance(v, float) and v < 0:
            raise ValueError("must be 'auto' or a number >= 0")
        return v


class SpaceSpec(_Strict):
    """[proposer.space.KNOB]: override the search range of one knob, give choices, or exclude it."""

    low: float | None = None
    high: float | None = None
    log: bool | None = None
    choices: list[float | int | str | bool] | None = None
    exclude: bool = False


class ProposerConfig(_Strict):
    kind: Literal["tune", "llm", "agent", "hybrid"] = "tune"
    seed: int | None = None
    # tune
    sampler: Literal["tpe", "cmaes", "random"] = "tpe"
    space: dict[str, SpaceSpec] = Field(default_factory=dict)
    # llm
    provider: Literal["openai", "anthropic"] = "openai"
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""
    temperature: float = 0.7
    max_tokens: int = 8000
    history: int = 20
    request_timeout: float = 120.0
    max_retries: int = 5
    repair_turns: int = 2
    retry_backoff: float = 2.0  # seconds; base of the backoff between retries of transient API errors
    price_input_per_mtok: float = 0.0
    price_output_per_mtok: float = 0.0
    response_format: Literal["text", "json_schema"] = "text"
    # agent
    agent: str = ""  # a template name: claude, codex, aider; or empty with `command`
    command: str = ""  # custom agent command; {prompt_file} is replaced by the prompt's path
    agent_timeout: float = 1800.0
    # How the agent (and `autoresearch drive`'s agent) is confined: auto = bubblewrap where it works.
    sandbox: Literal["auto", "none", "process", "bwrap"] = "auto"
    network: bool = True  # a hosted agent needs its API; false cuts it off, the host's loopback too,
    # except these ports of the host's 127.0.0.1 (a local model server), carried across the cut
    loopback_ports: list[int] = Field(default_factory=list)
    # What of the home folder the agent sees (its own config), read-write; unset: the template's own
    # (claude: ~/.claude, ~/.claude.json; codex: ~/.codex; aider: ~/.aider*).
    agent_paths: list[str] | None = None
    # Variables passed although they look like credentials; unset: the template's API keys.
    agent_env: list[str] | None = None
    # hybrid
    tune_steps: int = 5  # K: tune experiments after each kept LLM change
    tune_first: int = 0  # tune experiments before the model's first turn

    @field_validator("agent_timeout", "request_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class EvidenceConfig(_Strict):
    """[evidence]: witnesses outside the run. With timestamp_url set, the chain head is sent to an
    RFC 3161 time-stamp authority every `timestamp_every` records and at every stop (0 = at stops
    only); `verify` checks the tokens against the TSA certificate chain in `timestamp_ca`."""

    timestamp_url: str = ""
    timestamp_every: int = Field(default=10, ge=0)
    timestamp_ca: str = ""  # PEM: the TSA's root (and intermediates); relative to the experiment folder
    timestamp_timeout: float = 10.0

    @field_validator("timestamp_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of an RFC 3161 time-stamp authority, e.g. \"https://freetsa.org/tsr\"")
        return v

    @field_validator("timestamp_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class ResourcesConfig(_Strict):
    """[resources]: how many experiments run at once, and each one's share of the machine."""

    workers: int = Field(default=1, ge=1, le=1024)
    # Cores per worker (pinned with affinity, and the thread-count variables set to it); unset: the
    # machine's cores split evenly. With one worker nothing is pinned.
    cpus_per_worker: int | None = Field(default=None, ge=1)
    # GPUs per worker (CUDA_VISIBLE_DEVICES); unset: the GPUs split evenly, an error if there are
    # fewer GPUs than workers; 0: every worker sees every GPU (they share, because you asked).
    gpus_per_worker: int | None = Field(default=None, ge=0)
    backend: Literal["local", "ray"] = "local"
    address: str = ""  # the Ray cluster: "auto" (a running `ray start --head`), "ray://host:10001"; empty: local


class Config(_Strict):
    experiment: ExperimentConfig
    metric: MetricConfig = Field(default_factory=MetricConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    proposer: ProposerConfig = Field(default_factory=ProposerConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _editable_not_protected(self) -> "Config":
        both = set(self.experiment.editable) & set(self.experiment.protected)
        if both:
            raise ValueError(f"experiment.editable and experiment.protected both list {sorted(both)}; a file is one or the other")
        return self

    @property
    def maximize(self) -> bool:
        return self.metric.goal == "maximize"


def _describe(err: ValidationError, path: Path) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key '{loc}'; remove it or check its spelling"
    if first["type"] == "missing":
        return f"{path}: missing required key '{loc}'; add it"
    where = f"key '{loc}'" if loc else "config"
    return f"{path}: {where}: {msg}"


def parse_config(data: dict[str, Any], path: Path) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, path)) from None


def load_config(root: Path) -> Config:
    """Read and validate ROOT/autoresearch.toml."""
    path = Path(root) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path} not found; create one with `autoresearch init {root}` or write it by hand")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    return parse_config(data, path)
