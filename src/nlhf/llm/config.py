"""Trainer configuration: pydantic models loaded from YAML, with one-line errors.

Every model forbids unknown keys, so a typo in a YAML file fails loudly instead of being
silently ignored; :func:`load_config` turns the first validation error into an
:class:`NLHFInputError` of the form ``"<file>: field 'a.b': <message>"``.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from nlhf.atomic import write_text_atomic
from nlhf.errors import NLHFInputError
from nlhf.llm.judges.registry import JUDGES

Algorithm = Literal["denpo", "denpo-explore", "inpo", "xpo", "sppo", "online-dpo", "online-ipo",
                    "nash-md"]
#: Algorithm names that changed, with the name to use now.
RENAMED_ALGORITHMS = {"enpo": "denpo"}
# Algorithms whose update mixes pi_t and pi_ref with weight tau/eta: they need tau < eta.
MIRROR_DESCENT_ALGOS = ("denpo", "denpo-explore", "inpo", "nash-md")


class ConfigFieldError(ValueError):
    """A validator error that knows which sub-field (dotted, relative to the model) is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


#: Whole numbers only: YAML ``true`` or ``2.5`` is a typo, not 1 or 2.
Int = Annotated[int, Strict()]
#: A number (ints accepted), never a bool; with ``allow_inf_nan=False`` below, finite.
Float = Annotated[float, Strict()]
#: Fields a config file must set: an empty file is more likely a mistake than a wish for
#: the defaults, and these two decide where the run goes and what it trains.
REQUIRED_FIELDS = ("run_dir", "algorithm")

# Sanity bounds: far beyond any real run, well below what would overflow or never end.
MAX_ITERATIONS = 10_000
MAX_NEW_TOKENS = 32_768
MAX_LORA_RANK = 1024
MAX_COUNT = 4096  # comparators, candidates, pairs per prompt, epochs
MAX_BATCH = 65_536
MAX_LEARNING_RATE = 1.0
MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 100.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoraConfig(_Strict):
    r: Int = Field(16, gt=0, le=MAX_LORA_RANK)
    alpha: Int = Field(32, gt=0)
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class ModelConfig(_Strict):
    name: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)


class HParams(_Strict):
    """Game and algorithm hyperparameters (SPEC §2 names); defaults are the paper's."""

    eta: Float = Field(7.5e-3, gt=0, description="inverse step size")
    tau: Float = Field(2.5e-3, gt=0, description="KL parameter")
    alpha: Float = Field(1e-3, ge=0, description="proximal (ENPO) / exploration (XPO) weight")
    beta: Float = Field(0.05, gt=0, description="DENPO Step B DPO temperature")
    s: Float = Field(1.0, description="DENPO Step B exploration sign/scale, non-zero")
    n_comparators: Int = Field(4, gt=0, le=MAX_COUNT)
    step_b_candidates: Int = Field(2, ge=2, le=MAX_COUNT,
                                   description="DENPO Step B ranks pairs of these")
    pairs_per_prompt: Int = Field(1, gt=0, le=MAX_COUNT)
    explore_temperature: Float = Field(
        2.0, ge=1, le=MAX_TEMPERATURE,
        description="DENPO-explore: T_e of Step B's fresh candidates and its pi_t^{1/T_e} anchor")
    explore_sampling: Literal["response", "token"] = Field(
        "response",
        description="DENPO-explore: how candidates come from pi_t^{1/T_e}: 'response' resamples "
        "temperature-1 samples with weights pi_t(u)^{1/T_e - 1} (whole responses, as the lab); "
        "'token' samples each token at T_e (on a 135M model: word salad, docs/trainer.md)")
    explore_candidates: Int = Field(
        4, ge=2, le=MAX_COUNT,
        description="DENPO-explore, response sampling: temperature-1 samples per pair that "
        "u, u' are resampled from")
    step_b_labels: Literal["hard", "soft"] = Field(
        "hard",
        description="DENPO Step B labels: 'hard' (the paper's winner/loser pairs) or 'soft' "
        "(sigmoid of the score gap, whose DPO fit is the exact tilted adversary)",
    )

    @field_validator("s")
    @classmethod
    def _s_nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("s must be non-zero (the paper uses s = 1)")
        return v


class DataConfig(_Strict):
    prompts: str = "builtin"
    field: str = "prompt"
    prompts_per_iteration: Int = Field(64, gt=0, le=10**7)
    heldout: Int = Field(64, gt=0, le=10**7)
    split_seed: Int = Field(
        0, ge=0, le=2**63 - 1,
        description="seeds the train/held-out split; apart from `seed` so that every seed of a "
        "recipe is evaluated on the same held-out prompts")
    max_prompt_chars: Int = Field(2000, gt=0, le=10**7)


class ServerConfig(_Strict):
    """An OpenAI-compatible completions server for ``rollout.backend: openai`` (docs/rollout.md)."""

    base_url: str | None = Field(None, description="the API root, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="the base model's name on the server (= pi_ref)")
    api_key_env: str = Field("VLLM_API_KEY", description="env var holding the key, if any")
    timeout: Float = Field(300.0, gt=0)
    max_retries: Int = Field(5, ge=0)
    concurrency: Int = Field(8, gt=0, description="requests (one per prompt) in flight")
    prompt_format: Literal["tokens", "text"] = "tokens"
    token_ids: bool = Field(True, description="send vLLM/SGLang extensions: ids back, exact "
                                              "sampler, HF's EOS set; false: plain OpenAI")
    adapter_url: str | None = Field(None, description="root of /load_lora_adapter if not "
                                                      "base_url (SGLang: the server root)")

    @field_validator("base_url", "adapter_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class VLLMEngineConfig(_Strict):
    """The in-process engine of ``rollout.backend: vllm`` (GPU only)."""

    model: str | None = Field(None, description="folder or Hub id; default: the base model's")
    dtype: str = "auto"
    gpu_memory_utilization: Float = Field(0.4, gt=0, le=1)
    max_model_len: Int | None = Field(None, gt=0)


class RolloutConfig(_Strict):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    max_new_tokens: Int = Field(48, gt=0, le=MAX_NEW_TOKENS)
    temperature: Float = Field(1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE)
    top_p: Float = Field(1.0, gt=0, le=1)
    #: Sequences per generate call (hf backend): decoding a small model re-reads every
    #: weight per step, so bigger batches are much faster (docs/performance.md).
    batch_size: Int = Field(32, gt=0, le=MAX_BATCH)
    server: ServerConfig = Field(default_factory=ServerConfig)
    vllm: VLLMEngineConfig = Field(default_factory=VLLMEngineConfig)

    @model_validator(mode="after")
    def _server_for_openai(self) -> RolloutConfig:
        if self.backend != "openai":
            return self
        if not self.server.base_url:
            raise ConfigFieldError("server.base_url", "required when rollout.backend is "
                                   "'openai', e.g. http://127.0.0.1:8000/v1")
        if not self.server.model:
            raise ConfigFieldError("server.model", "required when rollout.backend is 'openai': "
                                   "the base model's name on the server (the reference)")
        return self


class TrainOptConfig(_Strict):
    learning_rate: Float = Field(5e-5, gt=0, le=MAX_LEARNING_RATE)
    epochs: Int = Field(1, gt=0, le=MAX_COUNT)
    batch_size: Int = Field(8, gt=0, le=MAX_BATCH)
    #: Items (pairs) per forward/backward inside a step; gradients accumulate, so the step
    #: is the same, with a micro-batch's activation memory. 0: the whole minibatch at once.
    micro_batch_size: Int = Field(2, ge=0, le=MAX_BATCH)
    max_grad_norm: Float = Field(1.0, gt=0)
    weight_decay: Float = Field(0.0, ge=0)


class EvalConfig(_Strict):
    n_samples_per_prompt: Int = Field(1, gt=0, le=MAX_COUNT)
    max_new_tokens: Int = Field(48, gt=0, le=MAX_NEW_TOKENS)
    temperature: Float = Field(0.7, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE)


def _tau_eta_message(tau: float, eta: float) -> str:
    return f"tau ({tau}) must be < eta ({eta}): eta is the inverse step size"


class TrainConfig(_Strict):
    run_dir: str = "runs/demo"
    seed: Int = Field(0, ge=0, lt=2**32, description="numpy seeds are 32-bit")
    iterations: Int = Field(3, gt=0, le=MAX_ITERATIONS)
    algorithm: Algorithm = "denpo"
    model: ModelConfig = Field(default_factory=ModelConfig)
    hparams: HParams = Field(default_factory=HParams)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: TrainOptConfig = Field(default_factory=TrainOptConfig)
    judge: dict[str, Any] = Field(default_factory=lambda: {"type": "criteria"})
    eval: EvalConfig = Field(default_factory=EvalConfig)
    #: Experiment trackers fed each finished iteration's metrics (nlhf.llm.tracking).
    report_to: list[Literal["tensorboard", "trackio", "wandb"]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_sweep(cls, data: Any) -> Any:
        if isinstance(data, dict) and "sweep" in data:
            raise ConfigFieldError(
                "sweep", "nlhf train runs one (eta, tau) point per run; run each point as its "
                "own run (--set hparams.eta=... --set hparams.tau=... --set run_dir=...), "
                "see docs/trainer.md"
            )
        return data

    @field_validator("algorithm", mode="before")
    @classmethod
    def _renamed(cls, v: Any) -> Any:
        if v in RENAMED_ALGORITHMS:
            raise ValueError(
                f"'{v}' is now '{RENAMED_ALGORITHMS[v]}': the trainer runs DENPO, the practical "
                "form of ENPO (the exact ENPO exists in the lab only)"
            )
        return v

    @field_validator("judge")
    @classmethod
    def _judge_type(cls, v: dict[str, Any]) -> dict[str, Any]:
        kind = v.get("type")
        if not isinstance(kind, str):
            raise ConfigFieldError(
                "type", f"judge needs a string 'type', one of {', '.join(JUDGES)}"
            )
        if kind not in JUDGES:
            raise ConfigFieldError(
                "type", f"unknown judge type {kind!r}; choose one of {', '.join(JUDGES)}"
            )
        return v

    @model_validator(mode="after")
    def _tau_below_eta(self) -> TrainConfig:
        """OMD mixes pi_t^(1 - tau/eta) with pi_ref^(tau/eta): needs 0 < tau/eta < 1."""
        if self.algorithm not in MIRROR_DESCENT_ALGOS:
            return self
        h = self.hparams
        if h.tau >= h.eta:
            raise ConfigFieldError("hparams.tau", _tau_eta_message(h.tau, h.eta))
        return self


# --------------------------------------------------------------------------- errors


def _model_at(parts: list[str]) -> type[BaseModel] | None:
    """The pydantic model class reached by following ``parts`` from TrainConfig."""
    model: type[BaseModel] = TrainConfig
    for part in parts:
        if part.isdigit():
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        candidates = [info.annotation]
        for arg in typing.get_args(info.annotation):
            candidates += [arg, *typing.get_args(arg)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _describe(exc: ValidationError) -> tuple[str, str]:
    """(dotted field, one-line message) for the first error of ``exc``."""
    err = exc.errors()[0]
    parts = [str(p) for p in err["loc"]]
    msg = str(err["msg"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigFieldError):
        parts += cause.field.split(".")
        msg = str(cause)
    elif err["type"] == "extra_forbidden":
        owner = _model_at(parts[:-1])
        allowed = ", ".join(owner.model_fields) if owner else "see the docs"
        msg = f"unknown field; allowed here: {allowed}"
    else:
        msg = msg.removeprefix("Value error, ")
        value = err.get("input")
        if not isinstance(value, (dict, list)):
            shown = repr(value)
            msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return ".".join(parts) or "<root>", " ".join(msg.split())


def validate_config(
    raw: dict[str, Any],
    source: str = "<config>",
    overridden: set[str] | frozenset[str] = frozenset(),
) -> TrainConfig:
    """Validate a raw mapping; errors become one-line NLHFInputError naming the field.

    An empty section (``hparams:`` with nothing under it, i.e. None) means "all defaults".
    """
    sections = {"model", "hparams", "data", "rollout", "train", "judge", "eval"}
    raw = {k: v for k, v in raw.items() if not (v is None and k in sections)}
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        field, msg = _describe(exc)
        note = " (set by override)" if field in overridden else ""
        raise NLHFInputError(f"{source}: field '{field}'{note}: {msg}") from None


# --------------------------------------------------------------------------- overrides


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted keys (``{"hparams.eta": 0.01}``) set."""
    out = _deep_copy(raw)
    for key, value in overrides.items():
        parts = key.split(".")
        if not all(parts):
            raise NLHFInputError(f"override '{key}': empty part in dotted key; write a.b=value")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise NLHFInputError(
                    f"override '{key}': '{where}' is a {type(child).__name__}, not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` strings; values are read as YAML (``0.01``, ``[a, b]``, ``true``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise NLHFInputError(f"override '{item}': expected key=value, e.g. hparams.eta=0.01")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- files


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (empty file: ``{}``); one-line errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NLHFInputError(f"{p}: config file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NLHFInputError(f"{p}: cannot read config ({' '.join(str(exc).split())})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise NLHFInputError(
            f"{p}: not valid YAML{where}: {' '.join(str(problem).split())}"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise NLHFInputError(
            f"{p}: the top level must be a mapping of fields, got {type(raw).__name__}"
        )
    return raw


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config, apply dotted ``overrides``, validate; missing keys take defaults,
    except :data:`REQUIRED_FIELDS`."""
    return config_from_mapping(read_config_mapping(path), overrides, str(path))


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A run's saved ``config.yaml``: as :func:`load_config`, except that a key an older nlhf
    did not write takes the value that version ran with, where today's default differs
    (:func:`with_legacy_values`), so resuming or comparing an old run never changes what it
    computes."""
    raw = with_legacy_values(read_config_mapping(path))
    return config_from_mapping(raw, overrides, str(path))


#: (algorithm, hparams key) -> the value runs made before the key existed computed with,
#: where the key's default today is another one. explore_sampling arrived on 2026-12-04 with
#: 'response' as its default; denpo-explore runs before then tempered each token.
LEGACY_HPARAMS: dict[tuple[str, str], Any] = {("denpo-explore", "explore_sampling"): "token"}


def with_legacy_values(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the values older runs used for keys added later with another default."""
    hparams = raw.get("hparams") or {}
    legacy = {key: value for (algo, key), value in LEGACY_HPARAMS.items()
              if algo == raw.get("algorithm")}
    if not legacy or not isinstance(hparams, dict):
        return raw  # nothing to add (a malformed section is validation's to report)
    return {**raw, "hparams": {**legacy, **hparams}}


def config_from_mapping(raw: dict[str, Any], overrides: dict[str, Any] | None = None,
                        source: str = "<config>") -> TrainConfig:
    """Validate a raw config mapping after dotted ``overrides``; errors name ``source``."""
    overrides = overrides or {}
    raw = apply_overrides(raw, overrides)
    missing = [name for name in REQUIRED_FIELDS if raw.get(name) is None]
    if missing:
        raise NLHFInputError(
            f"{source}: missing required field{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}; every config sets them, e.g. "
            "run_dir: runs/my-run and algorithm: denpo (see configs/demo.yaml)"
        )
    return validate_config(raw, source, frozenset(overrides))


def dump_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically (temp file + rename), so a run directory
    never holds a half-written config if the process dies."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return write_text_atomic(path, text)
