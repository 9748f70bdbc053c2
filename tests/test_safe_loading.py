"""Loading is safe by default: no remote code, no pickled weights, torch.load weights-only.

The source checks read the AST of every module under src/nlhf, so a new call site that
unpickles or trusts remote code fails here, not in a security review.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from nlhf.errors import NLHFInputError
from nlhf.llm.config import TrainConfig
from nlhf.llm.judges import LLMJudge, RewardModelJudge
from nlhf.llm.policy import load_model_and_tokenizer
from nlhf.llm.policy.loading import local_model_path
from nlhf.llm.preflight import preflight

SRC = Path(__file__).resolve().parents[1] / "src" / "nlhf"


def _calls() -> list[tuple[str, ast.Call]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        out += [(f"{path.relative_to(SRC)}:{node.lineno}", node)
                for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return out


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_no_unpickling_call_in_the_source() -> None:
    bad = []
    for where, call in _calls():
        func = ast.unparse(call.func)
        if func.endswith("torch.load") and not _is_true(_kw(call, "weights_only")):
            bad.append(f"{where}: {func} without weights_only=True")
        if func in ("pickle.load", "pickle.loads", "joblib.load", "dill.load"):
            bad.append(f"{where}: {func}")
        if _is_true(_kw(call, "allow_pickle")):
            bad.append(f"{where}: allow_pickle=True")
    assert not bad, bad


def test_model_loads_are_safetensors_or_gguf_and_trust_no_remote_code() -> None:
    bad = []
    for where, call in _calls():
        func = ast.unparse(call.func)
        if _is_true(_kw(call, "trust_remote_code")):
            bad.append(f"{where}: trust_remote_code=True hard-coded")
        safe = _is_true(_kw(call, "use_safetensors")) or _kw(call, "gguf_file") is not None
        if func.endswith(".from_pretrained") and "Tokenizer" not in func and not safe:
            bad.append(f"{where}: {func} without use_safetensors=True or gguf_file")
    assert not bad, bad


def test_trust_remote_code_defaults_to_false() -> None:
    assert TrainConfig().model.trust_remote_code is False
    for fn in (load_model_and_tokenizer, RewardModelJudge.__init__, LLMJudge.__init__):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn


@pytest.fixture
def pickle_only(tmp_path: Path) -> Path:
    """A model folder whose only weights are a real pickled checkpoint."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    return folder


def test_pickle_only_folder_is_refused_before_unpickling(
    pickle_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(NLHFInputError, match=r"model: .* has no \.safetensors weights \(found "
                                             r"pytorch_model\.bin\); .*never pickled") as info:
        load_model_and_tokenizer(str(pickle_only))
    assert "\n" not in str(info.value)
    for judge in (RewardModelJudge(str(pickle_only)), LLMJudge(str(pickle_only))):
        with pytest.raises(NLHFInputError, match=r"judge\.model: .*no \.safetensors"):
            judge._load()
    cfg = TrainConfig.model_validate({"run_dir": str(tmp_path / "run"),
                                      "model": {"name": str(pickle_only)}})
    with pytest.raises(NLHFInputError, match=r"model\.name: .*no \.safetensors"):
        preflight(cfg)
    assert not (tmp_path / "run").exists()


def test_local_model_path_rules(pickle_only: Path, tmp_path: Path) -> None:
    assert local_model_path("org/model-id") is None  # a Hub id: nothing local to check
    with pytest.raises(NLHFInputError, match=r"judge\.model: path \./nope does not exist"):
        local_model_path("./nope", "judge.model")
    (pickle_only / "model.safetensors").write_bytes(b"")
    with pytest.raises(NLHFInputError, match=r"model: .*model\.safetensors is not a readable"):
        local_model_path(str(pickle_only))  # junk weights: one line, not a loader traceback
    from safetensors.torch import save_file

    save_file({}, str(pickle_only / "model.safetensors"))
    assert local_model_path(str(pickle_only)) == pickle_only
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(NLHFInputError, match=r"neither a model folder nor a \.gguf file"):
        local_model_path(str(tmp_path / "weights.txt"))
