"""Needle oracles for language models: python judges that want one rare behaviour.

The LLM analogue of the tabular needle (docs/llm_exploration.md): a preference function that
strongly prefers a response showing a behaviour the reference model rarely shows, and is
indifferent between two responses that both show it or both lack it. An algorithm learns
to prefer the behaviour only once its own samples contain it, so the behaviour's rate per
iteration measures exploration.

Use one as the judge (``judge: {type: python, function: ...}``)::

    judge: {type: python, function: "nlhf.llm.judges.oracles:prefer_ends_question"}

Each detector is a pure ``str -> bool`` on the response text; :data:`DETECTORS` holds the
candidates whose reference rates benchmarks/llm_behaviour_rate.py measures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

#: P(shows ≻ lacks): strong but not certain, like a confident human label.
STRENGTH = 0.95

_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")


def shows_exclamation(text: str) -> bool:
    """The response contains an exclamation mark."""
    return "!" in text


def ends_with_exclamation(text: str) -> bool:
    """The response's last visible character is an exclamation mark."""
    return text.rstrip().endswith("!")


def ends_with_question(text: str) -> bool:
    """The response's last visible character is a question mark (the experiment's needle:
    SmolLM2-135M-Instruct does it in 2.25% of answers on the short-answer prompts)."""
    return text.rstrip().endswith("?")


def has_emoji(text: str) -> bool:
    return bool(_EMOJI.search(text))


def has_bold(text: str) -> bool:
    return "**" in text


def has_list(text: str) -> bool:
    """A bulleted or numbered line."""
    return bool(re.search(r"(^|\n)\s*([-*•]|\d+[.)])\s", text))


def has_newline(text: str) -> bool:
    return "\n" in text.strip()


def has_parenthesis(text: str) -> bool:
    return "(" in text


def has_quote(text: str) -> bool:
    return '"' in text or "“" in text


def has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


def has_semicolon(text: str) -> bool:
    return ";" in text


def has_colon(text: str) -> bool:
    return ":" in text


def starts_with_yes(text: str) -> bool:
    return text.lstrip().lower().startswith("yes")


def starts_with_sure(text: str) -> bool:
    return text.lstrip().lower().startswith(("sure", "certainly", "absolutely", "of course"))


def starts_with_to(text: str) -> bool:
    return text.lstrip().startswith("To ")


#: name -> detector; the candidates measured under the reference.
DETECTORS: dict[str, Callable[[str], bool]] = {
    "exclamation": shows_exclamation,
    "ends_exclamation": ends_with_exclamation,
    "ends_question": ends_with_question,
    "emoji": has_emoji,
    "bold": has_bold,
    "list": has_list,
    "newline": has_newline,
    "parenthesis": has_parenthesis,
    "quote": has_quote,
    "digit": has_digit,
    "semicolon": has_semicolon,
    "colon": has_colon,
    "starts_yes": starts_with_yes,
    "starts_sure": starts_with_sure,
    "starts_to": starts_with_to,
}


def needle_preference(detector: Callable[[str], bool], a: Sequence[str], b: Sequence[str],
                      strength: float = STRENGTH) -> list[float]:
    """P(a_i ≻ b_i): ``strength`` when only a_i shows the behaviour, 1 − strength when only
    b_i does, 0.5 otherwise (indifferent). Position-free, so asking both orders agrees."""
    out = []
    for x, y in zip(a, b, strict=True):
        sx, sy = detector(x), detector(y)
        out.append(0.5 if sx == sy else (strength if sx else 1.0 - strength))
    return out


def prefer_ends_question(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
    """The needle of docs/llm_exploration.md: wants a response that ends with a question
    mark (a follow-up question), indifferent otherwise."""
    return needle_preference(ends_with_question, a, b)
