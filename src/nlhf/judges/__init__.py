"""Preference oracles P(a ≻ b | prompt): one interface, both orders averaged, cached.

Heavy judges import torch / transformers only when first used.
"""

from nlhf.judges.base import Judge
from nlhf.judges.cached import CachedJudge, judge_key
from nlhf.judges.criteria import CriteriaJudge
from nlhf.judges.llm_judge import LLMJudge
from nlhf.judges.openai_http import JudgeUnavailableError, OpenAIJudge
from nlhf.judges.registry import JUDGES, make_judge
from nlhf.judges.reward_model import RewardModelJudge
from nlhf.judges.tabular import TabularJudge

__all__ = [
    "JUDGES",
    "CachedJudge",
    "CriteriaJudge",
    "Judge",
    "JudgeUnavailableError",
    "LLMJudge",
    "OpenAIJudge",
    "RewardModelJudge",
    "TabularJudge",
    "judge_key",
    "make_judge",
]
