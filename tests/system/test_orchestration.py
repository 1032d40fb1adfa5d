"""Orchestration end to end: triggered scans, RIXS holds, spot rotation, lost acks, CURVE."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import time

import pytest
import zmq
import zmq.asyncio
from conftest import (
    cli,
    endpoint,
    endpoints,
    inspect_json,
    monitor_config,
    record_demo,
    recorded_events,
    store_count,
    wait_for,
)

from operando.config import preset_path
from operando.store import open_readonly
from operando.transport import CommandClient, CommandError, client_curve

HYSTERESIS = 0.02


@pytest.mark.slow
def test_triggered_scans_once_per_crossing_aligned_at_target_and_spots_rotate(tmp_path):
    run = tmp_path / "trig"
    record_demo(run, 70, "--preset", "peo-nmc-triggered", timeout=200)
    fired = recorded_events(run, "trigger")
    conn = open_readonly(run)
    keys = [(f["trigger_id"], f["cycle"]) for f in fired]
    assert len(keys) == len(set(keys)) >= 5  # never twice for one crossing in one cycle
    assert {k for k in keys if k[1] == 0} == {
        ("charge-3.8", 0),
        ("charge-4.0", 0),
        ("charge-4.2", 0),
        ("discharge-3.9", 0),
        ("discharge-3.7", 0),
    }
    targets = {
        "charge-3.8": 3.8,
        "charge-4.0": 4.0,
        "charge-4.2": 4.2,
        "discharge-3.9": 3.9,
        "discharge-3.7": 3.7,
    }
    scans = conn.execute(
        "SELECT s.trigger_id, s.spot_id, a.doc FROM spectra s JOIN alignment a "
        "ON a.spectrum_id = s.id"
    ).fetchall()
    assert len(scans) >= 5 and len({s[0] for s in scans}) == len(scans)  # one scan per firing
    for trigger_id, _spot, doc in scans:
        target = targets[trigger_id.rsplit("-c", 1)[0]]
        assert abs(json.loads(doc)["ewe_points_V"][0] - target) < HYSTERESIS
    budget = 2.5e6
    doses = conn.execute("SELECT spot, max(after_Gy), max(dose_Gy) FROM dose GROUP BY spot")
    for spot, total, one_scan in doses:
        assert total <= budget + one_scan, spot
    changes = conn.execute("SELECT count(*) FROM events WHERE kind = 'spot_change'").fetchone()
    assert changes[0] >= 1
    used = [s[1] for s in scans]
    assert all(used.index(a) <= used.index(b) for a, b in itertools.pairwise(used))


@pytest.mark.slow
def test_rixs_map_trigger_holds_the_cell_then_resumes(tmp_path):
    text = preset_path("peo-nmc-triggered").read_text()
    text = (
        text[: text.index("[orchestration]")]
        + """
[orchestration]
triggers = [
    { id = "map-4.1", target = 4.1, direction = "charge", action = { type = "rixs_map" } },
]
"""
    )
    text = text.replace('mode = "triggered"', 'mode = "triggered"\nrixs_row_s = 5.0')
    cfg = tmp_path / "rixs.toml"
    cfg.write_text(text)
    run = tmp_path / "rixs"
    record_demo(run, 40, "--config", str(cfg), timeout=200)
    acks = recorded_events(run, "ack")
    conn = open_readonly(run)
    assert [a["action"] for a in acks] == ["hold", "acquire", "resume"]
    t0, t1 = conn.execute(
        "SELECT min(t_start), max(t_end) FROM spectra WHERE kind = 'rixs_rows'"
    ).fetchone()
    (rows,) = conn.execute("SELECT count(*) FROM spectra WHERE kind = 'rixs_rows'").fetchone()
    assert rows == 61
    held = conn.execute(
        "SELECT i, mode FROM potentiostat WHERE t BETWEEN ? AND ? ORDER BY t", (t0 + 10, t1 - 10)
    ).fetchall()
    assert held and all(m == 2 for _, m in held)  # CV at the present voltage
    assert held[-1][0] < 0.7 * held[0][0]  # the current decays while held
    after = conn.execute(
        "SELECT mode FROM potentiostat WHERE t BETWEEN ? AND ? ORDER BY t", (t1 + 10, t1 + 40)
    ).fetchall()
    assert after and all(m == 1 for (m,) in after)  # the protocol resumed (CC)


@pytest.mark.slow
def test_a_move_that_did_not_take_is_sent_again(tmp_path):
    """The stage acks the first move without moving (fault injection): the scans that keep
    coming from the spent spot make the orchestrator send the move again, and a person is
    alarmed. The stuck spot takes at most three scans over its budget: the one in flight at
    the move, the one that shows it did not take, and the one in flight at the retry."""
    text = preset_path("lnmo-surface").read_text()
    spec = 'driver = "sim-spectrometer"'
    text = text.replace(spec, spec + "\nstuck_moves = 1")
    text += "\n[analysis.damage]\ncheck_every_scans = 0\n"  # the first move: for the budget
    cfg = tmp_path / "stuck.toml"
    cfg.write_text(text)
    run = tmp_path / "stuck"
    record_demo(run, 30, "--config", str(cfg), timeout=180)
    retries = recorded_events(run, "spot_move_retry")
    changes = recorded_events(run, "spot_change")
    assert changes and retries, (changes, retries)
    first = changes[0]
    assert retries[0]["spot"] == first["old"] and retries[0]["target"] == first["new"]
    stage = [a for a in recorded_events(run, "alarm") if a["category"] == "stage"]
    assert stage and first["old"] in stage[0]["message"]  # a person should look at the stage
    moves = [a for a in recorded_events(run, "ack") if a["action"] == "move"]
    assert moves[0]["args"] == moves[1]["args"] == {"spot": first["new"]}
    conn = open_readonly(run)
    spots = [s for (s,) in conn.execute("SELECT spot_id FROM spectra ORDER BY t_start")]
    # the beam left the stuck spot for good: no spot is visited twice
    visits = [k for k, _ in itertools.groupby(spots)]
    assert len(visits) == len(set(visits)) >= 2, visits
    budget = 5e8
    for spot, total, one_scan in conn.execute(
        "SELECT spot, max(after_Gy), max(dose_Gy) FROM dose GROUP BY spot"
    ):
        assert total <= budget + 3 * one_scan, (spot, total)


def _monitor_and_sims(tmp_path, processes, spec_extra=()):
    cfg, mon_path = monitor_config(tmp_path, capacity_mAh=None)
    ep = endpoints(cfg)
    sim_cfg = tmp_path / "sim.toml"
    sim_cfg.write_text(
        '[drivers.potentiostat]\npreset = "peo-nmc"\n'
        '[drivers.spectrometer]\nmode = "triggered"\ndwell_s = 0.02\n'
    )
    run = tmp_path / "run"
    mon = processes(
        "monitor",
        "--config",
        str(mon_path),
        "--run-dir",
        str(run),
        log=tmp_path / "m.log",
    )
    common = ("--config", str(sim_cfg), "--speed", "60", "--wait-subscriber", "20")
    processes(
        "driver",
        "sim-potentiostat",
        *common,
        "--data",
        ep[2],
        "--command",
        ep[3],
        log=tmp_path / "p.log",
    )
    processes(
        "driver",
        "sim-spectrometer",
        *common,
        "--data",
        ep[4],
        "--command",
        ep[5],
        "--cell-data",
        ep[2],
        *spec_extra,
        log=tmp_path / "s.log",
    )
    return ep, run, mon


@pytest.mark.slow
def test_lost_ack_is_retried_without_a_second_scan(tmp_path, processes):
    ep, run, mon = _monitor_and_sims(tmp_path, processes, ("--drop-acks", "1"))
    wait_for(
        lambda: cli("status", "--monitor", ep[1], check=False).returncode == 0, 20, what="monitor"
    )
    out = cli("trigger", "acquire", "--edge", "Mn-L", "--monitor", ep[1], timeout=60).stdout
    tid = json.loads(out)["trigger_id"]
    refused = cli("trigger", "acquire", "--edge", "Xx-L", "--monitor", ep[1], check=False)
    assert refused.returncode == 2 and "unknown edge 'Xx-L'" in refused.stderr
    status = json.loads(cli("status", "--monitor", ep[1], "--json").stdout)
    alarms = status["orchestration"]["alarms"]
    assert [a["category"] for a in alarms] == ["command"] and "Xx-L" in alarms[0]["message"]
    # for people: the mode named, the time as UTC, the alarm spelled out
    readable = cli("status", "--monitor", ep[1]).stdout
    assert "OPEN ALARMS (1):" in readable and "[command]" in readable and "Xx-L" in readable
    assert " UTC" in readable and "not holding the cell" in readable
    cli("trigger", "acknowledge", "--alarm", str(alarms[0]["id"]), "--monitor", ep[1])
    status = json.loads(cli("status", "--monitor", ep[1], "--json").stdout)
    assert status["orchestration"]["alarms"] == []
    assert "no open alarms" in cli("status", "--monitor", ep[1]).stdout
    time.sleep(8)  # the scan: 351 points x 0.02 s at 60x
    assert mon.stop(signal.SIGINT) == 0
    s = inspect_json(run)
    conn = open_readonly(run)
    scans = conn.execute("SELECT count(*) FROM spectra WHERE trigger_id = ?", (tid,)).fetchone()
    assert scans[0] == 1, s
    acks = conn.execute(
        "SELECT count(*) FROM events WHERE kind = 'ack' AND "
        "json_extract(detail, '$.trigger_id') = ?",
        (tid,),
    ).fetchone()[0]
    assert acks == 1  # one ack recorded for it: the retry's


def test_unknown_keys_cannot_command_a_curve_driver(tmp_path, processes):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("driver", "monitor", "stranger"):
        cli("keys", "generate", str(keys), "--name", name)
    allowed.mkdir()
    (allowed / "monitor.key").write_text((keys / "monitor.key").read_text())
    data, command = endpoint(), endpoint()
    cfg = tmp_path / "sim.toml"
    cfg.write_text('[drivers.spectrometer]\nmode = "triggered"\n')
    processes(
        "driver",
        "sim-spectrometer",
        "--config",
        str(cfg),
        "--data",
        data,
        "--command",
        command,
        "--curve-secret",
        str(keys / "driver.key_secret"),
        "--curve-clients",
        str(allowed),
        "--wait-subscriber",
        "0",
        log=tmp_path / "s.log",
    )

    async def ask(curve):
        ctx = zmq.asyncio.Context()
        client = CommandClient(ctx, command, "t", timeout_s=1.5, retries=0, curve=curve)
        try:
            return await client.request("status")
        finally:
            await client.close()
            ctx.destroy(linger=0)

    server = str(keys / "driver.key")
    allowed_curve = client_curve(str(keys / "monitor.key_secret"), server)

    def allowed_answers():  # the driver process may still be starting: ask until it answers
        try:
            return asyncio.run(ask(allowed_curve))
        except CommandError:
            return None

    ok = wait_for(allowed_answers, 60, 0.1, what="the driver to answer an allowed key")
    assert ok.ok and ok.result["scans"] == 0
    with pytest.raises(CommandError, match="no ack"):
        asyncio.run(ask(client_curve(str(keys / "stranger.key_secret"), server)))
    with pytest.raises(CommandError, match="no ack"):
        asyncio.run(ask(None))  # plain text is refused too
    stranger_acquire = client_curve(str(keys / "stranger.key_secret"), server)

    async def try_acquire():
        ctx = zmq.asyncio.Context()
        client = CommandClient(ctx, command, "t", timeout_s=1.0, retries=0, curve=stranger_acquire)
        try:
            await client.request("acquire", {"edge": "Mn-L"})
        except CommandError:
            pass
        finally:
            await client.close()
            ctx.destroy(linger=0)

    asyncio.run(try_acquire())
    again = asyncio.run(ask(client_curve(str(keys / "monitor.key_secret"), server)))
    assert again.result["scans"] == 0 and again.result["queued"] == 0


def test_a_command_with_no_peer_to_take_it_fails_within_its_timeout():
    """A DEALER with no connected peer cannot send: here nothing listens and the socket waits
    for a connection before it queues; with CURVE, a server that drops our handshake leaves
    the same. The send waited forever (CI hung 300 s in the test above)."""

    async def main() -> tuple[float, str]:
        ctx = zmq.asyncio.Context()
        client = CommandClient(ctx, endpoint(), "t", timeout_s=0.3, retries=1)
        client.sock.close(linger=0)
        client.sock = ctx.socket(zmq.DEALER)
        client.sock.linger = 0
        client.sock.immediate = True  # no queue without a peer, as after a refused handshake
        client.sock.connect(client.endpoint)
        t0 = time.monotonic()
        try:
            await client.request("status")
        except CommandError as e:
            return time.monotonic() - t0, str(e)
        finally:
            await client.close()
            ctx.destroy(linger=0)
        return math.inf, "answered"

    took, message = asyncio.run(asyncio.wait_for(main(), 10))
    assert took < 2.0 and "not sent: no connection" in message, (took, message)


def _spectra(run) -> int:
    return store_count(run, "SELECT count(*) FROM spectra WHERE kind = 'xas_scan'")


@pytest.mark.slow
def test_with_every_spot_spent_the_scans_pause_until_the_operator_resumes(tmp_path, processes):
    """Two spots at ~90 MGy a scan against a 500 MGy budget: both are spent within minutes
    of the run. The scans pause (more would only measure damage on spent spots), the alarm
    and the status say so, and the operator's resume_scans starts them again."""
    text = preset_path("lnmo-surface").read_text()
    spec = 'driver = "sim-spectrometer"'
    text = text.replace(spec, spec + "\nspots = { rows = 1, cols = 2 }")
    cfg = tmp_path / "two-spots.toml"
    cfg.write_text(text)
    run = tmp_path / "run"
    args = ["demo", "--config", str(cfg), "--headless", "--no-dashboard", "--speed", "120"]
    demo = processes(*args, "--duration", "150", "--run-dir", str(run), log=tmp_path / "demo.log")
    wait_for(
        lambda: _spectra(run) and recorded_events(run, "scans_paused"),
        90,
        what="the scans paused",
        show=demo.output,
    )
    (paused,) = recorded_events(run, "scans_paused")
    assert paused["spent"] == 2

    def orchestration():
        proc = cli("status", "--run-dir", str(run), "--json", "--timeout", "2", check=False)
        return json.loads(proc.stdout)["orchestration"] if proc.returncode == 0 else None

    orch = wait_for(orchestration, 20, what="the monitor's status")
    assert orch["scans_paused"] is True
    assert "SCANS PAUSED" in cli("status", "--run-dir", str(run)).stdout
    (alarm,) = [a for a in orch["alarms"] if a["category"] == "spots"]
    assert "scans paused" in alarm["message"] and "resume_scans" in alarm["message"]
    at_pause = _spectra(run)
    time.sleep(6)  # six free-running intervals at 120x (120 s each)
    assert _spectra(run) <= at_pause + 1  # at most the scan in flight at the pause
    cli("trigger", "resume_scans", "--run-dir", str(run), timeout=30)
    wait_for(lambda: _spectra(run) > at_pause + 1, 30, what="scans after the resume")
    assert orchestration()["scans_paused"] is False
    assert demo.stop(signal.SIGINT) == 0
    resumed = [
        a for a in recorded_events(run, "ack") if a["action"] in ("pause_scans", "resume_scans")
    ]
    assert [a["action"] for a in resumed] == ["pause_scans", "resume_scans"]
