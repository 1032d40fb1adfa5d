"""Beamline scan files: the readers on real measured files, and the driver through a monitor.

The files in ../shared/data/xas were measured at SOLEIL, the Australian Synchrotron and MAX IV
(a dead TFY channel, overlapping edges, processed and raw columns, NXxas, an HDF5 library, a
RIXS series); tests that need them skip with the reason when ../shared is absent.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    SHARED,
    cli,
    driver_endpoints,
    live_cell_experiment,
    start_live_cell,
    store_count,
    wait_for,
)
from operando.drivers.isolated_reader import IsolatedReader
from operando.drivers.scan_formats import RixsRow, Scan, read_scan_file

import operando
from operando.protocol import decode
from operando.scanfile import ScanFileError, read_column_text
from operando.store import open_readonly, read_raw

XAS = SHARED / "data" / "xas"
NICKELATE = XAS / "fabbris2023_nickelate_NiL_OK_cc0"
AUSYNC = XAS / "ausync_sxr_OK_mit"
needs_files = pytest.mark.skipif(
    not XAS.exists(), reason=f"{XAS} not found: the measured spectra live in ../shared"
)
# Australian Synchrotron SXR mda2ascii: 4 photon energy, 5 drain (TEY), 6 I0, 10 TFY, 12 PFY
SXR_COLUMNS = {"energy": "4", "TEY": "5", "I0": "6", "TFY": "10", "PFY": "12"}


@needs_files
def test_column_files_keep_every_column_under_our_names_or_theirs():
    (ni,) = read_scan_file(NICKELATE / "La4Ni3O10_pi_NiLedgeXAS.dat", "auto", {})
    assert isinstance(ni, Scan) and ni.edge == "Ni-L" and set(ni.channels) == {"TEY", "TFY"}
    raw = np.loadtxt(NICKELATE / "La4Ni3O10_pi_NiLedgeXAS.dat")
    np.testing.assert_array_equal(ni.energy, raw[:, 0])
    np.testing.assert_array_equal(ni.channels["TFY"], raw[:, 2])
    (ok,) = read_scan_file(AUSYNC / "sxr129598.asc", "auto", SXR_COLUMNS)
    raw = np.loadtxt(AUSYNC / "sxr129598.asc", comments="#")
    assert ok.edge == "O-K" and ok.complete is True and ok.start is not None
    assert ok.start.isoformat() == "2024-03-14T03:00:55.941426"
    np.testing.assert_array_equal(ok.energy, raw[:, 3])
    np.testing.assert_array_equal(ok.channels["TFY"], raw[:, 9])
    assert np.max(ok.channels["TFY"]) <= 3 < np.min(ok.channels["TEY"])  # dead: a few counts
    # unmapped columns keep mda2ascii's descriptions (or PVs): 18 columns, energy + 17
    assert len(ok.channels) == 17 and "I0 Chamber" in ok.channels


@needs_files
def test_hdf5_nxxas_and_spectra_library_become_scans():
    scans = read_scan_file(XAS / "pynxxas_NXxas_FeK_hardxray_mit" / "Fe_XDIFiles.h5", "auto", {})
    assert [s.metadata["entry"] for s in scans] == ["fe2o3", "fe_metal", "feo"]
    assert all(s.edge == "Fe-K" and {"mu", "I0", "itrans"} <= set(s.channels) for s in scans)
    assert len(scans[2].energy) == 412
    lib = read_scan_file(
        XAS / "flexpes_maxiv_CuO_OK_CuL_mit" / "library.h5",
        "auto",
        {"TEY": "b107a_em_03_ch1", "PFY": "xspress3mini_roi1_dtc"},
    )
    assert [(s.edge, sorted(s.channels)) for s in lib] == [
        ("O-K", ["PFY", "TEY"]),
        ("Cu-L", ["PFY", "TEY"]),
    ]


@needs_files
def test_rixs_rows_take_the_excitation_from_header_or_name():
    rixs = NICKELATE / "rixs_La4Ni3O10_pi"
    (row,) = read_scan_file(rixs / "La4Ni3O10_pi_852.5eV.dat", "rixs-columns", {})
    assert isinstance(row, RixsRow) and row.excitation == 852.5 and row.edge == "Ni-L"
    assert row.map_key == "La4Ni3O10_pi" and len(row.emission) == 723
    (late,) = read_scan_file(rixs / "La4Ni3O10_pi_870.6eV.dat", "rixs-columns", {})
    assert late.excitation == 870.645  # the header's '# Energy = 870.645 eV'


def damaged_library() -> bytes:
    """The MAX IV library with one byte overwritten: libhdf5 segfaults reading its attributes
    (found by bench/fuzz.py)."""
    data = bytearray((XAS / "flexpes_maxiv_CuO_OK_CuL_mit" / "library.h5").read_bytes())
    data[86593] = 39
    return bytes(data)


@needs_files
def test_a_file_that_crashes_the_reader_is_refused_and_the_next_is_read(tmp_path):
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(damaged_library())
    reader = IsolatedReader()
    try:
        with pytest.raises(ScanFileError, match=r"damaged.h5: the reader process died .* -11"):
            reader.read(damaged, "auto", {}, None)
        scans = reader.read(XAS / "flexpes_maxiv_CuO_OK_CuL_mit" / "library.h5", "auto", {}, None)
        assert len(scans) == 2  # a new worker, reading as before
    finally:
        reader.close()


def test_bad_scan_files_say_what_and_where(tmp_path):
    bad = tmp_path / "scan.dat"
    bad.write_text("# Energy TEY\n530 1\n531 oops\n")
    with pytest.raises(ScanFileError, match=r"scan.dat:3: not a row of numbers"):
        read_column_text(bad)
    ok = tmp_path / "ok.dat"
    ok.write_text("# Energy TEY\n530 1\n531 2\n")
    with pytest.raises(ScanFileError, match=r"no column 'TFY' for TFY"):
        read_scan_file(ok, "columns", {"TFY": "TFY"})
    h5 = tmp_path / "empty.h5"
    h5.write_bytes(b"not hdf5 at all")
    with pytest.raises(ScanFileError, match=r"empty.h5: not a readable HDF5 file"):
        read_scan_file(h5, "auto", {})
    out = cli("driver", "scan-files", str(tmp_path), "--column", "TEY", check=False)
    assert out.returncode == 2 and "--column 'TEY': expected OURS=THEIRS" in out.stderr
    out = cli("driver", "scan-files", str(tmp_path / "nowhere"), check=False)
    assert out.returncode == 2 and "nowhere: no such directory" in out.stderr


@needs_files
@pytest.mark.slow
def refusals(run) -> list[tuple[str, str, str]]:
    """(source, what, why) of every refusal the drivers sent the run."""
    try:
        with operando.open_run(run) as r:
            ev = r.events().query("kind == 'driver_refused'")
    except operando.store.StoreError:
        return []
    details = [json.loads(d) for d in ev["detail"]]
    return [(s, d["what"], d["why"]) for s, d in zip(ev["source"], details, strict=True)]


def _ids(run: Path, sql: str) -> list[tuple[int]]:
    conn = open_readonly(run)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_scan_files_through_the_monitor(tmp_path, processes):
    LOGS = ("mon.log", "pot.log", "sxr.log", "scans.log", "rixs.log")
    cfg, path = live_cell_experiment(tmp_path, "spectrometer", "scans", "rixs")
    run = tmp_path / "run"
    sxr_dir, xas_dir, rixs_dir = (tmp_path / d for d in ("sxr", "scans", "rixs"))
    for d in (sxr_dir, xas_dir, rixs_dir):
        d.mkdir()
    start_live_cell(processes, cfg, path, run, tmp_path)
    fast = ["--poll", "0.1", "--settle", "0.5"]
    # one beamline's mda2ascii files, mapped by column number
    sxr = processes(
        "driver",
        "scan-files",
        str(sxr_dir),
        "--pattern",
        "*.asc",
        *fast,
        *(f"--column={k}={v}" for k, v in SXR_COLUMNS.items()),
        "--spot",
        "A1",
        *driver_endpoints(cfg, "spectrometer"),
        log=tmp_path / "sxr.log",
    )
    # files that name their own columns, and HDF5: no mapping at all
    scans = processes(
        "driver",
        "scan-files",
        str(xas_dir),
        *fast,
        *driver_endpoints(cfg, "scans"),
        log=tmp_path / "scans.log",
    )
    processes(
        "driver",
        "scan-files",
        str(rixs_dir),
        "--format",
        "rixs-columns",
        *fast,
        *driver_endpoints(cfg, "rixs"),
        log=tmp_path / "rixs.log",
    )
    # scans are placed at their files' times: the cell's record must have begun
    wait_for(
        lambda: store_count(run, "SELECT count(*) FROM potentiostat") >= 2, 60, what="cell rows"
    )

    # an mda2ascii scan being written: the header says 350 of 701 points; it waits
    text = (AUSYNC / "sxr129598.asc").read_text()
    lines = text.splitlines(keepends=True)
    head = [ln for ln in lines if ln.startswith("#") or not ln.strip()]
    rows = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    growing = sxr_dir / "sxr129598.asc"
    growing.write_text("".join(head).replace("701 of 701", "350 of 701") + "".join(rows[:350]))
    time.sleep(1.5)  # three times the settle time
    assert store_count(run, "SELECT count(*) FROM spectra") == 0, sxr.output()
    growing.write_text(text)
    (sxr_dir / "broken.asc").write_text("# Energy TEY\n530 1\n531 oops\n")
    for f in ("La4Ni3O10_pi_NiLedgeXAS.dat", "La4Ni3O10_pi_OKedgeXAS.dat"):
        shutil.copy(NICKELATE / f, xas_dir)
    shutil.copy(XAS / "pynxxas_NXxas_FeK_hardxray_mit" / "Fe_XDIFiles.h5", xas_dir)
    shutil.copy(XAS / "flexpes_maxiv_CuO_OK_CuL_mit" / "library.h5", xas_dir)
    (xas_dir / "damaged.h5").write_bytes(damaged_library())  # crashes libhdf5
    rixs_files = sorted((NICKELATE / "rixs_La4Ni3O10_pi").glob("*.dat"))
    for f in rixs_files:
        shutil.copy(f, rixs_dir)
    n_xas = 1 + 2 + 3 + 2  # mda2ascii, two columns files, three NXentries, two library scans

    def seen() -> str:
        conn = open_readonly(run)
        try:
            rows = conn.execute(
                "SELECT s.scan_id, s.kind, a.partial FROM spectra s "
                "LEFT JOIN alignment a ON a.spectrum_id = s.id ORDER BY s.id"
            ).fetchall()
            cell = conn.execute("SELECT count(*), max(t) FROM potentiostat").fetchone()
        finally:
            conn.close()
        logs = "\n".join(f"--- {n}\n{(tmp_path / n).read_text()[-3000:]}" for n in LOGS)
        return f"spectra (scan_id, kind, partial): {rows}\ncell rows, last t: {cell}\n{logs}"

    wait_for(
        lambda: store_count(run, "SELECT count(*) FROM alignment") == n_xas + len(rixs_files),
        60,
        what="every scan and RIXS row aligned",
        show=seen,
    )
    conn = open_readonly(run)
    try:
        got = conn.execute(
            "SELECT s.scan_id, s.edge, s.raw_id, a.partial, a.soc FROM spectra s "
            "JOIN alignment a ON a.spectrum_id = s.id WHERE s.kind = 'xas_scan'"
        ).fetchall()
        maps = dict(conn.execute("SELECT map_id, rows FROM rixs").fetchall())
    finally:
        conn.close()
    edges = {scan_id: edge for scan_id, edge, *_ in got}
    assert edges["sxr129598"] == "O-K" and edges["La4Ni3O10_pi_NiLedgeXAS"] == "Ni-L"
    assert edges["Fe_XDIFiles:feo"] == "Fe-K" and edges["library:000003+000004"] == "Cu-L"
    # aligned against the live cell, not timed out
    assert all(partial == 0 and soc is not None for *_, partial, soc in got), got
    # nothing in the file is lost on the way: the recorded arrays are the file's columns
    raw_id = next(r for s, _, r, *_ in got if s == "sxr129598")
    msg = decode(read_raw(run, raw_id).frames)
    data = np.loadtxt(AUSYNC / "sxr129598.asc", comments="#")
    np.testing.assert_array_equal(msg.arrays["energy"], data[:, 3])
    np.testing.assert_array_equal(msg.arrays["I0 Chamber"], data[:, 13])
    assert msg.header.extra["time_source"] == "watched" and msg.header.spot.id == "A1"
    # 17 rows on one emission grid form one map; two rows on grids of their own, two more
    assert maps == {"La4Ni3O10_pi": 17, "La4Ni3O10_pi-2": 1, "La4Ni3O10_pi-3": 1}

    # an unreadable file is reported with file and line, and nothing else stops
    assert "broken.asc:3: not a row of numbers" in sxr.output()
    died = "damaged.h5: the reader process died reading it (exit code -11)"
    wait_for(lambda: died in scans.output(), 30, what="the damaged file refused")
    # and the run holds both refusals, per source, not only the drivers' logs
    wait_for(lambda: len(refusals(run)) == 2, 30, what="the refusals in the run")
    got = {(link, what): why for link, what, why in refusals(run)}
    assert "not a row of numbers" in got["spectrometer", "scan file broken.asc"]
    assert "the reader process died reading it" in got["scans", "scan file damaged.h5"]
    sources = json.loads(cli("inspect", str(run), "--json").stdout)["sources"]
    assert sources["spectrometer"]["refused"] == 1 and sources["scans"]["refused"] == 1

    # the dashboard draws the newest scan although no edge here has references (it said
    # "latest spectrum: none yet" beside the recorded scans)
    from operando.dashboards.view import RunView

    view = RunView(run)
    try:
        view.refresh()
        latest = view.snapshot.latest
        rixs = view.snapshot.rixs_latest
    finally:
        view.close()
    # ... and the newest RIXS map from the files, also a map of one row (it said "waiting")
    assert rixs is not None and rixs["rows"] == rixs["rows_total"] >= 1, rixs
    assert np.isfinite(rixs["counts"]).any()
    assert latest is not None and latest.channels, "the newest scan is drawn"
    newest = max(sid for (sid,) in _ids(run, "SELECT id FROM spectra WHERE kind = 'xas_scan'"))
    assert latest.spectrum_id == newest
    assert {q for q, _ in latest.quality.values()} == {"not fitted"}
    for c in latest.channels.values():
        assert np.isfinite(c["data"]).any() and not np.isfinite(c["model"]).any()

    # a scan file rewritten after it was published comes again as a new revision
    (xas_dir / "La4Ni3O10_pi_OKedgeXAS.dat").write_text(
        (NICKELATE / "La4Ni3O10_pi_OKedgeXAS.dat").read_text() + "\n"
    )
    wait_for(
        lambda: store_count(
            run, "SELECT count(*) FROM spectra WHERE scan_id = 'La4Ni3O10_pi_OKedgeXAS~2'"
        ),
        30,
        what="the second revision",
    )

    # and out again: NeXus and event-model documents of the same run, without special cases
    import event_model
    import h5py

    from operando.export.documents import read_documents

    nxs = tmp_path / "scans.nxs"
    cli("export", str(run), "--format", "nexus", "--out", str(nxs))
    with h5py.File(nxs, "r") as f:
        e = f["entry"]
        assert e["Ni_L_TFY/mu"].shape == (1, 174)
        # O K TEY from two beamlines on two grids (and a revision): energy per spectrum
        assert e["O_K_TEY/mu"].shape[0] == 3 and e["O_K_TEY/energy"].ndim == 2
        # the library's detectors were not mapped: they keep their names
        assert e["Fe_K_mu/mu"].shape == (3, 412) and "Cu_L_xspress3mini_roi1_dtc" in e
        assert e["rixs_La4Ni3O10_pi/counts"].shape == (17, 723)
        assert not e["O_K_TEY/partial"][()].any()
    docs = tmp_path / "scans.jsonl"
    cli("export", str(run), "--format", "documents", "--out", str(docs))
    for name, doc in read_documents(docs):
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
