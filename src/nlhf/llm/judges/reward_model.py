"""A scalar reward model as judge (Bradley–Terry): compare two responses by their scores.

Why hard outcomes by default: the paper labels a pair by which response scores strictly
higher, ties counting 1/2 after both orders are averaged; `soft=True` gives σ(r_a − r_b).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nlhf.llm.judges.base import LRU, Judge
from nlhf.llm.judges.hf_models import load_judge_model, load_judge_tokenizer


class RewardModelJudge(Judge):
    """Any Hugging Face sequence classifier scoring (prompt, response)."""

    name = "reward-model"
    symmetric = True  # scores do not depend on the order the pair is given in

    def __init__(self, model: str, *, soft: bool = False, device: str = "cpu",
                 dtype: str | None = None, trust_remote_code: bool = False,
                 revision: str | None = None, max_length: int = 1024, batch_size: int = 8,
                 cache_size: int = 50_000) -> None:
        self.model_name = str(model)
        self.soft = soft
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.max_length = max_length
        self.batch_size = batch_size
        self._scores: LRU[float] = LRU(cache_size)
        self._model: Any = None
        self._tokenizer: Any = None

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_name, "revision": self.revision, "soft": self.soft,
                "max_length": self.max_length}

    def _load(self) -> None:
        if self._model is not None:
            return
        self._tokenizer = load_judge_tokenizer(
            self.model_name, trust_remote_code=self.trust_remote_code, revision=self.revision)
        model = load_judge_model(
            "AutoModelForSequenceClassification", self.model_name, dtype=self.dtype,
            device=self.device, trust_remote_code=self.trust_remote_code, revision=self.revision)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model = model

    def _encode(self, prompts: list[str], responses: list[str]) -> Any:
        tok = self._tokenizer
        common = {"padding": True, "truncation": True, "max_length": self.max_length,
                  "return_tensors": "pt"}
        if getattr(tok, "chat_template", None):
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                    tokenize=False,
                )
                for p, r in zip(prompts, responses, strict=True)
            ]
            return tok(texts, add_special_tokens=False, **common)
        return tok(prompts, responses, **common)  # the classic (question, answer) pair

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Scalar rewards, each (prompt, response) computed once and cached."""
        import torch

        keys = list(zip(prompts, responses, strict=True))
        found = {k: v for k in dict.fromkeys(keys) if (v := self._scores.get(k)) is not None}
        todo = [k for k in dict.fromkeys(keys) if k not in found]
        if todo:
            self._load()
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s:s + self.batch_size]
                enc = self._encode([p for p, _ in chunk], [r for _, r in chunk])
                enc = {k: v.to(self.device) for k, v in enc.items()}
                with torch.inference_mode():
                    logits = self._model(**enc).logits.float()
                # One label: the reward. Two or more: the last label's margin over the first.
                values = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1] - logits[:, 0]
                for key, v in zip(chunk, values.cpu().tolist(), strict=True):
                    found[key] = float(v)
                    self._scores.put(key, float(v))
        return np.array([found[k] for k in keys], dtype=np.float64)

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        n = len(prompts)
        r = self.score(prompts + prompts, a + b)
        diff = r[:n] - r[n:]
        if self.soft:
            return 1.0 / (1.0 + np.exp(-np.clip(diff, -50, 50)))
        return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
