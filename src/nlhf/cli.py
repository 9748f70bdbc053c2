"""The ``nlhf`` command: simulate, nash, train, compare, eval, report, export.

Bad input raises :class:`NLHFInputError`; ``main`` prints its one-line message and exits 2.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from nlhf.errors import NLHFInputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Nash learning from human feedback with explicit exploration (ENPO).",
)


def _split_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise NLHFInputError(f"{what}: give at least one value")
    return items


def _file_or_text(value: str, what: str) -> str:
    """The file ``value`` names, or ``value`` itself (inline YAML may be too long a name)."""
    try:
        is_file = Path(value).is_file()
    except (OSError, ValueError):  # name too long, NUL byte: not a file name
        return value
    if not is_file:
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NLHFInputError(f"{what}: cannot read {value} ({exc.__class__.__name__})") from None


def _writable_output(out: Path) -> None:
    """``--out`` must be a folder we can write, checked before any work."""
    from nlhf.llm.rundir import require_writable

    if out.exists() and not out.is_dir():
        raise NLHFInputError(f"--out: {out} is a file, not a folder; choose another --out")
    require_writable(out, "--out")


def _run_sweep(value: str, out: Path, workers: int | None, progress: bool, command: str) -> None:
    """`nlhf simulate --sweep`: the tau-sweep study, its fits, table and plot."""
    from nlhf.atomic import write_json_atomic
    from nlhf.lab.sweep import (
        growth_markdown,
        growth_rows,
        run_sweep,
        sweep_config,
        write_sweep_plots,
    )

    config = sweep_config(value)
    _writable_output(out)
    doc = run_sweep(config, workers=workers, progress=progress)
    doc["command"] = command
    doc["growth"] = growth_rows(doc)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sweep.json", doc, indent=1)
    table = f"# tau sweep\n\nCommand: `{command}`\n\n" + growth_markdown(doc)
    (out / "sweep.md").write_text(table)
    write_sweep_plots(doc, out)
    typer.echo(table)
    typer.echo(f"wrote {out / 'sweep.json'}, sweep.md and plot in {doc['wall_seconds']:.1f} s")


@app.command()
def simulate(
    instance: Annotated[
        str, typer.Option(help="needle, cyclic, gbpm or bt (comma list)")
    ] = "needle",
    game: Annotated[Path | None, typer.Option(help="game file (JSON with P, ref; or .npz)")] = None,
    K: Annotated[int, typer.Option("--K", help="responses per context")] = 8,
    c: Annotated[float, typer.Option("--c", help="needle: reference mass exp(-c/tau)")] = 0.25,
    contexts: Annotated[int, typer.Option(help="contexts of cyclic/gbpm/bt")] = 1,
    tau: Annotated[list[float] | None, typer.Option(help="KL parameter (repeatable)")] = None,
    eta: Annotated[float | None, typer.Option(help="inverse step size [4·tau + 0.25]")] = None,
    eta_schedule: Annotated[str, typer.Option(help="harmonic or constant")] = "harmonic",
    algorithms: Annotated[
        str, typer.Option(help="comma list of algorithms")
    ] = "inpo,enpo,denpo,oracle",
    T: Annotated[int, typer.Option("--T", help="rounds")] = 1000,
    pairs: Annotated[int, typer.Option(help="pairs per round (m)")] = 8,
    comparators: Annotated[int, typer.Option(help="comparators per response (n_z)")] = 4,
    seeds: Annotated[int, typer.Option(help="independent seeds, run vectorised")] = 3,
    seed: Annotated[int, typer.Option(help="base random seed")] = 0,
    game_seed: Annotated[int, typer.Option(help="seed of the random game families")] = 0,
    workers: Annotated[int | None, typer.Option(help="parallel processes [cores]")] = None,
    preset: Annotated[str | None, typer.Option(help="paper-claims")] = None,
    sweep: Annotated[
        str | None,
        typer.Option(help="tau sweep: 'tau' (issue 10's needle grid) or a YAML with a 'sweep' key"),
    ] = None,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/simulate"),
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Run algorithms on exact games with bandit feedback and measure their regret."""
    from dataclasses import replace

    from nlhf.atomic import write_json_atomic
    from nlhf.lab.algorithms import LabSettings
    from nlhf.lab.claims import check_claims
    from nlhf.lab.report import summary_markdown, write_plots
    from nlhf.lab.simulate import PRESETS, Experiment, build_specs, run_experiment

    command = "nlhf " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if sweep is not None:
        _run_sweep(sweep, out, workers, progress, command)
        return
    if preset is not None:
        if preset not in PRESETS:
            raise NLHFInputError(
                f"--preset: unknown preset {preset!r}; choose {', '.join(PRESETS)}"
            )
        exp = PRESETS[preset](command)
    else:
        if eta_schedule not in ("harmonic", "constant"):
            raise NLHFInputError("--eta-schedule: choose 'harmonic' or 'constant'")
        taus = tau or [0.1]
        settings = replace(
            LabSettings(tau=taus[0]),
            eta=eta,
            pairs=pairs,
            comparators=comparators,
            eta_schedule=eta_schedule,
        )
        if pairs < 1 or comparators < 1:
            raise NLHFInputError("--pairs and --comparators must be ≥ 1")
        if eta is not None and any(eta <= t for t in taus):
            raise NLHFInputError(f"--eta ({eta}) must be > every --tau ({taus})")
        names = [game.stem] if game else _split_list(instance, "--instance")
        specs = build_specs(
            names,
            _split_list(algorithms, "--algorithms"),
            taus,
            T,
            seeds,
            settings,
            K,
            c,
            contexts,
            str(game) if game else None,
            game_seed,
            seed,
        )
        specs[0].game()  # validate the game (file or flags) before starting workers
        exp = Experiment(specs, command)
    _writable_output(out)
    results = run_experiment(exp, workers=workers, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results, indent=1)
    claims = check_claims(results) if preset == "paper-claims" else []
    summary = summary_markdown(results, claims)
    (out / "summary.md").write_text(summary)
    write_plots(results, out)
    typer.echo(summary)
    typer.echo(
        f"wrote {out / 'results.json'}, summary.md and plots in {results['wall_seconds']:.1f} s"
    )


@app.command()
def nash(
    game: Annotated[Path, typer.Option(help="game file (JSON with P, ref; or .npz)")],
    tau: Annotated[float | None, typer.Option(help="KL parameter (else the file's 'tau')")] = None,
) -> None:
    """Solve the KL-regularised game exactly; print pi*, its gap and fixed-point residual."""
    from nlhf.lab.games import fixed_point_residual, gap, load_game, solve_nash

    if tau is not None and tau <= 0:
        raise NLHFInputError(f"--tau must be > 0, got {tau}")
    g = load_game(game, tau=tau)
    pi = solve_nash(g.P, g.ref, g.tau)
    residual = float(fixed_point_residual(g.P, g.ref, g.tau, pi).max())
    typer.echo(
        json.dumps({"pi": pi.tolist(), "gap": gap(g, pi), "residual": residual, "tau": g.tau})
    )


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML config")] = None,
    resume: Annotated[Path | None, typer.Option(help="run directory to continue")] = None,
    dry_run: Annotated[bool, typer.Option(help="validate and print the plan only")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. hparams.eta=0.01")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    gpus: Annotated[int, typer.Option(min=1, help="with --dry-run: data-parallel GPUs the "
                                                  "memory per GPU assumes")] = 1,
) -> None:
    """Train a language model with DENPO (practical ENPO) or a baseline."""
    from nlhf.llm.config import load_config, load_run_config, parse_overrides

    overrides = parse_overrides(set_ or [])
    if resume is not None:
        # The run's own config, or --config, plus --set: a resume accepts only the changes
        # nlhf.llm.resume allows (more iterations, eval, endpoints) and refuses the others.
        cfg_path = resume / "config.yaml"
        if not cfg_path.is_file():
            raise NLHFInputError(f"--resume: {cfg_path} not found; is {resume} a run directory?")
        load = load_config if config is not None else load_run_config
        cfg = load(config or cfg_path, {**overrides, "run_dir": str(resume)})
    elif config is not None:
        cfg = load_config(config, overrides)
    else:
        raise NLHFInputError("train: give --config FILE (or --resume RUN_DIR)")
    if dry_run:
        from nlhf.llm.plan import format_plan, make_plan

        typer.echo(format_plan(make_plan(cfg, gpus=gpus)))
        return
    from nlhf.llm.loop import train as run_training

    run_dir = run_training(cfg, resume=resume is not None, progress=progress)
    if os.environ.get("RANK", "0") == "0":  # one line per launch, not per process
        typer.echo(f"run finished: {run_dir}")


@app.command()
def compare(
    config: Annotated[Path, typer.Option(help="compare file: a recipe plus a compare: section")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. compare.seeds=[0]")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="validate and print every run's budget")] = False,
    report_only: Annotated[bool, typer.Option(
        help="write the tables from the runs already evaluated; train nothing")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train and evaluate several algorithms x seeds on one recipe, then judge them head to
    head; resumes where it stopped. Writes compare.md, compare.json and compare.png."""
    from nlhf.llm.compare import (
        check_existing,
        format_plan,
        load_comparison,
        run_comparison,
        write_outputs,
    )
    from nlhf.llm.config import parse_overrides

    comparison = load_comparison(config, parse_overrides(set_ or []))
    if dry_run:
        check_existing(comparison)
        typer.echo(format_plan(comparison))
        return
    _writable_output(comparison.out)
    if report_only:  # e.g. while another process trains the remaining runs
        check_existing(comparison)
        doc = write_outputs(comparison)
        typer.echo(f"{doc['finished_runs']} of {doc['planned_runs']} runs evaluated")
    else:
        run_comparison(comparison, progress=progress, echo=typer.echo)
    typer.echo(f"wrote {comparison.out / 'compare.md'}")


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Option(help="run directory")],
    against: Annotated[
        str, typer.Option(help="'reference' or another run directory")
    ] = "reference",
    judge: Annotated[str | None, typer.Option(help="judge spec as JSON/YAML, or a file")] = None,
    iterate: Annotated[
        str,
        typer.Option(help="comma list of: last, average, each (every saved iterate), or N"),
    ] = "last,average",
    n_prompts: Annotated[int | None, typer.Option(help="first N held-out prompts")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Win-rate of a run's iterates (last and average by default) against the reference or
    another run, with 95% CIs."""
    import yaml

    from nlhf.llm.evaluate import evaluate_iterates

    spec = None
    if judge is not None:
        text = _file_or_text(judge, "--judge")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise NLHFInputError(
                f"--judge: not valid JSON/YAML ({exc.__class__.__name__})"
            ) from None
        if not isinstance(spec, dict):
            raise NLHFInputError("--judge: expected a mapping such as {type: criteria}")
    evaluate_iterates(
        run, iterate, against=against, judge=spec, n_prompts=n_prompts, progress=progress
    )


@app.command()
def report(run: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Write report.md with plots for a training run."""
    from nlhf.llm.report import report as write_report

    typer.echo(f"wrote {write_report(run)}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory")],
    out: Annotated[Path, typer.Option(help="new folder for the merged model")],
    iterate: Annotated[str, typer.Option(help="last or an iteration number")] = "last",
    push_to_hub: Annotated[
        str | None, typer.Option(help="also upload to this Hub repo id (needs a token)")
    ] = None,
) -> None:
    """Write the run's policy merged into its base, with tokenizer and model card."""
    from nlhf.llm.export import export as export_run

    typer.echo(f"wrote {export_run(run, out, iterate=iterate, push_to_hub=push_to_hub)}")
    if push_to_hub:
        typer.echo(f"uploaded to https://huggingface.co/{push_to_hub}")


def main() -> None:
    try:
        app(standalone_mode=True)
    except NLHFInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
