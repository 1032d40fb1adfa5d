"""A user's mistake gets one line naming what was wrong and where, never a traceback."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

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


def _mistakes(tmp: Path) -> list[tuple[list[str], str]]:
    """(command line, what its one error line must name): the mistakes a user makes."""
    (tmp / "broken.toml").write_text('name = "x"\n[monitor\n')
    (tmp / "notarun").mkdir()
    (tmp / "notarun" / "run.sqlite").write_text("not a database\n")
    (tmp / "empty.csv").write_text("energy,Mn2+,Mn3+\n")
    (tmp / "scan.txt").write_text("energy I0 TEY\n640 1 2\n")
    anywhere = ["--data", "tcp://127.0.0.1:*", "--command", "tcp://127.0.0.1:*"]
    quick = ["--wait-subscriber", "0", *anywhere]
    return [
        (["monitor", "--config", str(tmp / "missing.toml")], "no such configuration file"),
        (["monitor", "--config", str(tmp / "broken.toml")], "not valid TOML"),
        (["demo", "--duration", "-5", "--headless", "--no-dashboard"], "--duration: '-5'"),
        (["demo", "--speed", "0", "--headless", "--no-dashboard"], "--speed: '0'"),
        (["driver", "sim-potentiostat", "--speed", "0", *quick], "--speed 0"),
        (["driver", "eclab", str(tmp / "scan.txt"), "--capacity", "-1"], "--capacity: '-1'"),
        (
            ["driver", "sim-potentiostat", "--wait-subscriber", "0", "--data", "nowhere"],
            "endpoint 'nowhere'",
        ),
        (["driver", "bluesky", "--proxy", "nowhere", *quick], "endpoint 'nowhere'"),
        (["instrument", "palmsens-sim", "--listen", "nohost"], "--listen 'nohost'"),
        (["instrument", "palmsens-sim", "--cell", "nocell"], "--cell 'nocell': unknown"),
        (["instrument", "palmsens-sim", "--soc", "1.5"], "--soc: '1.5'"),
        (["inspect", str(tmp / "notarun")], "not a run store"),
        (["export", str(tmp / "notarun"), "--format", "documents"], "not a run store"),
        (["dashboard", "--run-dir", str(tmp / "notarun")], "not a run store"),
        (["references", "export", "--edge", "Xx-L"], "--edge 'Xx-L': unknown"),
        (
            ["fit", str(tmp / "scan.txt"), "--references", str(tmp / "empty.csv")],
            "no rows after the header",
        ),
        (["trigger", "acquire", "--monitor", "foo://x", "--timeout", "1"], "endpoint 'foo://x'"),
        (["status", "--monitor", "nowhere"], "endpoint 'nowhere'"),
        (["status", "--timeout", "0"], "--timeout: '0'"),
    ]


def test_no_mistake_on_the_command_line_ends_in_a_traceback(tmp_path):
    """Every command refuses a mistaken argument with exit 2 and one line naming it; the
    parser's own refusals add its usage lines above that line."""
    wrong = []
    for args, names in _mistakes(tmp_path):
        proc = cli(*args, check=False, timeout=60)
        lines = proc.stderr.strip().splitlines()
        parser_refusal = bool(lines) and lines[0].startswith("usage:")
        if (
            proc.returncode != 2
            or "Traceback" in proc.stderr
            or not lines
            or names not in lines[-1]
            or (len(lines) != 1 and not parser_refusal)
        ):
            wrong.append(f"operando {' '.join(args)} -> {proc.returncode}: {proc.stderr[-600:]}")
    assert not wrong, "\n\n".join(wrong)


def test_a_port_another_process_holds_is_refused_naming_that_process():
    """Two experiments on one machine: the second driver on the first one's port stops with
    the process that holds it, instead of a traceback (or sharing the port)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        endpoint = f"tcp://127.0.0.1:{port}"
        proc = cli(
            "driver", "sim-potentiostat", "--data", endpoint, "--command", "tcp://127.0.0.1:*",
            check=False, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2
    line = one_line(proc)
    assert f"{endpoint} is already in use by pid {os.getpid()}" in line, line
    assert "choose another port" in line
