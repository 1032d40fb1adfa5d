"""A user's mistake gets one line naming what was wrong and where, never a traceback."""

from __future__ import annotations

import stat

from conftest import cli


def one_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_status_of_a_finished_run_says_no_monitor_runs_and_when_it_last_recorded(lfp_run):
    proc = cli("status", "--run-dir", str(lfp_run), "--timeout", "0.5", check=False)
    assert proc.returncode == 1
    line = one_line(proc)
    assert f"no monitor is running for {lfp_run}" in line
    assert "its newest message arrived at 20" in line and "operando inspect" in line


def test_keys_are_kept_secret_and_never_overwritten_by_accident(tmp_path):
    cli("keys", "generate", str(tmp_path))
    secret = tmp_path / "operando.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    before = secret.read_bytes()
    again = cli("keys", "generate", str(tmp_path), check=False)
    assert again.returncode == 2 and "--force" in one_line(again)
    assert secret.read_bytes() == before
    cli("keys", "generate", str(tmp_path), "--force")
    assert secret.read_bytes() != before


def test_dashboard_on_a_missing_run_directory_refuses(tmp_path):
    proc = cli("dashboard", "--run-dir", str(tmp_path / "typo"), check=False, timeout=60)
    assert proc.returncode == 2
    assert (
        one_line(proc) == f"operando dashboard: error: {tmp_path / 'typo'}: no such run directory"
    )
