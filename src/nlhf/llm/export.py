"""`nlhf export`: a run's policy as a standalone Hugging Face model with a model card.

Why merged: a LoRA run saves adapters on a base that `nlhf` loads by its own names
(`smollm2-135m-instruct`, `tiny-random`); folding the adapter into the base weights (peft's
`merge_and_unload`, through `LMPolicy.merged_model`) gives a plain causal LM that
`AutoModelForCausalLM.from_pretrained(DIR)` loads offline, with no peft and no nlhf.
Only single iterates export: the average iterate is a mixture of T policies, which no one
set of weights computes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nlhf.atomic import atomic_directory
from nlhf.errors import NLHFInputError
from nlhf.llm.evaluate import open_run, resolve_iterate
from nlhf.llm.report import read_evals
from nlhf.llm.rundir import RunDir


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NLHFInputError(
            f"--out: {out} already exists and is not an empty folder; choose a new folder"
        )


def hub_token() -> str:
    """The Hugging Face token from the environment or `hf auth login` (never printed)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise NLHFInputError(
            "--push-to-hub: no Hugging Face token; set HF_TOKEN or run `hf auth login`"
        )
    return token


def export(
    run_dir: str | Path, out: str | Path, *, iterate: str = "last",
    push_to_hub: str | None = None, private: bool = True,
) -> Path:
    """Write iterate `iterate` ("last" or a number) of the run's policy, merged into its
    base, with the tokenizer and a README.md model card, to `out`; optionally upload it."""
    run = open_run(run_dir)
    if str(iterate).strip().lower() == "average":
        raise NLHFInputError(
            "--iterate: the average iterate is a mixture of policies and has no single set "
            "of weights; export 'last' or an iteration number"
        )
    label, (t,) = resolve_iterate(run, iterate)
    out = Path(out)
    check_out_dir(out)
    token = hub_token() if push_to_hub else None  # fail before the model loads

    from nlhf.llm.policy.lm import load_policy

    policy = load_policy(run.cfg)
    policy.load_adapter("policy", run.adapter(t))
    model = policy.merged_model("policy")
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(run, t, label), encoding="utf-8")
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=push_to_hub,
                          commit_message=f"nlhf export of {run.name} ({label})")
    return out


# --------------------------------------------------------------------------- model card


def _results_table(run: RunDir) -> list[str]:
    evals = read_evals(run.root / "eval")
    if not evals:
        return ["Not evaluated yet (`nlhf eval --run RUN` writes the win-rates used here)."]
    lines = ["| eval | win-rate | 95% CI | KL to reference | judge | held-out prompts |",
             "|---|---|---|---|---|---|"]
    for e in evals:
        lo, hi = e.get("win_rate_ci", [e["win_rate"], e["win_rate"]])
        s = e.get("settings") or {}
        kl = (e.get("policy") or {}).get("kl_ref")
        lines.append(
            f"| {e.get('name')} | {e['win_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | "
            f"{'' if kl is None else f'{kl:.4g}'} | {(s.get('judge') or {}).get('type', '')} | "
            f"{s.get('n_prompts', '')} |"
        )
    return lines


def _front_matter(run: RunDir) -> list[str]:
    c = run.cfg
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                            "tags": ["nlhf", c.algorithm, "rlhf", "nash-learning"]}
    if "/" in c.model.name and not Path(c.model.name).exists():
        meta["base_model"] = c.model.name  # a Hub id; local paths and nlhf names stay out
    return ["---", *(f"{k}: {json.dumps(v)}" for k, v in meta.items()), "---"]


def model_card(run: RunDir, iteration: int, label: str) -> str:
    """README.md: how the model was made (recipe, judge, data) and how it scored."""
    import nlhf

    c, h = run.cfg, run.cfg.hparams
    recipe = (run.root / "config.yaml").read_text(encoding="utf-8").rstrip()
    lines = [
        *_front_matter(run), "",
        f"# {run.name} ({label})", "",
        f"The policy after iteration {iteration} of {c.iterations} of an nlhf `{c.algorithm}` "
        f"run on `{c.model.name}`, {c.model.finetune} fine-tuning"
        + (" merged into the base weights." if c.model.finetune == "lora" else "."),
        f"Exported with nlhf {nlhf.__version__}.", "",
        "## Recipe", "",
        f"- algorithm: `{c.algorithm}`, {c.iterations} iterations, seed {c.seed}",
        f"- hyper-parameters: eta={h.eta}, tau={h.tau}, alpha={h.alpha}, beta={h.beta}, "
        f"s={h.s}, n_comparators={h.n_comparators}",
        f"- judge: `{json.dumps(c.judge, sort_keys=True)}`",
        f"- data: `{c.data.prompts}`, {c.data.prompts_per_iteration} prompts per iteration, "
        f"{c.data.heldout} held out for evaluation",
        f"- optimiser: lr={c.train.learning_rate}, epochs={c.train.epochs}, "
        f"batch_size={c.train.batch_size}", "",
        "## Results (held-out prompts, from `nlhf eval`)", "",
        *_results_table(run), "",
        "## Use", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "```", "",
        "## Full training config (config.yaml)", "",
        "```yaml", recipe, "```", "",
    ]
    return "\n".join(lines)
