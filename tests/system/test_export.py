"""Exports of recorded demo runs: NeXus read back with nexusformat, event-model documents
validated against bluesky's schemas, both checked against the run store and the raw log."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import cli

import operando
from operando.export.documents import read_documents
from operando.protocol import decode
from operando.store import open_readonly, read_raw
from operando.store.reader import Run


def _store(run, sql):
    conn = open_readonly(run)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_nexus_holds_the_run_as_recorded_and_analysed(lfp_run, tmp_path):
    from nexusformat.nexus import nxload

    out = tmp_path / "lfp.nxs"
    cli("export", str(lfp_run), "--format", "nexus", "--out", str(out))
    root = nxload(str(out))
    entry = root.entry
    assert entry.nxclass == "NXentry" and root.attrs["default"] == "entry"
    ((rows,),) = _store(lfp_run, "SELECT count(*) FROM potentiostat")
    ec = entry.electrochemistry
    assert ec.nxclass == "NXdata" and ec.nxsignal.nxname == "Ewe" and len(ec.Ewe) == rows
    assert ec.nxaxes[0].nxname == "time" and ec.time.attrs["units"] == "s"
    fits = _store(
        lfp_run,
        "SELECT s.edge, a.channel, s.raw_id, a.valence, a.quality, a.notes FROM analysis a "
        "JOIN spectra s ON s.id = a.spectrum_id ORDER BY s.id",
    )
    assert fits, "the LFP demo fits Fe L spectra"
    for channel in ("TEY", "TFY"):
        mine = [f for f in fits if f[1] == channel]
        g = entry[f"Fe_L_{channel}"]
        assert g.nxclass == "NXdata" and g.nxsignal.nxname == "mu"
        assert [a.nxname for a in g.nxaxes] == ["spectrum", "energy"]
        assert g.mu.shape == (len(mine), len(g.energy))
        np.testing.assert_allclose(g.valence.nxvalue, [f[3] for f in mine])
        # each fit's verdict and its reasons beside its numbers
        assert list(g.fit_quality.nxvalue) == [f[4] for f in mine]
        assert set(g.fit_quality.nxvalue) <= {"good", "check", "poor"}
        assert list(g.fit_notes.nxvalue) == ["; ".join(json.loads(f[5])) for f in mine]
        # the signal is the recorded channel over the recorded I0, spectrum by spectrum
        msg = decode(read_raw(lfp_run, mine[-1][2]).frames)
        np.testing.assert_allclose(g.mu.nxvalue[-1], msg.arrays[channel] / msg.arrays["I0"])
        assert not g.partial.nxvalue.any() and np.isfinite(g.soc.nxvalue).all()
    assert entry.attrs["default"] in entry
    kinds = set(entry.events.kind.nxvalue)
    assert "series_start" in kinds
    assert json.loads(entry.configuration.data.nxvalue)["name"] == "peo-lfp-relaxation"
    # the electrochemistry derived from the rows: half-cycles, cycles, steps, dQ/dV
    ((halves,),) = _store(lfp_run, "SELECT count(*) FROM half_cycles")
    ((steps,),) = _store(lfp_run, "SELECT count(*) FROM current_steps")
    assert halves > 0 and steps > 0, "the LFP demo charges, discharges and rests"
    cyc = entry.cycling
    assert len(cyc.half_cycles.capacity_mAh) == halves
    assert cyc.half_cycles.capacity_mAh.attrs["units"] == "mA*h"
    assert len(cyc.current_steps.r_0_ohm) == steps
    assert cyc.current_steps.r_0_ohm_errors.attrs["units"] == "ohm"
    assert len(cyc.dqdv.dQdV) > 0


@pytest.mark.slow
def test_documents_are_valid_event_model_and_hold_every_spectrum(lirich_run, tmp_path):
    import event_model

    out = tmp_path / "lirich.jsonl"
    cli("export", str(lirich_run), "--format", "documents", "--out", str(out))
    docs = list(read_documents(out))
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    names = [n for n, _ in docs]
    assert names[0] == "start" and names[-1] == "stop" and names.count("start") == 1
    start, stop = docs[0][1], docs[-1][1]
    assert stop["run_start"] == start["uid"] and stop["exit_status"] == "success"
    descriptors = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    per_stream: dict[str, int] = {}
    for n, d in docs:
        if n == "event":
            per_stream[descriptors[d["descriptor"]]] = (
                per_stream.get(descriptors[d["descriptor"]], 0) + 1
            )
        elif n == "event_page":
            per_stream[descriptors[d["descriptor"]]] = per_stream.get(
                descriptors[d["descriptor"]], 0
            ) + len(d["seq_num"])
    assert stop["num_events"] == per_stream
    # the fits' verdicts travel with their numbers
    fitted = [
        d["data"]
        for n, d in docs
        if n == "event" and any(k.startswith("fit_quality_") for k in d["data"])
    ]
    assert fitted
    assert {d.get("fit_quality_TEY") for d in fitted} <= {"good", "check", "poor", None}
    assert all(isinstance(d.get("fit_notes_TEY", ""), str | None) for d in fitted)
    ((rows,),) = _store(lirich_run, "SELECT count(*) FROM potentiostat")
    assert per_stream.pop("electrochemistry") == rows
    for stream, table in (
        ("half_cycles", "half_cycles"),
        ("current_steps", "current_steps"),
        ("gitt", "gitt_pulses"),
        ("interruptions", "interruptions"),
    ):
        ((n,),) = _store(lirich_run, f"SELECT count(*) FROM {table}")
        assert per_stream.pop(stream, 0) == n
    ((logged,),) = _store(lirich_run, "SELECT count(*) FROM events")
    assert per_stream.pop("event_log") == logged  # the run's event log, an event an entry
    ((fitted,),) = _store(lirich_run, "SELECT count(*) FROM relaxation")
    assert per_stream.pop("relaxation", 0) == fitted  # each rest's fits (at the end: all)
    ((maps,),) = _store(lirich_run, "SELECT count(*) FROM rixs")
    assert per_stream.pop("map_reductions") == maps > 0  # each RIXS map's reduction
    by_kind = dict(_store(lirich_run, "SELECT kind, count(*) FROM spectra GROUP BY kind"))
    rixs = sum(n for s, n in per_stream.items() if s.startswith("rixs_"))
    assert rixs == by_kind["rixs_rows"] > 0
    assert sum(per_stream.values()) - rixs == by_kind["xas_scan"]
    # the same documents as a MessagePack stream
    packed = tmp_path / "lirich.msgpack"
    cli(
        "export",
        str(lirich_run),
        "--format",
        "documents",
        "--serializer",
        "msgpack",
        "--out",
        str(packed),
    )
    again = list(read_documents(packed))
    assert [n for n, _ in again] == names
    assert [d.get("data") for _, d in again] == [d.get("data") for _, d in docs]
    # the same run gives the same documents, uids too (a consumer de-duplicates by them):
    # every uid derives from the run's own, which a copied run directory keeps
    assert again == docs
    uids = [u for _, d in docs for u in (d["uid"] if isinstance(d["uid"], list) else [d["uid"]])]
    assert len(uids) == len(set(uids))
    with operando.open_run(lirich_run) as run:
        assert start["uid"] == run.uid
    copy = tmp_path / "copy"
    shutil.copytree(lirich_run, copy)
    copied = tmp_path / "copy.jsonl"
    cli("export", str(copy), "--format", "documents", "--out", str(copied))
    moved = list(read_documents(copied))
    assert moved[0][1].pop("operando_run") == "copy"  # the directory's name, as it is now
    assert moved[1:] == docs[1:] and moved[0][1] == {
        k: v for k, v in docs[0][1].items() if k != "operando_run"
    }


def test_export_says_what_is_not_a_run(tmp_path):
    out = cli("export", str(tmp_path), "--format", "nexus", check=False)
    assert out.returncode == 2 and "no run store (run.sqlite)" in out.stderr


@pytest.fixture
def tiled_server(tmp_path):
    """A local Tiled server with a writable catalog, on 127.0.0.1: its URL."""
    from conftest import TiledServer

    server = TiledServer(tmp_path / "tiled")
    server.start()
    yield server.url
    server.kill()


@pytest.mark.slow
def test_tiled_holds_the_run(lirich_run, tiled_server, tmp_path):
    """export --format tiled writes the layout a live run gets (operando publish --tiled):
    equal to the documents export and to the NeXus export; exporting again writes nothing
    twice; a wrong key is one line."""
    from test_publish import assert_tiled_equals_nexus, assert_tiled_holds

    args = ["export", str(lirich_run), "--format", "tiled", "--uri", tiled_server]
    out = cli(*args, "--api-key", "secret")
    with Run(lirich_run) as run:
        uid = run.uid
    assert f"{tiled_server}/{uid}" in out.stdout
    events = assert_tiled_holds(tiled_server, lirich_run, tmp_path)
    assert events > 1000
    assert_tiled_equals_nexus(tiled_server, lirich_run, tmp_path)
    cli(*args, "--api-key", "secret")  # again: every row is there already
    assert assert_tiled_holds(tiled_server, lirich_run, tmp_path) == events
    wrong = cli(*args, "--api-key", "wrong", check=False)
    said = wrong.stderr.strip()  # (the progress bar ends its line first)
    assert wrong.returncode == 2 and "\n" not in said and said.startswith("operando: error:")
    assert "Invalid API key" in said, said
