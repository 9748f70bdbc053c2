"""What a run must show before it continues, and what a training step must not produce.

Why: ``--resume`` promises the result of the uninterrupted run. That holds only if the run
continues under the config that made it, from files that agree with each other, and if no
step ever saved non-finite weights. So a resume first checks

- the config: ``config.yaml`` still matches the fingerprint stored when the run was created,
  and the requested config (``--config``, ``--set``) differs from it only in
  :data:`SAFE_ON_RESUME` fields (more iterations, eval settings, endpoints, timeouts,
  retries, concurrency); such changes are applied and appended to ``history.jsonl``;
- the files: ``store.sqlite`` opens and holds every round that ``state.json`` counts,
  ``metrics.jsonl`` repeats the store's metrics, and every saved adapter loads and is finite.

Every failure is one line naming the field or file and the way out.
:func:`require_finite_step` is the training guard: a NaN/Inf loss or gradient stops the
phase before its optimizer step, so nothing non-finite is ever saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from nlhf.atomic import write_json_atomic, write_text_atomic
from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig, dump_config, load_run_config, read_config_mapping
from nlhf.llm.rundir import RunDir, read_state
from nlhf.llm.store import RunStore

FINGERPRINT = "fingerprint.json"
HISTORY = "history.jsonl"
NEW_RUN = "start a new run_dir"

#: Dotted fields a resume may change: they decide how long the run goes, how it is
#: evaluated and how endpoints are reached, never what a finished round computed.
SAFE_ON_RESUME = (
    "iterations",
    "eval",
    *(f"judge.{k}" for k in ("base_url", "api_key_env", "timeout", "max_retries", "backoff",
                             "max_backoff", "concurrency")),
    *(f"rollout.server.{k}" for k in ("base_url", "adapter_url", "api_key_env", "timeout",
                                      "max_retries", "concurrency")),
)
#: Not part of the run's identity: the folder may be moved or named differently.
IGNORED = ("run_dir",)


# --------------------------------------------------------------------------- config


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A config as {dotted field: value}; lists are values, mappings are descended."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _is(field: str, names: tuple[str, ...]) -> bool:
    return any(field == n or field.startswith(n + ".") for n in names)


def protected_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The fields that define what a run computes: all but the safe and ignored ones."""
    return {k: v for k, v in _leaves(cfg.model_dump(mode="json")).items()
            if not _is(k, SAFE_ON_RESUME + IGNORED)}


def fields_sha256(fields: dict[str, Any]) -> str:
    """sha256 of {dotted field: value}, canonical JSON: what ``fingerprint.json`` stores."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(cfg: TrainConfig) -> str:
    """sha256 of the protected fields."""
    return fields_sha256(protected_fields(cfg))


def _history(run: RunDir, event: dict[str, Any]) -> None:
    """Append one event to ``history.jsonl`` (rewritten atomically: never half a line)."""
    path = run.root / HISTORY
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event})
    write_text_atomic(path, old + line + "\n")


def _write_fingerprint(run: RunDir, cfg: TrainConfig) -> str:
    sha = fingerprint(cfg)
    write_json_atomic(run.root / FINGERPRINT, {"sha256": sha, "fields": protected_fields(cfg)},
                      indent=1)
    return sha


def record_creation(run: RunDir, cfg: TrainConfig) -> None:
    """Store the new run's fingerprint (after ``config.yaml``) and open its history."""
    _history(run, {"event": "created", "fingerprint": _write_fingerprint(run, cfg)})


_SECRET_WORDS = ("key", "token", "secret", "password")
HIDDEN = "<hidden>"


def _secret(field: str) -> bool:
    """A field whose value must not reach an error line or the history (``*_env`` names an
    environment variable, which is fine to show)."""
    words = field.rsplit(".", 1)[-1].lower().split("_")
    return any(w in words for w in _SECRET_WORDS) and words[-1] != "env"


def _short(value: Any, field: str = "") -> str:
    if _secret(field):
        return HIDDEN
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_fingerprint(run: RunDir, stored: TrainConfig) -> None:
    """``config.yaml`` must still be the config the run was created with."""
    path = run.root / FINGERPRINT
    if not path.is_file():  # a run made before fingerprints, or killed right after config
        _history(run, {"event": "fingerprint", "fingerprint": _write_fingerprint(run, stored)})
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        sha, fields = str(saved["sha256"]), dict(saved["fields"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NLHFInputError(f"{path}: unreadable or garbled; {NEW_RUN}") from None
    if sha == fingerprint(stored):
        return
    now = protected_fields(stored)
    differ = [k for k in sorted(set(fields) | set(now)) if fields.get(k) != now.get(k)]
    written = _leaves(read_config_mapping(run.config))
    if differ and all(k not in fields and k not in written for k in differ):
        # Fields a newer nlhf added, at their defaults: absent from both the fingerprint and
        # config.yaml, so nobody edited them; the run computes what it did. Record and go on.
        _history(run, {"event": "fingerprint", "added_fields": differ,
                       "fingerprint": _write_fingerprint(run, stored)})
        return
    field = differ[0] if differ else "<unknown>"
    raise NLHFInputError(
        f"{run.config}: field '{field}' was edited after the run started (was "
        f"{_short(fields.get(field), field)}, now {_short(now.get(field), field)}); restore "
        f"it, or "
        f"{NEW_RUN}"
    )


def _changes(stored: TrainConfig, requested: TrainConfig) -> dict[str, tuple[Any, Any]]:
    old = _leaves(stored.model_dump(mode="json"))
    new = _leaves(requested.model_dump(mode="json"))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if not _is(k, IGNORED) and old.get(k) != new.get(k)}


def verify_resume(run: RunDir, requested: TrainConfig) -> TrainConfig:
    """The config to continue ``run`` with, after every check of this module; raises
    NLHFInputError with one line. Safe changes are written to config.yaml and history."""
    stored = load_run_config(run.config)
    _check_fingerprint(run, stored)
    changed = _changes(stored, requested)
    for field, (old, new) in changed.items():
        if not _is(field, SAFE_ON_RESUME):
            raise NLHFInputError(
                f"resume: field '{field}' differs from the run's config ({_short(old, field)} in"
                f" {run.config}, {_short(new, field)} given); it cannot change on resume: drop the "
                f"change, or {NEW_RUN}"
            )
    done = check_run_files(run, stored.model.finetune)
    if requested.iterations < done:
        raise NLHFInputError(
            f"resume: field 'iterations' ({requested.iterations}) is below the {done} rounds "
            f"{run.root} has completed; give at least {done}"
        )
    cfg = requested.model_copy(update={"run_dir": stored.run_dir})
    if changed:
        dump_config(cfg, run.config)
    _history(run, {"event": "resume", "completed_iteration": done,
                   "changed": {k: [HIDDEN, HIDDEN] if _secret(k) else list(pair)
                               for k, pair in changed.items()}})
    return cfg.model_copy(update={"run_dir": str(run.root)})


# --------------------------------------------------------------------------- files


def _state(run: RunDir) -> tuple[int, list[str]]:
    try:
        state = read_state(run.root)
        done = state.get("last_completed_iteration", 0)
        iterates = state.get("policy_iterates", [])
        if (not isinstance(done, int) or isinstance(done, bool) or done < 0
                or not isinstance(iterates, list)):
            raise ValueError("unexpected fields")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise NLHFInputError(
            f"{run.state}: not a valid run state ({' '.join(str(exc).split())[:80]}); {NEW_RUN}"
        ) from None
    return done, [str(p) for p in iterates]


def _metrics_file(run: RunDir) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    if not run.metrics.is_file():
        return rows
    for n, line in enumerate(run.metrics.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            rows[int(row.pop("iteration"))] = row
        except (ValueError, KeyError, TypeError, AttributeError):
            raise NLHFInputError(f"{run.metrics}:{n}: garbled line; {NEW_RUN}") from None
    return rows


def check_readable(run: RunDir, finetune: str = "lora", *, strict: bool = False) -> None:
    """What ``nlhf eval`` needs: state.json parses, the store opens, every saved adapter
    loads and is finite (an adapter folder without weights only when ``strict``: eval's
    loader names a missing file itself)."""
    _state(run)
    if run.store.exists():
        RunStore.open_existing(run.store).close()
    for folder in sorted(run.root.glob("adapters/iter_*/*")):
        saved = strict or any(folder.glob("*.safetensors"))
        if folder.is_dir() and not folder.name.startswith(".") and saved:
            check_adapter(folder, finetune)


def check_run_files(run: RunDir, finetune: str = "lora") -> int:
    """What a resume needs: :func:`check_readable`, and state, store, metrics and adapters
    agree on the completed rounds (a kill between two writes leaves a newer store or
    metrics.jsonl, never an older one); returns the completed rounds."""
    check_readable(run, finetune, strict=True)
    done, iterates = _state(run)
    expected = [f"adapters/iter_{t}/policy" for t in range(1, done + 1)]
    if iterates != expected:
        raise NLHFInputError(
            f"{run.state}: lists policy iterates {iterates[:3]}... but counts {done} completed "
            f"rounds; {NEW_RUN}"
        )
    by_round: dict[int, dict[str, float]] = {}
    if run.store.exists():
        with RunStore(run.store) as store:
            for t, name, value in store.metrics():
                by_round.setdefault(t, {})[name] = value
    elif done:
        raise NLHFInputError(f"{run.store}: missing, but {run.state} counts {done} rounds; "
                             f"{NEW_RUN}")
    lost = [t for t in range(1, done + 1) if t not in by_round]
    if lost:
        raise NLHFInputError(
            f"{run.store}: holds no metrics of round {lost[0]}, which {run.state} counts as "
            f"completed: the store was replaced or lost writes; {NEW_RUN}"
        )
    listed = _metrics_file(run)
    for t in range(1, done + 1):
        if t not in listed:
            raise NLHFInputError(f"{run.metrics}: round {t} is missing, but {run.state} counts "
                                 f"it; {NEW_RUN}")
    for t, row in listed.items():
        if by_round.get(t) != row:
            raise NLHFInputError(f"{run.metrics}: round {t} differs from {run.store}; {NEW_RUN}")
    for t in range(1, done + 1):
        if not run.adapter(t, "policy").is_dir():
            raise NLHFInputError(f"{run.adapter(t, 'policy')}: missing, but {run.state} counts "
                                 f"round {t}; {NEW_RUN}")
    return done


def check_adapter(folder: Path, finetune: str = "lora") -> None:
    """Every weight file of a saved adapter (or full model) loads and is finite; its JSON
    files parse. Reads the tensors: a truncated file can have an intact header."""
    from safetensors.torch import load_file

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        kind = "model" if finetune == "full" else "adapter"
        raise NLHFInputError(f"{folder}: holds no .safetensors weights of the {kind}; "
                             f"the save was lost: {NEW_RUN}")
    for path in sorted(folder.glob("*.json")):
        try:
            if not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise NLHFInputError(f"{path}: corrupt ({' '.join(str(exc).split())[:80]}); "
                                 f"{NEW_RUN}") from None
    for path in weights:
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type, or OSError
            raise NLHFInputError(
                f"{path}: cannot be loaded, truncated or corrupt "
                f"({' '.join(str(exc).split())[:80]}); {NEW_RUN}"
            ) from None
        bad = next((k for k, v in tensors.items()
                    if v.is_floating_point() and not bool(v.isfinite().all())), None)
        if bad is not None:
            raise NLHFInputError(f"{path}: tensor {bad} holds NaN/Inf weights; the policy is "
                                 f"unusable: {NEW_RUN} (e.g. with a lower train.learning_rate)")


# --------------------------------------------------------------------------- training


def require_finite_step(loss: float, grad_norm: float, desc: str, step: int) -> None:
    """Stop a training phase before an optimizer step on a NaN/Inf loss or gradient.

    Raised before ``step()``, so the weights are still the last finite ones, and before the
    phase saves anything; the run resumes from the last completed round.
    """
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    raise NLHFInputError(
        f"train: {desc} step {step} has a non-finite loss ({loss}) or gradient norm "
        f"({grad_norm}); nothing of this phase was saved and the last completed round stays "
        f"resumable; lower train.learning_rate or check the judge's labels, and {NEW_RUN}"
    )


def require_finite_weights(params: list[Any], desc: str) -> None:
    """After a phase: no weight went NaN/Inf (a finite step can still overflow them)."""
    if all(bool(p.detach().isfinite().all()) for p in params):
        return
    raise NLHFInputError(
        f"train: {desc} produced NaN/Inf weights; nothing of this phase was saved and the "
        f"last completed round stays resumable; lower train.learning_rate and {NEW_RUN}"
    )
