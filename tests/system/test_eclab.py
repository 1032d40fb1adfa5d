"""EC-Lab text exports: the parser on real files, and the driver through a real monitor.

The files in ../shared/data/eclab are real EC-Lab exports (decimal commas, averaged currents,
charge in C or mA.h, open circuit without a current column); tests that need them skip with the
reason when ../shared is absent.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, cli, driver_endpoints, inspect_json, store_count, wait_for
from operando.dashboards.cycleplots import CyclingPlots
from operando.dashboards.view import RunView
from operando.drivers.eclab import MptFormatError, MptReader, current_sampling
from operando.drivers.eclab_file import batch_arrays
from operando.drivers.eclab_mpr import read_mpr

import operando
from operando.config import load_config, preset_path
from operando.demo import localize
from operando.protocol import PotentiostatBatch, decode, encode
from operando.store import open_readonly

ECLAB = SHARED / "data" / "eclab"
needs_files = pytest.mark.skipif(
    not ECLAB.exists(), reason=f"{ECLAB} not found: the real EC-Lab exports live in ../shared"
)


def read_all(path: Path, piece: int | None = None) -> tuple[MptReader, dict[str, np.ndarray]]:
    reader = MptReader(path.name)
    data = path.read_bytes() + b"\n"
    step = piece or len(data)
    parts = [reader.feed(data[i : i + step]) for i in range(0, len(data), step)]
    return reader, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@needs_files
@pytest.mark.parametrize(
    ("name", "rows", "technique", "has_current", "q_column"),
    [
        ("yadg_cp.mpt", 121, "Chronopotentiometry", True, "(Q-Qo)/C"),
        ("yadg_gcpl.issue_149.mpt", 132, "Galvanostatic Cycling", True, "(Q-Qo)/mA.h"),
        ("yadg_ocv.mpt", 602, "Open Circuit Voltage", False, None),
    ],
)
def test_real_exports_parse_the_same_in_any_pieces(name, rows, technique, has_current, q_column):
    reader, whole = read_all(ECLAB / name)
    _, pieces = read_all(ECLAB / name, piece=97)  # partial lines everywhere
    assert len(whole["t"]) == rows
    for k in whole:
        np.testing.assert_array_equal(whole[k], pieces[k])
    h = reader.header
    assert h is not None and h.technique.startswith(technique) and h.start is not None
    assert np.all(np.diff(whole["t"]) > 0) and np.all(np.isfinite(whole["Ewe"]))
    assert np.any(whole["I"] != 0) == has_current
    if q_column:
        assert h.names[h.where["Q"][0]] == q_column
    else:
        assert np.all(np.isnan(whole["Q"]))


@needs_files
def test_a_batch_sends_the_charge_only_where_every_row_has_one():
    """A partly missing Q column (a damaged .mpr) must not make the batch malformed: the
    monitor refuses a NaN in Q, and counts coulombs for a batch without it."""
    t = np.arange(3.0)
    part = {"t": t, "Ewe": t + 3.7, "I": t * 0 + 0.1, "Q": np.array([0.0, np.nan, 0.2])}
    part |= {"mode": np.ones(3, np.int8), "step": np.zeros(3, np.int32)}
    part["cycle"] = np.zeros(3, np.int32)
    for q, charge, sent in (([0.0, np.nan, 0.2], True, False), ([0.0, 0.1, 0.2], True, True)):
        part["Q"] = np.array(q)
        arrays = batch_arrays(part, charge)
        assert ("Q" in arrays) is sent
        decoded = decode(encode(PotentiostatBatch(source="eclab", session="s"), arrays))
        assert ("Q" in decoded.arrays) is sent  # the monitor takes the batch
    assert "Q" not in batch_arrays(part, charge=False)


def test_decimal_commas_and_charge_in_coulombs_are_read_as_numbers():
    _, gcpl = read_all(ECLAB / "yadg_gcpl.issue_149.mpt")  # "3,4228721E+000"
    assert gcpl["Ewe"][0] == pytest.approx(3.4228721)
    _, cp = read_all(ECLAB / "yadg_cp.mpt")  # (Q-Qo)/C -> mA.h
    text = (ECLAB / "yadg_cp.mpt").read_text(encoding="latin-1").splitlines()
    last_q_coulomb = float(text[-1].split("\t")[12])
    assert cp["Q"][-1] == pytest.approx(last_q_coulomb / 3.6)


@needs_files
@pytest.mark.parametrize("name", ["yadg_cp", "yadg_gcpl.issue_149", "yadg_ocv"])
def test_binary_mpr_gives_the_rows_of_its_text_export(name):
    """galvani's .mpr columns differ from the .mpt's (the GCPL file has no current: it is
    rebuilt from the charge per row); the rows must come out the same."""
    from operando.drivers.eclab_mpr import read_mpr

    start, names, binary = read_mpr(ECLAB / f"{name}.mpr")
    reader, text = read_all(ECLAB / f"{name}.mpt")
    assert start == reader.header.start
    assert ("I/mA" in names) == (name == "yadg_cp")  # the others carry no current column
    for k in ("t", "Ewe", "I", "Q"):  # float32 in the binary, 7-8 digits in the text
        np.testing.assert_allclose(binary[k], text[k], rtol=1e-6, atol=1e-9, err_msg=k)
    for k in ("mode", "step", "cycle"):
        np.testing.assert_array_equal(binary[k], text[k], err_msg=k)


def test_bad_exports_say_what_and_where(tmp_path):
    with pytest.raises(MptFormatError, match="line 1 is not 'EC-Lab ASCII FILE'"):
        MptReader("x.mpt").feed(b"time/s\tEwe/V\n1\t2\n3\t4\n")
    with pytest.raises(MptFormatError, match=r"no column for \['Ewe'\]"):
        MptReader("x.mpt").feed(b"EC-Lab ASCII FILE\nNb header lines : 3\nmode\ttime/s\tI/mA\n")
    # a data line that cannot be read is left out and named, the rows around it kept
    head = b"EC-Lab ASCII FILE\nNb header lines : 3\nmode\ttime/s\tEwe/V\n"
    reader = MptReader("x.mpt")
    rows = reader.feed(head + b"1\t0,0\t3,1\n1\t1,0\tnot-a-number\n1\t2,0\t3,2\n")
    np.testing.assert_allclose(rows["Ewe"], [3.1, 3.2])
    ((line, why),) = reader.take_refused()
    assert line == 5 and "could not convert" in why
    assert reader.take_refused() == []
    # found by bench/fuzz.py: an infinite voltage, a cycle number beyond int32
    reader = MptReader("x.mpt")
    assert len(reader.feed(head + b"1\t0,0\tinf\n")["t"]) == 0
    assert reader.take_refused() == [(4, "Ewe/V = 'inf' is not a value EC-Lab writes")]
    head_cycle = b"EC-Lab ASCII FILE\nNb header lines : 3\ntime/s\tEwe/V\tcycle number\n"
    reader = MptReader("x.mpt")
    reader.feed(head_cycle + b"0\t3,1\t1e12\n")
    assert reader.take_refused()[0][1].startswith("cycle number = '1e12'")


def _start(tmp_path, processes, driver_args, capacity):
    """The shipped example (configs/eclab-potentiostat.toml) on free ports, this capacity."""
    cfg = localize(load_config(preset_path("eclab-potentiostat")))
    alignment = msgspec.structs.replace(cfg.alignment, capacity_mAh=capacity)
    cfg = msgspec.structs.replace(cfg, alignment=alignment)
    path = tmp_path / "experiment.json"
    path.write_bytes(msgspec.json.encode(cfg))
    run = tmp_path / "run"
    monitor = processes(
        "monitor", "--config", str(path), "--run-dir", str(run), log=tmp_path / "mon.log"
    )
    src = cfg.source("potentiostat")
    driver = processes(
        "driver",
        "eclab",
        *driver_args,
        "--data",
        src.data,
        "--command",
        src.command,
        log=tmp_path / "driver.log",
    )
    driver.monitor = monitor  # the test that stops it before a reprocess
    return run, driver


def _rows(run: Path) -> int:
    try:
        conn = open_readonly(run)
        try:
            return conn.execute("SELECT count(*) FROM potentiostat").fetchone()[0]
        finally:
            conn.close()
    except Exception:  # the store is still being created
        return 0


# (file, how its current is sampled, the largest |counted - (Q-Qo)| / range it may show)
COUNTED = [
    ("yadg_cp.mpt", "instant", 1e-3),
    # <I>/mA is the mean over each interval: the trapezoid missed by 25x the range; I times
    # the interval matches to EC-Lab's own rounding of a 8e-5 mAh (Q-Qo)
    ("yadg_gcpl.issue_149.mpt", "interval_average", 1.5e-3),
    # I/mA is not a DC current during the impedance steps: the count misses by 0.30 % (the
    # default, EC-Lab's (Q-Qo) sent as it is, is exact)
    ("cellpy_biol.mpr", "instant", 3.5e-3),
]


@needs_files
@pytest.mark.slow
@pytest.mark.parametrize(("name", "sampling", "bound"), COUNTED, ids=[c[0] for c in COUNTED])
def test_monitor_soc_from_the_current_matches_eclab_charge(
    tmp_path, processes, name, sampling, bound
):
    """Replayed without EC-Lab's charge column, the monitor counts coulombs from the current
    by the rule the driver announces for its current column: its charge must match EC-Lab's
    own (Q-Qo) within ``bound`` of the charge range."""
    path = ECLAB / name
    truth = read_mpr(path)[2] if path.suffix == ".mpr" else read_all(path)[1]
    capacity = float(np.ptp(truth["Q"]))  # the whole range: the harshest capacity to use
    run, driver = _start(tmp_path, processes, [str(path), "--speed", "0", "--no-charge"], capacity)
    assert driver.p.wait(120) == 0, driver.output()
    wait_for(lambda: _rows(run) == len(truth["t"]), 60, what="all rows recorded")
    with operando.open_run(run) as r:
        cell = r.potentiostat()
        (series,) = r.events().query("kind == 'series_start'")["detail"]
    assert json.loads(series)["metadata"]["current_sampling"] == sampling
    assert cell["Q"].isna().all()  # the charge column really was left out
    charge = cell["soc"].to_numpy() * capacity  # initial SOC 0; EC-Lab's Q starts at 0 too
    err = np.max(np.abs(charge - (truth["Q"] - truth["Q"][0]))) / capacity
    assert err < bound, err
    assert cell["t"].iloc[0] > 1.0e9  # absolute: the header's acquisition start + time/s


def sparse_gcpl(path: Path, rows: int, every_s: float) -> np.ndarray:
    """An EC-Lab GCPL export logging a row every ``every_s``: the driver's batches of rows
    then span far longer than the monitor's 6 h potentiostat history. Returns the times."""
    t = np.arange(rows) * every_s
    i = np.where((t // 36000) % 2 == 0, 0.1, -0.1)  # 10 h charge, 10 h discharge
    q = np.concatenate([[0.0], np.cumsum(i[1:] * np.diff(t)) / 3600.0])
    ewe = 3.5 + 0.5 * np.sin(t / 36000.0)
    head = [
        "EC-Lab ASCII FILE",
        "Nb header lines : 6",
        "",
        "Galvanostatic Cycling with Potential Limitation",
        "Acquisition started on : 01/04/2021 10:00:00.000",
        "mode\ttime/s\tEwe/V\t<I>/mA\t(Q-Qo)/mA.h\tcycle number",
    ]
    body = [
        f"1\t{a:.1f}\t{b:.5f}\t{c:.4f}\t{d:.6f}\t{int(a // 72000)}"
        for a, b, c, d in zip(t, ewe, i, q, strict=True)
    ]
    path.write_text("\n".join(head + body) + "\n", encoding="latin-1")
    return t


@pytest.mark.slow
def test_sparse_rows_in_long_batches_are_all_derived(tmp_path, processes):
    """12,000 rows, one every 120 s: each 500-row batch spans 16.7 h. Before, the 6 h history
    trimmed a batch's own rows and 1,000 rows never reached the potentiostat table while
    inspect said lost 0; now every row is derived, and inspect says "0 not derived"."""
    path = tmp_path / "sparse_gcpl.mpt"
    t = sparse_gcpl(path, 12_000, 120.0)
    run, driver = _start(tmp_path, processes, [str(path), "--speed", "0"], 1.0)
    assert driver.p.wait(120) == 0, driver.output()
    wait_for(lambda: _rows(run) == len(t), 60, what="every row derived")
    s = json.loads(cli("inspect", str(run), "--json").stdout)
    src = s["sources"]["potentiostat"]
    assert src["not_derived"] == 0 and src["lost"] == 0
    assert "derive_error" not in s["events"]
    with operando.open_run(run) as r:
        cell = r.potentiostat()
    np.testing.assert_allclose(cell["t"] - cell["t"].iloc[0], t)
    assert cell["soc"].notna().all()
    assert "0 not derived" in cli("inspect", str(run)).stdout


@needs_files
@pytest.mark.slow
def test_follows_a_growing_file_and_a_replaced_one(tmp_path, processes):
    src = ECLAB / "yadg_gcpl.issue_149.mpt"
    data = src.read_bytes()
    live = tmp_path / "live.mpt"
    cut = data.index(b"\n", len(data) // 3) + 20  # mid-line: a partial last line
    live.write_bytes(data[:cut])
    args = [str(live), "--follow", "--poll", "0.05", "--settle", "600"]
    run, driver = _start(tmp_path, processes, args, 1.0)
    _, first = read_all(src)
    wait_for(lambda: _rows(run) > 0, 30, what="the first rows")
    with open(live, "ab") as f:  # EC-Lab goes on writing, in odd pieces
        for i in range(cut, len(data), 1000):
            f.write(data[i : i + 1000])
            f.flush()
    # the last line has no newline yet: it may still be being written, so it waits
    n_first = len(first["t"])
    wait_for(lambda: _rows(run) == n_first - 1, 30, what="every complete row of the file")
    # a new export under the same name (EC-Lab started the next technique)
    tmp = tmp_path / "next.mpt"
    shutil.copy(ECLAB / "yadg_ocv.mpt", tmp)
    os.replace(tmp, live)
    _, second = read_all(ECLAB / "yadg_ocv.mpt")
    # replaced: the old file's last line is complete after all; the new one's waits
    n_all = n_first + len(second["t"]) - 1
    wait_for(lambda: _rows(run) == n_all, 30, what="the new file's rows")
    assert driver.stop(signal.SIGINT) == 0
    conn = open_readonly(run)
    ewe = [r[0] for r in conn.execute("SELECT ewe FROM potentiostat ORDER BY rowid")]
    conn.close()
    np.testing.assert_allclose(ewe, np.concatenate([first["Ewe"], second["Ewe"][:-1]]))


@needs_files
@pytest.mark.slow
def test_mpr_replayed_through_the_monitor(tmp_path, processes):
    name = ECLAB / "yadg_gcpl.issue_149.mpr"
    run, driver = _start(tmp_path, processes, [str(name), "--speed", "0"], 1.0)
    assert driver.p.wait(60) == 0, driver.output()
    _, truth = read_all(ECLAB / "yadg_gcpl.issue_149.mpt")
    wait_for(lambda: _rows(run) == len(truth["t"]), 30, what="all rows recorded")
    conn = open_readonly(run)
    got = np.array(conn.execute("SELECT i, q FROM potentiostat ORDER BY t").fetchall())
    conn.close()
    np.testing.assert_allclose(got[:, 0], truth["I"], rtol=1e-6, atol=1e-12)  # rebuilt current
    follow = cli("driver", "eclab", str(name), "--follow", check=False)
    assert follow.returncode == 2 and "--follow reads text exports (.mpt)" in follow.stderr


@needs_files
@pytest.mark.slow
def test_follow_waits_for_ec_lab_and_publishes_its_last_unterminated_row(tmp_path, processes):
    """A scientist starts the driver first: it waited for nothing and exited 2 ("no such
    file", "the header is not complete yet"). Now it waits for the file and its whole header;
    and the last row of a finished export, which EC-Lab ends without a newline, is published
    once it has sat unchanged for --settle s (2549 of 2550 rows reached the run before)."""
    src = ECLAB / "yadg_gcpl.issue_149.mpt"
    data = src.read_bytes().rstrip(b"\r\n")  # as EC-Lab leaves a finished file
    live = tmp_path / "cell7_C01.mpt"
    args = [str(live), "--follow", "--poll", "0.05", "--settle", "1"]
    run, driver = _start(tmp_path, processes, args, 1.0)
    # it says so once the monitor subscribed (or after 10 s without): a monitor slow to start
    # under load saw the file whole before then, and the driver had nothing to wait for
    wait_for(lambda: "waiting for it" in driver.output(), 30, what="the driver waiting")
    assert driver.p.poll() is None, driver.output()  # waiting, not refused
    header_end = data.index(b"mode\t")  # the column line is the header's last
    live.write_bytes(data[:header_end])  # EC-Lab has begun the header
    time.sleep(0.5)
    assert driver.p.poll() is None, driver.output()
    with open(live, "ab") as f:
        f.write(data[header_end:])
    _, truth = read_all(src)
    wait_for(lambda: _rows(run) == len(truth["t"]), 30, what="every row, the last one too")
    assert driver.stop(signal.SIGINT) == 0
    with operando.open_run(run) as r:
        np.testing.assert_allclose(r.potentiostat()["Ewe"], truth["Ewe"])
    assert "waiting for it" in driver.output()


def test_column_spellings_ec_lab_writes_are_read():
    """EC-Lab 11.50's OCV export names its potential <Ewe/V>: it was refused (no column for
    ['Ewe'])."""
    text = (
        b"EC-Lab ASCII FILE\nNb header lines : 3\nmode\ttime/s\t<Ewe/V>\t<I/mA>\n"
        b"3\t0.0\t3,25\t0\n3\t60.0\t3,26\t0\n"
    )
    reader = MptReader("ocv.mpt")
    rows = reader.feed(text)
    np.testing.assert_allclose(rows["Ewe"], [3.25, 3.26])
    assert reader.header is not None
    assert current_sampling(reader.header.names) == "interval_average"


@needs_files
@pytest.mark.slow
def test_another_experiments_stream_is_refused_not_taken_for_a_restart(tmp_path, processes):
    """A monitor on the shipped example's ports while another experiment's EC-Lab driver
    publishes there recorded that stream as a source_restarted. Now each series says who it is
    (driver, host, experiment): a stream for another experiment is recorded but refused (no
    rows, nothing lost, an alarm), and this experiment's own driver is taken as usual."""
    name = ECLAB / "yadg_cp.mpt"
    run, stranger = _start(
        tmp_path, processes, [str(name), "--speed", "0", "--experiment", "beamtime-of-others"], 1.0
    )
    assert stranger.p.wait(60) == 0, stranger.output()
    cfg = load_config(tmp_path / "experiment.json")
    wait_for(lambda: "stranger_refused" in _kinds(run), 30, what="the stranger refused")
    assert _rows(run) == 0
    ours = processes(
        "driver",
        "eclab",
        str(name),
        "--speed",
        "0",
        "--experiment",
        cfg.name,
        *driver_endpoints(cfg, "potentiostat"),
        log=tmp_path / "ours.log",
    )
    assert ours.p.wait(60) == 0, ours.output()
    _, truth = read_all(name)
    wait_for(lambda: _rows(run) == len(truth["t"]), 30, what="our own rows")
    s = json.loads(cli("inspect", str(run), "--json").stdout)
    pstat = s["sources"]["potentiostat"]
    assert pstat["stranger_messages"] > 0 and pstat["lost"] == 0 and pstat["restarts"] == 0
    with operando.open_run(run) as r:
        events = r.events()
    (why,) = [json.loads(d)["why"] for d in events.query("kind == 'stranger_refused'")["detail"]]
    assert "beamtime-of-others" in why and cfg.name in why
    alarms = [json.loads(d)["category"] for d in events.query("kind == 'alarm'")["detail"]]
    assert alarms.count("stranger") == 1  # (and a SOC calibration one: a discharge from 0)


@needs_files
@pytest.mark.slow
def test_a_restarted_monitor_keeps_the_stranger_out_and_its_own_source_on(tmp_path, processes):
    """The newest session on the link was a refused stranger's when the monitor restarted:
    the link still continues its own source's session, the stranger stays refused, and the
    counts go on from where they were (before, the stranger's session became the link's)."""
    name = ECLAB / "yadg_cp.mpt"
    cfg = localize(load_config(preset_path("eclab-potentiostat")))
    path = tmp_path / "experiment.json"
    path.write_bytes(msgspec.json.encode(cfg))
    run = tmp_path / "run"

    def monitor(log: str):
        args = ("monitor", "--config", str(path), "--run-dir", str(run))
        return processes(*args, log=tmp_path / log)

    def driver(experiment: str, log: str):
        return processes(
            "driver", "eclab", str(name), "--speed", "0", "--experiment", experiment,
            *driver_endpoints(cfg, "potentiostat"), log=tmp_path / log,
        )  # fmt: skip

    first = monitor("mon1.log")
    ours = driver(cfg.name, "ours.log")
    assert ours.p.wait(60) == 0, ours.output()
    _, truth = read_all(name)
    wait_for(lambda: _rows(run) == len(truth["t"]), 30, what="our own rows")
    stranger = driver("beamtime-of-others", "stranger.log")
    assert stranger.p.wait(60) == 0, stranger.output()
    wait_for(lambda: "stranger_refused" in _kinds(run), 30, what="the stranger refused")
    wait_for(
        lambda: inspect_json(run)["sources"]["potentiostat"]["stranger_messages"] >= 3,
        30,
        what="the stranger's series recorded",
    )
    assert first.stop() == 0
    recorded = inspect_json(run)["sources"]["potentiostat"]
    conn = open_readonly(run)
    try:
        first_message = "SELECT session FROM raw WHERE link = 'potentiostat' ORDER BY id LIMIT 1"
        (own,) = conn.execute(first_message).fetchone()
        (own_messages,) = conn.execute(
            "SELECT count(*) FROM raw WHERE session = ? AND seq IS NOT NULL", (own,)
        ).fetchone()
    finally:
        conn.close()

    monitor("mon2.log")

    def status():
        proc = cli("status", "--run-dir", str(run), "--json", "--timeout", "1", check=False)
        return json.loads(proc.stdout)["sources"]["potentiostat"] if proc.returncode == 0 else None

    pstat = wait_for(status, 30, what="the restarted monitor's status")
    assert pstat["session"] == own
    assert pstat["stranger_messages"] == recorded["stranger_messages"] > 0
    assert pstat["messages"] == own_messages
    assert pstat["restarts"] == 0 and pstat["lost"] == 0


@needs_files
@pytest.mark.slow
def test_a_damaged_row_is_refused_to_the_run_and_the_rest_recorded(tmp_path, processes):
    """One unreadable row (a disk hiccup, an editor) stopped the driver with the rest of the
    file unpublished. Now that row is left out and refused to the run with its line number:
    counted by inspect, every other row recorded."""
    text = (ECLAB / "yadg_cp.mpt").read_bytes().split(b"\n")
    n_header = int(text[1].decode("latin-1").split(":")[1])
    damaged = n_header + 5  # 0-based index of a data line; line numbers count from 1
    names = text[n_header - 1].split(b"\t")
    fields = text[damaged].split(b"\t")
    fields[names.index(b"<Ewe>/V")] = b"#VALUE!"  # no number
    text[damaged] = b"\t".join(fields)
    path = tmp_path / "damaged.mpt"
    path.write_bytes(b"\n".join(text))
    run, driver = _start(tmp_path, processes, [str(path), "--speed", "0"], 1.0)
    assert driver.p.wait(60) == 0, driver.output()
    _, truth = read_all(ECLAB / "yadg_cp.mpt")
    wait_for(lambda: _rows(run) == len(truth["t"]) - 1, 30, what="every other row")
    wait_for(
        lambda: inspect_json(run)["sources"]["potentiostat"]["refused"] == 1, 30, what="refusal"
    )
    with operando.open_run(run) as r:
        events = r.events()
    (detail,) = [json.loads(d) for d in events.query("kind == 'driver_refused'")["detail"]]
    assert detail["what"] == f"damaged.mpt line {damaged + 1}", detail
    assert "#VALUE!" in detail["why"]


def _kinds(run: Path) -> set[str]:
    try:
        with operando.open_run(run) as r:
            return set(r.events()["kind"])
    except operando.store.StoreError:
        return set()


def test_driver_refuses_what_it_cannot_read_with_the_reason(tmp_path):
    missing = cli("driver", "eclab", str(tmp_path / "none.mpt"), check=False)
    assert missing.returncode == 2 and "none.mpt: no such file" in missing.stderr
    other = tmp_path / "scan.dat"
    other.write_text("# energy TEY\n530 1\n")
    wrong = cli("driver", "eclab", str(other), check=False)
    assert wrong.returncode == 2 and "scan.dat: line 1 is not 'EC-Lab ASCII FILE'" in wrong.stderr


@needs_files
@pytest.mark.slow
def test_half_cycles_through_the_monitor_match_ec_lab_and_survive_reprocess(tmp_path, processes):
    """The GCPL file replayed through a real monitor: its half-cycles (recorded live as they
    close, the last one when the monitor stops) carry EC-Lab's own per-half-cycle charge
    within 0.1 %, ``inspect`` shows the cycles, and reprocess derives the same table."""
    name = ECLAB / "yadg_gcpl.issue_149.mpr"
    run, driver = _start(tmp_path, processes, [str(name), "--speed", "0"], 1.0)
    assert driver.p.wait(60) == 0, driver.output()
    text = (ECLAB / "yadg_gcpl.issue_149.mpt").read_text("latin-1")
    header_lines = int(re.search(r"Nb header lines : (\d+)", text).group(1))
    ref = pd.read_csv(io.StringIO(text.replace(",", ".")), sep="\t", skiprows=header_lines - 1)
    wait_for(lambda: store_count(run, "SELECT count(*) FROM half_cycles") == 7, 30, what="7 closed")
    with operando.open_run(run) as r:
        live = r.half_cycles()
    assert live["complete"].all()
    per_half = ref.groupby("half cycle").agg(
        c=("Q charge/mA.h", "max"), d=("Q discharge/mA.h", "max")
    )
    expected = np.where(live["direction"] == "charge", per_half["c"][:7], per_half["d"][:7])
    np.testing.assert_allclose(live["capacity_mAh"], expected, rtol=1e-3)
    shown = cli("inspect", str(run)).stdout
    assert "cycles (from the charge passed): 3 complete of 4, 7 half-cycles" in shown, shown
    assert driver.monitor.stop() == 0, driver.monitor.output()
    cli("reprocess", str(run), timeout=120)
    with operando.open_run(run) as r:
        again = r.half_cycles()
    # reprocess reaches the end of the record: the last discharge is there, as incomplete
    assert len(again) == 8 and not again["complete"].iloc[-1]
    pd.testing.assert_frame_equal(again.iloc[:7], live)
    # the dashboard's Cycling tab draws them: each cycle's charge and discharge as EC-Lab
    # counted them, a dQ/dV curve for each of the newest six half-cycles
    view = RunView(run)
    try:
        assert view.refresh()
        plots = CyclingPlots()
        plots.show(view.snapshot)
    finally:
        view.close()
    charge, discharge = (source.data for source in plots.plots["capacity"].sources)
    by_cycle = again.pivot_table("capacity_mAh", "cycle", "direction", aggfunc="sum")
    np.testing.assert_allclose(charge["y"], by_cycle["charge"], rtol=1e-9)
    np.testing.assert_allclose(discharge["y"], by_cycle["discharge"], rtol=1e-9)
    assert list(charge["fill"]) == [1.0, 1.0, 1.0, 0.0]  # the last cycle did not close
    curves = plots.plots["dqdv"].figure.legend[0].items
    assert [item.label.value for item in curves][-2:] == ["charge 4", "discharge 4 (open)"]
