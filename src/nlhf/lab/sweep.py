"""The tau-sweep study (issue 10): needle families × tau × seeds, fitted growth in 1/tau.

One run per (algorithm, K) advances every gap c, every tau and every seed side by side (rows =
games × seeds, each row at its own tau and eta), so the per-round Python overhead is paid
once per run, not once per cell; runs go to a process pool as in :mod:`nlhf.lab.simulate`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nlhf.errors import NLHFInputError
from nlhf.lab.algorithms import ALGORITHMS, LabSettings
from nlhf.lab.games import needle, regret_curve
from nlhf.lab.pool import default_workers, run_jobs
from nlhf.lab.simulate import RowGaps, play
from nlhf.lab.tau_fits import fit_growth, fit_log_t, local_slopes

# the lab algorithms that take a tau per row (games side by side)
SWEEP_ALGORITHMS = ("inpo", "enpo", "denpo", "denpo-explore", "oracle")


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep covers; the defaults are issue 10's grid."""

    K: tuple[int, ...] = (8, 16, 32)
    c: tuple[float, ...] = (0.1, 0.2, 0.3)
    tau: tuple[float, ...] = (0.2, 0.1, 0.05, 0.035, 0.02, 0.01)
    T: int = 2000
    seeds: int = 5
    algorithms: tuple[str, ...] = ("inpo", "enpo", "oracle")
    seed: int = 0
    settings: dict = field(default_factory=dict)  # LabSettings overrides (eta, pairs, ...)

    @classmethod
    def from_mapping(cls, data: dict) -> SweepConfig:
        """From a config's ``sweep`` mapping; lists become tuples, unknown keys are errors."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise NLHFInputError(f"sweep: unknown keys {sorted(unknown)}; known {sorted(known)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed).checked()

    def checked(self) -> SweepConfig:
        bad = [a for a in self.algorithms if a not in SWEEP_ALGORITHMS]
        if bad:
            raise NLHFInputError(f"sweep: algorithms {bad} not sweepable; use {SWEEP_ALGORITHMS}")
        if len(set(self.tau)) < 2 or min(self.tau) <= 0:
            raise NLHFInputError("sweep: need ≥ 2 distinct tau > 0")
        if self.T < 4 or self.seeds < 1 or min(self.K) < 2 or min(self.c) <= 0:
            raise NLHFInputError("sweep: need T ≥ 4, seeds ≥ 1, K ≥ 2, c > 0")
        LabSettings(tau=self.tau[0], **self.settings)  # unknown setting → TypeError early
        return self


def checkpoints(T: int, n: int = 40) -> np.ndarray:
    """Log-spaced rounds (1-based) at which regret curves are kept: enough for log-T fits."""
    return np.unique(np.geomspace(1, T, n).round().astype(int))


def run_cell(
    algorithm: str, K: int, config: SweepConfig, progress_queue=None
) -> list[dict]:
    """Every (c, tau, seed) of one algorithm on needles with K responses, side by side."""
    import torch

    torch.set_num_threads(1)
    games = [needle(K, c, tau) for c in config.c for tau in config.tau]
    settings = LabSettings(tau=config.tau[0], **config.settings)
    algo = ALGORITHMS[algorithm](games, settings, config.seeds, seed=config.seed)
    n = config.seeds
    gaps, seconds = play(algo, RowGaps(games, n), config.T, progress_queue)
    curves = regret_curve(gaps)
    keep = checkpoints(config.T) - 1
    rows = []
    for b, curve in enumerate(curves):
        g = games[b // n]
        rows.append({
            "algorithm": algorithm, "K": K, "c": config.c[b // n // len(config.tau)],
            "tau": g.tau, "eta": float(settings.eta_for(g.tau)), "seed": config.seed + b % n,
            "T": config.T, "final_regret": float(curve[-1]), "log_t_fit": fit_log_t(curve),
            "checkpoints": (keep + 1).tolist(), "regret_at": curve[keep].tolist(),
            "cell_seconds": seconds,
        })
    return rows


def run_sweep(config: SweepConfig, workers: int | None = None, progress: bool = True) -> dict:
    """Run every (algorithm, K) cell, longest first, in a process pool; gather the rows."""
    cells = sorted(
        ((a, K) for a in config.algorithms for K in config.K), key=lambda ak: -ak[1]
    )
    started = time.perf_counter()
    results = run_jobs(
        [(run_cell, (a, K, config)) for a, K in cells],
        total_rounds=config.T * len(cells),
        label="tau sweep (rounds)",
        workers=workers,
        progress=progress,
    )
    rows = [row for result in results for row in result]
    return {
        "sweep": asdict(config),
        "runs": rows,
        "wall_seconds": time.perf_counter() - started,
        "workers": workers or default_workers(len(cells)),
    }


def growth_rows(doc: dict) -> list[dict]:
    """Per algorithm and family (K, c), and pooled per algorithm: the two fits of regret(tau)."""
    runs = doc["runs"]
    out = []
    keys = sorted({(r["algorithm"], r["K"], r["c"]) for r in runs})
    for alg in sorted({k[0] for k in keys}):
        fams = [k for k in keys if k[0] == alg]
        for _, K, c in fams:
            sel = [r for r in runs if r["algorithm"] == alg and r["K"] == K and r["c"] == c]
            out.append(_growth(alg, f"K={K}, c={c:g}", sel))
    return out


def _growth(alg: str, family: str, sel: list[dict]) -> dict:
    taus = sorted({r["tau"] for r in sel}, reverse=True)
    regret = np.array([[r["final_regret"] for r in sel if r["tau"] == t] for t in taus])
    power = fit_growth(taus, regret, "power")
    expo = fit_growth(taus, regret, "exponential")
    logt = [r["log_t_fit"] for r in sel]
    return {
        "algorithm": alg, "family": family, "taus": taus,
        "mean_regret": regret.mean(axis=1).tolist(),
        "power": asdict(power), "exponential": asdict(expo),
        "local_slopes": local_slopes(taus, regret).tolist(),
        "log_t_slope_mean": float(np.mean([s for s, _ in logt])),
        "log_t_r2_min": float(np.min([r2 for _, r2 in logt])),
    }


def growth_markdown(doc: dict) -> str:
    sw = doc["sweep"]
    lines = [
        f"Sweep: needle K ∈ {list(sw['K'])}, c ∈ {list(sw['c'])}, tau ∈ {list(sw['tau'])}, "
        f"T = {sw['T']}, {sw['seeds']} seeds; wall {doc['wall_seconds']:.0f} s "
        f"({doc['workers']} workers).",
        "",
        "| algorithm | family | mean final regret at each tau (large → small) "
        "| power slope [95% CI] (R²) | exp rate [95% CI] (R²) | local slopes | "
        "Reg vs log T: slope (min R²) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in growth_rows(doc):
        p, e = g["power"], g["exponential"]
        lines.append(
            f"| {g['algorithm']} | {g['family']} | "
            + " / ".join(f"{m:.3g}" for m in g["mean_regret"])
            + f" | {p['slope']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] ({p['r2']:.2f})"
            f" | {e['slope']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}] ({e['r2']:.2f})"
            f" | {' '.join(f'{s:.1f}' for s in g['local_slopes'])}"
            f" | {g['log_t_slope_mean']:.2f} ({g['log_t_r2_min']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def write_sweep_plots(doc: dict, out: Path) -> list[Path]:
    """Final regret vs 1/tau (log-log), one panel per K, one line per (algorithm, c)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    Ks = sorted({r["K"] for r in runs})
    fig, axes = plt.subplots(1, len(Ks), figsize=(5 * len(Ks), 4), squeeze=False)
    for ax, K in zip(axes[0], Ks, strict=True):
        for alg in sorted({r["algorithm"] for r in runs}):
            for c in sorted({r["c"] for r in runs}):
                sel = [r for r in runs if r["K"] == K and r["algorithm"] == alg and r["c"] == c]
                taus = sorted({r["tau"] for r in sel})
                means = [np.mean([r["final_regret"] for r in sel if r["tau"] == t]) for t in taus]
                ax.plot(1 / np.array(taus), means, marker="o", label=f"{alg} c={c:g}")
        ax.set(xscale="log", yscale="log", xlabel="1/tau", ylabel="final regret",
               title=f"needle K={K}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "sweep_regret_vs_inv_tau.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def sweep_config(value: str) -> SweepConfig:
    """``--sweep tau`` (issue 10's grid) or a YAML/JSON file whose ``sweep`` key is the grid."""
    if value == "tau":
        return SweepConfig().checked()
    path = Path(value)
    if not path.is_file():
        raise NLHFInputError(f"--sweep: {value!r} is neither 'tau' nor a file")
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("sweep"), dict):
        raise NLHFInputError(f"--sweep: {value} has no 'sweep' mapping")
    return SweepConfig.from_mapping(data["sweep"])


def with_settings(config: SweepConfig, **settings) -> SweepConfig:
    return replace(config, settings={**config.settings, **settings})
