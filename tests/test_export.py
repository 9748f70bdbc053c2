"""`nlhf export`: a tiny run merged into its base loads with from_pretrained, same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nlhf.errors import NLHFInputError
from test_evaluate import HELDOUT, make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "enpo-tiny", iterations=2)


def _policy_logits(run_dir: Path, t: int, ids: torch.Tensor) -> torch.Tensor:
    from nlhf.llm.evaluate import open_run
    from nlhf.llm.policy import load_policy

    run = open_run(run_dir)
    policy = load_policy(run.cfg)
    policy.load_adapter("policy", run.adapter(t))
    with torch.no_grad(), policy.using("policy") as model:
        return model(input_ids=ids).logits


@pytest.mark.parametrize("iterate, t", [("last", 2), ("1", 1)])
def test_export_loads_offline_with_the_policy_logits(
    run_dir: Path, tmp_path: Path, iterate: str, t: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nlhf.llm.evaluate import evaluate
    from nlhf.llm.export import export

    if t == 2:
        evaluate(run_dir, n_prompts=2, progress=False)  # results for the model card
    out = export(run_dir, tmp_path / "model", iterate=iterate)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    ids = torch.tensor([tokenizer.encode(HELDOUT[1])])
    with torch.no_grad():
        exported = model(input_ids=ids).logits
    expected = _policy_logits(run_dir, t, ids)
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-4)
    # the adapter matters: the base model alone gives other logits
    from nlhf.llm.evaluate import open_run
    from nlhf.llm.policy import load_policy

    base = load_policy(open_run(run_dir).cfg)
    with torch.no_grad(), base.using(None) as ref:
        assert (ref(input_ids=ids).logits - exported).abs().max() > 1e-3

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: \"transformers\"")
    assert f"# enpo-tiny (iter{t})" in card or f"# enpo-tiny ({iterate})" in card
    assert f"after iteration {t} of 2" in card and "nlhf 0.1.0" in card
    assert '"criteria": ["length", "diversity", "structure"]' in card
    assert "## Full training config (config.yaml)" in card and "run_dir:" in card
    if t == 2:
        res = json.loads((run_dir / "eval" / "last_vs_reference.json").read_text())
        assert f"| last_vs_reference | {res['win_rate']:.3f} |" in card
    else:
        assert "| last_vs_reference |" in card  # evals of the run are all listed


def test_export_bad_input(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nlhf.llm.export import export

    with pytest.raises(NLHFInputError, match="not a directory"):
        export(tmp_path / "missing", tmp_path / "a")
    with pytest.raises(NLHFInputError, match="saved iterations: 1, 2"):
        export(run_dir, tmp_path / "a", iterate="7")
    with pytest.raises(NLHFInputError, match="mixture"):
        export(run_dir, tmp_path / "a", iterate="average")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    with pytest.raises(NLHFInputError, match="already exists"):
        export(run_dir, full)
    assert (full / "x").read_text() == "keep me"
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    with pytest.raises(NLHFInputError, match="no Hugging Face token"):
        export(run_dir, tmp_path / "b", push_to_hub="me/model")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_cli_one_line_error(run_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "nlhf.cli", "export", str(run_dir), "--out", str(full)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: --out:")
    result = CliRunner().invoke(__import__("nlhf.cli").cli.app, ["export", "--help"])
    assert result.exit_code == 0 and "--push-to-hub" in result.output


def test_export_full_finetune(tmp_path: Path) -> None:
    """Full fine-tuning has no adapter to merge: the saved policy weights go out as they are."""
    from transformers import AutoModelForCausalLM

    from nlhf.llm.export import export

    run = make_run(tmp_path / "full-run", iterations=1, model={"finetune": "full"})
    out = export(run, tmp_path / "model")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    torch.testing.assert_close(exported, _policy_logits(run, 1, ids), rtol=1e-4, atol=1e-4)
    assert "full fine-tuning." in (out / "README.md").read_text()
