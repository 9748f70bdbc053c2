"""`nlhf simulate` and `nlhf nash` end to end, including the paper-claims preset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nlhf.lab.claims import check_claims
from nlhf.lab.games import fixed_point_residual, gbpm


def nlhf(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "nlhf.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_nash_on_a_game_file(tmp_path):
    game = gbpm(6, contexts=2, tau=0.02, seed=5)
    path = tmp_path / "game.json"
    path.write_text(json.dumps({"P": game.P.tolist(), "ref": game.ref.tolist(), "tau": 0.02}))
    out = nlhf("nash", "--game", str(path))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    pi = np.array(doc["pi"])
    assert fixed_point_residual(game.P, game.ref, 0.02, pi).max() <= 1e-9
    assert doc["residual"] <= 1e-9 and abs(doc["gap"]) < 1e-9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nash", "--game", "missing.json", "--tau", "0.1"], "not found"),
        (["nash", "--game", "BAD", "--tau", "0.1"], "P + Pᵀ = 1"),
        (["nash", "--game", "GOOD", "--tau", "-1"], "--tau must be > 0"),
        (["simulate", "--algorithms", "inpo,bogus", "--T", "5"], "unknown algorithm 'bogus'"),
        (["simulate", "--instance", "donut", "--T", "5"], "unknown instance 'donut'"),
        (["simulate", "--tau", "0", "--T", "5"], "--tau must be > 0"),
        (["simulate", "--T", "0"], "--T must be ≥ 1"),
        (["simulate", "--eta", "0.05", "--tau", "0.1", "--T", "5"], "must be > every --tau"),
        (["simulate", "--preset", "nope"], "unknown preset"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"P": [[0.5, 0.9], [0.9, 0.5]], "ref": [0.5, 0.5]}))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"P": [[0.5, 0.9], [0.1, 0.5]], "ref": [0.5, 0.5]}))
    args = [str(bad) if a == "BAD" else str(good) if a == "GOOD" else a for a in args]
    out_dir = tmp_path / "out"
    if args[0] == "simulate":
        args += ["--out", str(out_dir), "--no-progress"]
    out = nlhf(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert not out_dir.exists()


def test_simulate_writes_results_summary_and_plots(tmp_path):
    out = nlhf(
        "simulate",
        "--instance",
        "gbpm,cyclic",
        "--tau",
        "0.1",
        "--tau",
        "0.05",
        "--algorithms",
        "inpo,enpo,sppo",
        "--T",
        "30",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    assert {"runs", "instance", "command"} <= set(doc)
    assert len(doc["runs"]) == 2 * 2 * 3 * 2
    run = doc["runs"][0]
    assert {"instance", "algorithm", "tau", "seed", "T", "final_regret", "regret_curve"} <= set(run)
    assert len(run["regret_curve"]) == 30
    assert run["final_regret"] == pytest.approx(run["regret_curve"][-1])
    assert np.all(np.diff(run["regret_curve"]) >= 0)
    assert "| gbpm | enpo |" in (tmp_path / "summary.md").read_text()
    for png in ("regret_vs_T.png", "final_regret_vs_inv_tau.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_claims_preset_meets_every_claim(tmp_path):
    out = nlhf("simulate", "--preset", "paper-claims", "--out", str(tmp_path), "--no-progress")
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    claims = check_claims(doc)
    graded = [c for c in claims if c.passed is not None]
    assert len(graded) == 9
    failed = [f"{c.text}: {c.measured}" for c in graded if not c.passed]
    assert not failed, failed
    assert "PASS" in (tmp_path / "summary.md").read_text()


GOOD_P = [[0.5, 0.9], [0.1, 0.5]]


BAD_GAMES = {
    "tau a string": ({"P": GOOD_P, "ref": [0.5, 0.5], "tau": "0.1"}, "field 'tau' must be a"),
    "tau a list": ({"P": GOOD_P, "ref": [0.5, 0.5], "tau": [0.1, 0.2]}, "field 'tau' must be a"),
    "tau a bool": ({"P": GOOD_P, "ref": [0.5, 0.5], "tau": True}, "field 'tau' must be a"),
    "P a scalar": ({"P": 0.5, "ref": [0.5, 0.5], "tau": 0.1}, "field 'P' must be a (K, K)"),
    "P empty": ({"P": [], "ref": [0.5, 0.5], "tau": 0.1}, "field 'P' must be a (K, K)"),
    "P empty rows": ({"P": [[]], "ref": [0.5, 0.5], "tau": 0.1}, "field 'P' must be a (K, K)"),
}
# simulate takes tau from --tau, so only nash reads a file's tau.
GAME_CASES = [("nash", name) for name in BAD_GAMES] + [
    ("simulate", name) for name in BAD_GAMES if name.startswith("P")]


@pytest.mark.parametrize(("command", "name"), GAME_CASES)
def test_malformed_game_file_is_one_line(tmp_path, command, name):
    fields, message = BAD_GAMES[name]
    path = tmp_path / "game.json"
    path.write_text(json.dumps(fields))
    out_dir = tmp_path / "out"
    args = ["nash", "--game", str(path)] if command == "nash" else [
        "simulate", "--game", str(path), "--T", "2", "--seeds", "1", "--algorithms", "inpo",
        "--out", str(out_dir), "--no-progress"]
    out = nlhf(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
    assert message in out.stderr and str(path) in out.stderr
    assert not out_dir.exists()


def test_simulate_out_must_be_a_writable_folder(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    out = nlhf("simulate", "--T", "2", "--seeds", "1", "--algorithms", "inpo",
               "--out", str(taken), "--no-progress")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--out" in out.stderr and "is a file" in out.stderr
    assert taken.read_text() == "mine"
    out = nlhf("simulate", "--T", "2", "--seeds", "1", "--algorithms", "inpo",
               "--out", str(taken / "sub"), "--no-progress")
    assert out.returncode == 2 and "is a file, not a folder" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0


def test_tau_sweep_writes_fits_table_and_plot(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "sweep:\n  K: [4]\n  c: [0.1, 0.2]\n  tau: [0.2, 0.1, 0.05]\n  T: 20\n  seeds: 2\n"
        "  algorithms: [inpo, enpo, oracle]\n"
    )
    out = nlhf("simulate", "--sweep", str(config), "--out", str(tmp_path / "o"), "--no-progress")
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert len(doc["runs"]) == 3 * 2 * 3 * 2
    assert {g["algorithm"] for g in doc["growth"]} == {"inpo", "enpo", "oracle"}
    assert all(np.isfinite(g["power"]["slope"]) for g in doc["growth"])
    assert (tmp_path / "o" / "sweep_regret_vs_inv_tau.png").exists()
    assert "power slope" in (tmp_path / "o" / "sweep.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep:\n  algorithms: [sppo]\n")
    out = nlhf("simulate", "--sweep", str(bad), "--out", str(tmp_path / "b"), "--no-progress")
    assert out.returncode != 0 and "not sweepable" in out.stderr
