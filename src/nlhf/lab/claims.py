"""The SPEC §3 claims, checked against a results document (mean regret over seeds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Claim:
    text: str
    measured: str
    passed: bool | None  # None: reported, not a pass/fail claim


def mean_curve(runs: list[dict], instance: str, algorithm: str, tau: float) -> np.ndarray | None:
    curves = [
        r["regret_curve"]
        for r in runs
        if r["instance"] == instance and r["algorithm"] == algorithm and abs(r["tau"] - tau) < 1e-12
    ]
    return np.mean(curves, axis=0) if curves else None


def loglog_slope(curve: np.ndarray, factor: int = 10) -> float:
    """Slope of log Reg(t) against log t between T/factor and T."""
    T = len(curve)
    lo = max(T // factor, 1)
    return float(np.log(curve[-1] / curve[lo - 1]) / np.log(T / lo))


def check_claims(results: dict, small_tau: float = 0.025, large_tau: float = 0.1) -> list[Claim]:
    runs = results["runs"]
    claims: list[Claim] = []

    def final(alg: str, tau: float, instance: str = "needle") -> float | None:
        curve = mean_curve(runs, instance, alg, tau)
        return None if curve is None else float(curve[-1])

    inpo_s, inpo_l = final("inpo", small_tau), final("inpo", large_tau)
    if inpo_s is not None and inpo_l is not None:
        ratio = inpo_s / inpo_l
        claims.append(
            Claim(
                f"INPO on needle: Reg(tau={small_tau}) ≥ 10 × Reg(tau={large_tau})",
                f"{inpo_s:.2f} vs {inpo_l:.2f} (×{ratio:.1f})",
                ratio >= 10,
            )
        )
    enpo_s, enpo_l = final("enpo", small_tau), final("enpo", large_tau)
    if enpo_s is not None and enpo_l is not None:
        ratio = enpo_s / enpo_l
        claims.append(
            Claim(
                f"ENPO on needle: Reg(tau={small_tau}) ≤ 3 × Reg(tau={large_tau})",
                f"{enpo_s:.2f} vs {enpo_l:.2f} (×{ratio:.2f})",
                ratio <= 3,
            )
        )
    if enpo_s is not None and inpo_s is not None:
        claims.append(
            Claim(
                f"ENPO on needle: Reg(tau={small_tau}) ≤ 0.1 × INPO's",
                f"{enpo_s:.2f} vs {inpo_s:.2f} (×{enpo_s / inpo_s:.3f})",
                enpo_s <= 0.1 * inpo_s,
            )
        )
    for tau in (large_tau, small_tau):
        curve = mean_curve(runs, "needle", "oracle", tau)
        if curve is not None:
            slope = loglog_slope(curve)
            claims.append(
                Claim(
                    f"Minimax oracle on needle (tau={tau}): log-log slope T/10→T ≤ 0.35",
                    f"{slope:.3f}",
                    slope <= 0.35,
                )
            )
    for instance in ("gbpm", "cyclic"):
        for tau in (large_tau, small_tau):
            curve = mean_curve(runs, instance, "enpo", tau)
            if curve is not None:
                slope = loglog_slope(curve)
                claims.append(
                    Claim(
                        f"ENPO on {instance} (tau={tau}): log-log slope T/10→T ≤ 0.6",
                        f"{slope:.3f}",
                        slope <= 0.6,
                    )
                )
    for tau in (large_tau, small_tau):
        den, inp = final("denpo", tau), final("inpo", tau)
        if den is not None and inp is not None:
            claims.append(
                Claim(
                    f"DENPO's simplified adversary on needle (tau={tau}), reported",
                    f"Reg {den:.2f} vs INPO {inp:.2f}",
                    None,
                )
            )
    return claims
