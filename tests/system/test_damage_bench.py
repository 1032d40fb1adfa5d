"""The damage bench's fast subset (bench/damage.py runs the full one): the product's analysis
and spot policy on a simulated beamline, on the experiment clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "damage.json"
    bench = [sys.executable, str(ROOT / "bench" / "damage.py"), "--workers", "1"]
    subprocess.run(
        [*bench, *args, "--json", str(out)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    return json.loads(out.read_text())


def test_relaxation_without_damage_is_never_a_verdict_of_damage(tmp_path):
    """LiFePO4 relaxing after every current step, no simulated damage, 12 h: whatever the
    tests suspect, no damage verdict and no spot spent for damage."""
    (r,) = _bench(
        tmp_path,
        "--preset",
        "peo-lfp-relaxation",
        "--scenario",
        "off",
        "--seeds",
        "1",
        "--hours",
        "12",
    )
    assert r["scans"] > 400
    assert r["verdicts"].get("damage", 0) == 0 and r["false_verdicts_per_72h"] == 0


def test_damage_past_the_critical_dose_is_confirmed_on_a_control_spot(tmp_path):
    """lnmo-surface at 5 MGy critical dose (~90 MGy a scan): damage in a settled rest is
    suspected, confirmed on a control spot, and no verdict is false. (The issue's goal, every
    damaged spot confirmed within 3 scans of 3 % photoreduced, is not met: damage under
    current is not tested; the bench reports the scans it took.)"""
    (r,) = _bench(
        tmp_path,
        "--preset",
        "lnmo-surface",
        "--scenario",
        "on-5MGy",
        "--seeds",
        "1",
        "--hours",
        "8",
    )
    assert r["verdicts"].get("damage", 0) >= 1 and r["control_scans"] >= 1
    assert r["false_verdicts_per_72h"] == 0
    assert r["scans_from_3pct_to_verdict"] and min(r["scans_from_3pct_to_verdict"]) <= 3
