"""Spot rotation on a loaded machine: does any spot pass its dose budget by more than a scan?

    python bench/spots_under_load.py [--hogs 2] [--duration 50] [--speed 120]

Runs ``operando demo --preset lnmo-surface`` (a damaging beam: ~99 MGy a scan against a
500 MGy budget per spot) with ``--hogs`` busy-looping processes beside it, as a CI machine
running other tests is loaded, and prints one JSON line: per spot the scans and the dose it
took, the spots over budget + one scan, the spot changes with their reasons, and how far the
analysis lagged (damage flags recorded after the last message arrived). This is how the
defect of the first 2026-11-29 session was reproduced (B4: 11 scans, 1,086 MGy, with the
dose counted after the analysis) and how its fix was checked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from operando.demo import cli_command
from operando.store import open_readonly

CLI = cli_command()
BUDGET_GY = 5e8  # the preset's [analysis] dose_budget_Gy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", type=int, default=2, help="busy-looping processes beside the demo")
    ap.add_argument("--duration", type=float, default=50.0, help="wall seconds")
    ap.add_argument("--speed", type=float, default=120.0)
    a = ap.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.hogs)]
    try:
        with tempfile.TemporaryDirectory() as d:
            run = Path(d) / "run"
            subprocess.run(
                [
                    *CLI,
                    *("demo", "--preset", "lnmo-surface", "--headless", "--no-dashboard"),
                    *("--duration", str(a.duration), "--speed", str(a.speed)),
                    *("--run-dir", str(run)),
                ],
                check=True,
                capture_output=True,
                timeout=a.duration + 300,
            )
            print(json.dumps({"bench": "spots_under_load", "hogs": a.hogs, **summary(run)}))
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def summary(run: Path) -> dict[str, object]:
    conn = open_readonly(run)
    try:
        spots = conn.execute(
            "SELECT spot, count(*), max(after_Gy), max(dose_Gy) FROM dose "
            "GROUP BY spot ORDER BY min(spectrum_id)"
        ).fetchall()
        last_arrival = conn.execute("SELECT max(recv_ns) FROM raw").fetchone()[0]
        flags_late = conn.execute(
            "SELECT count(*) FROM events WHERE kind IN ('damage_suspicion', 'damage_verdict') "
            "AND recv_ns > ?",
            (last_arrival,),
        ).fetchone()[0]
        changes = [
            (json.loads(d)["new"], json.loads(d)["reason"])
            for (d,) in conn.execute("SELECT detail FROM events WHERE kind = 'spot_change'")
        ]
    finally:
        conn.close()
    return {
        "spots": {s: {"scans": n, "dose_MGy": round(total / 1e6, 1)} for s, n, total, _ in spots},
        "over_budget_plus_one_scan": [s for s, _, total, one in spots if total > BUDGET_GY + one],
        "spot_changes": changes,
        "damage_findings_after_last_arrival": flags_late,
    }


if __name__ == "__main__":
    main()
