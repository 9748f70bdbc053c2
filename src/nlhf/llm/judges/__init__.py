"""Preference oracles P(a ≻ b | prompt): one interface, both orders averaged, cached.

Heavy judges import torch / transformers only when first used.
"""

from nlhf.llm.judges.base import Judge
from nlhf.llm.judges.cached import CachedJudge, JudgeFailureError, judge_key
from nlhf.llm.judges.criteria import CriteriaJudge
from nlhf.llm.judges.diagnostics import JudgeDiagnostics
from nlhf.llm.judges.llm_judge import LLMJudge
from nlhf.llm.judges.openai_http import JudgeUnavailableError, OpenAIJudge
from nlhf.llm.judges.python_fn import FunctionJudge
from nlhf.llm.judges.registry import JUDGES, make_judge
from nlhf.llm.judges.reward_model import RewardModelJudge
from nlhf.llm.judges.tabular import TabularJudge

__all__ = [
    "JUDGES",
    "CachedJudge",
    "CriteriaJudge",
    "FunctionJudge",
    "Judge",
    "JudgeDiagnostics",
    "JudgeFailureError",
    "JudgeUnavailableError",
    "LLMJudge",
    "OpenAIJudge",
    "RewardModelJudge",
    "TabularJudge",
    "judge_key",
    "make_judge",
]
