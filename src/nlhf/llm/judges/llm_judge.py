"""LLM-as-judge on a local Hugging Face causal LM.

Why next-token logits rather than sampling: softmax over the logits of "A" and "B" gives
a calibrated probability in one forward pass, deterministic, with no answer parsing.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.llm.judges.base import Judge
from nlhf.llm.judges.hf_models import load_judge_model, load_judge_tokenizer

JUDGE_TEMPLATE = (
    "You compare two responses to the same prompt.\n\n"
    "[Prompt]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Which response is better, A or B? Answer with a single letter: A or B."
)
#: Used only when the tokenizer has no chat template of its own.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class LLMJudge(Judge):
    """P(a≻b) = softmax(logit("A"), logit("B"))[0] after the question, a shown as A."""

    name = "llm-judge"
    symmetric = False  # LLMs have position bias: `prob` averages both orders

    def __init__(self, model: str, *, device: str = "cpu", dtype: str | None = None,
                 trust_remote_code: bool = False, revision: str | None = None,
                 template: str = JUDGE_TEMPLATE, chat_template: str | None = None,
                 max_response_tokens: int = 512, batch_size: int = 4) -> None:
        for field in ("{prompt}", "{a}", "{b}"):
            if field not in template:
                raise NLHFInputError(f"judge.template: must contain {field}")
        self.model_name = str(model)
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.template = template
        self.chat_template = chat_template
        self.max_response_tokens = max_response_tokens
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._ids: tuple[int, int] = (-1, -1)

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_name, "revision": self.revision, "template": self.template,
                "chat_template": self.chat_template,
                "max_response_tokens": self.max_response_tokens}

    def _load(self) -> None:
        if self._model is not None:
            return
        tok = load_judge_tokenizer(self.model_name, trust_remote_code=self.trust_remote_code,
                                   revision=self.revision)
        if self.chat_template is not None or not getattr(tok, "chat_template", None):
            tok.chat_template = self.chat_template or FALLBACK_CHAT_TEMPLATE
        tok.padding_side = "left"  # the answer is read at the last position of every row
        self._ids = (self._letter_id(tok, "A"), self._letter_id(tok, "B"))
        if self._ids[0] == self._ids[1]:
            raise NLHFInputError(
                f"judge.model: {self.model_name}'s tokenizer maps 'A' and 'B' to one token"
            )
        self._model = load_judge_model(
            "AutoModelForCausalLM", self.model_name, dtype=self.dtype, device=self.device,
            trust_remote_code=self.trust_remote_code, revision=self.revision)
        self._tokenizer = tok

    @staticmethod
    def _letter_id(tok: Any, letter: str) -> int:
        ids = tok.encode(letter, add_special_tokens=False)
        if not ids:
            raise NLHFInputError(f"judge.model: the tokenizer cannot encode {letter!r}")
        return int(ids[0])

    def _clip(self, text: str) -> str:
        """Shorten a response to max_response_tokens so both answers stay in the context."""
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.max_response_tokens:
            return text
        return str(self._tokenizer.decode(ids[: self.max_response_tokens]))

    def _prob_one_order(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        import torch

        self._load()
        tok = self._tokenizer
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": self.template.format(
                    prompt=p, a=self._clip(x), b=self._clip(y))}],
                tokenize=False, add_generation_prompt=True,
            )
            for p, x, y in zip(prompts, a, b, strict=True)
        ]
        enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        accepted = inspect.signature(self._model.forward).parameters
        if "position_ids" in accepted:  # left padding: count positions from the first token
            enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if "logits_to_keep" in accepted:  # only the last position is read
            enc["logits_to_keep"] = 1
        with torch.inference_mode():
            logits = self._model(**enc).logits[:, -1, :].float()
        pair = logits[:, list(self._ids)]
        return torch.softmax(pair, dim=-1)[:, 0].cpu().numpy().astype(np.float64)
