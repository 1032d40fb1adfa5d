"""The dashboard's data side: what it reads from a recorded run, and the plots built from it.

Runs recorded by the real demo (monitor + simulators); the truths are the run store itself and
the simulator's models (LFP bulk tau 600 s). The browser side is in test_dashboard_browser.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import pytest
from conftest import cli, record_demo
from operando.dashboards import cycleplots, plots
from operando.dashboards.hours import HoursAxis
from operando.dashboards.live import (
    ATTENTION,
    DashboardOptions,
    Session,
    beam_text,
    damage_counts,
    damage_html,
    events_frame,
    glance_html,
    spot_text,
)
from operando.dashboards.pictures import draw
from operando.dashboards.spectraplots import SpectraPlots
from operando.dashboards.timeplots import TimePlots
from operando.dashboards.view import CellTrace, RunView, StateFeed

from operando.alarms import Alarms
from operando.protocol import decode
from operando.store import RunStore, open_readonly, read_raw


@pytest.fixture(scope="module")
def lfp_view(lfp_run):
    view = RunView(lfp_run)
    assert view.refresh()
    yield view
    view.close()


def _count(run: Path, sql: str) -> int:
    conn = open_readonly(run)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
def test_view_holds_what_the_store_holds(lfp_run, lfp_view):
    s = lfp_view.snapshot
    assert len(s.spectra) == _count(lfp_run, "SELECT count(*) FROM alignment")
    assert len(s.fits) == _count(lfp_run, "SELECT count(*) FROM analysis")
    assert len(s.cell) == _count(lfp_run, "SELECT count(*) FROM potentiostat")
    assert len(s.dose) == _count(lfp_run, "SELECT count(*) FROM dose")
    assert s.event_counts == dict(
        open_readonly(lfp_run).execute("SELECT kind, count(*) FROM events GROUP BY kind")
    )
    # the SOC trace drawn is the SOC the alignment gave each spectrum
    mid = 0.5 * (s.spectra["t_start"] + s.spectra["t_end"])
    trace = np.interp(mid, s.cell["t"], s.cell["soc"])
    assert np.max(np.abs(trace - s.spectra["soc"])) < 0.01
    # every spot the spectrometer announced, measured or not, where it said it is
    announced = json.loads(
        open_readonly(lfp_run)
        .execute("SELECT detail FROM events WHERE kind = 'series_start' AND link = 'spectrometer'")
        .fetchone()[0]
    )["metadata"]["spots"]
    assert {k: [x, y] for k, x, y in s.spots.itertuples(index=False)} == announced
    assert set(s.dose["spot"]) < set(announced)  # the run leaves fresh spots
    # nothing new: no new picture
    version = s.version
    assert not lfp_view.refresh()
    assert lfp_view.snapshot.version == version


@pytest.mark.slow
def test_latest_spectrum_model_is_the_recorded_fit(lfp_run, lfp_view):
    latest = lfp_view.snapshot.latest
    assert latest is not None and latest.edge == "Fe-L"
    conn = open_readonly(lfp_run)
    stored = dict(
        conn.execute(
            "SELECT channel, quality FROM analysis WHERE spectrum_id = ?", (latest.spectrum_id,)
        ).fetchall()
    )
    assert {c: q for c, (q, _) in latest.quality.items()} == stored
    assert set(stored.values()) <= {"good", "check", "poor"}
    for channel, c in latest.channels.items():
        (doc,) = conn.execute(
            "SELECT doc FROM analysis WHERE spectrum_id = ? AND channel = ?",
            (latest.spectrum_id, channel),
        ).fetchone()
        fit = json.loads(doc)
        inside = np.isfinite(c["model"])
        lo, hi = fit["fit_range"]
        assert inside.sum() == np.count_nonzero((c["energy"] >= lo) & (c["energy"] <= hi))
        # the residual drawn has the scatter the fit reported (chi2 ~ 1 on Poisson counts)
        r = c["residual"][inside]
        y = c["data"][inside]
        assert np.sqrt(np.mean(r**2)) < 0.05 * np.ptp(y), channel
    conn.close()


@pytest.mark.slow
def test_relaxation_panel_shows_the_fitted_rest(lfp_view):
    rel = lfp_view.snapshot.relaxation
    assert rel is not None
    tfy = rel["channels"]["Fe-L TFY"]
    assert tfy["resolved"] and tfy["tau_s"] == pytest.approx(600.0, rel=0.10)
    # the drawn curve goes through the drawn points
    fit_at_points = np.interp(tfy["t"], tfy["fit_t"], tfy["fit_v"])
    assert np.sqrt(np.mean((fit_at_points - tfy["v"]) ** 2)) < 0.1 * np.ptp(tfy["v"])
    assert "Ewe" in rel["channels"]


@pytest.mark.slow
def test_heatmap_holds_edge_step_normalised_spectra(lfp_view):
    maps = lfp_view.snapshot.heatmaps
    # charge and discharge apart: at one SOC they differ (hysteresis), drawn on top of each
    # other they hid it
    tfy = {direction for edge, channel, direction in maps if (edge, channel) == ("Fe-L", "TFY")}
    assert "charge" in tfy and len(tfy) >= 2, sorted(maps)
    for direction in tfy:
        soc, grid, z = maps[("Fe-L", "TFY", direction)]
        assert np.all(np.diff(soc) >= 0) and z.shape == (len(soc), len(grid))
        post = grid > grid.max() - 5
        assert np.nanmedian(z[:, post]) == pytest.approx(1.0, abs=0.15)
    with_current = [
        (sid, doc["I"]) for sid, doc in lfp_view.spectra.items() if doc.get("I") is not None
    ]
    assert {lfp_view._direction(sid) for sid, i in with_current if i > 1e-3} == {"charge"}


@pytest.mark.slow
def test_rixs_map_fills_from_the_recorded_rows(lirich_run):
    view = RunView(lirich_run)
    view.refresh()
    m = view.snapshot.rixs_latest
    assert m is not None and m["rows"] >= 2
    conn = open_readonly(lirich_run)
    (rows,) = conn.execute("SELECT rows FROM rixs WHERE map_id = ?", (m["map_id"],)).fetchone()
    assert m["rows"] == rows
    assert len(view.snapshot.rixs_maps) == _count(lirich_run, "SELECT count(*) FROM rixs")
    view.close()


@pytest.mark.slow
def test_every_plot_renders_with_units(lfp_view):
    hv.extension("bokeh")
    s = lfp_view.snapshot
    time = TimePlots(HoursAxis(None))
    assert time.show_cell(s.cell, s.cell_revision) == dict.fromkeys(("Ewe", "I", "soc"), "replaced")
    assert time.figures["Ewe"].yaxis[0].axis_label == "Ewe (V)"
    assert time.figures["I"].yaxis[0].axis_label == "I (mA)"
    time.show_marks(s.rests, s.spectra, s.triggers)
    assert len(time.windows.source.data["x0"]) == (s.spectra["kind"] == "xas_scan").sum() > 0
    assert time.show_fractions(s.fits, "Fe-L") == {"TEY": "replaced", "TFY": "replaced"}
    assert time.fractions["TFY"].pane.object.title.text == "Fe-L fractions, bulk (TFY)"
    spectra = SpectraPlots()
    spectra.show(s.latest, s.fits, s.heatmaps)
    fig = spectra.latest.pane.object
    assert fig.xaxis[0].axis_label == "photon energy (eV)"
    assert fig.title.text.startswith(f"spectrum {s.latest.spectrum_id} (Fe-L, SOC ")
    assert sum(len(t.source.data["soc"]) for t in spectra.valence.tables.values()) == len(s.fits)
    heat = spectra.heatmaps[("Fe-L", "TEY", "charge")]
    soc, grid, _ = s.heatmaps[("Fe-L", "TEY", "charge")]
    assert len(heat.source.data["mu"]) == len(np.unique(soc)) * len(grid)
    assert not heat.show(s.heatmaps[("Fe-L", "TEY", "charge")])  # the same: nothing sent
    bars = hv.render(plots.dose_bars(s.dose, 5e8, s.spots))
    assert bars.yaxis[0].axis_label == "dose (MGy)"
    rel = hv.render(plots.relaxation_plot(s.relaxation, "valence"))
    assert "tau" in rel.title.text and rel.xaxis[0].axis_label.endswith("(s)")
    for element in (
        plots.spot_map(s.dose, s.spots),
        plots.rixs_map(None),
        plots.rixs_ratio(s.rixs_maps),
        plots.relaxation_plot(None, "Ewe"),
    ):
        hv.render(element)


def test_fresh_spots_show_at_zero_dose_beside_the_used_ones():
    """The operator must see which spots are left: every spot known is drawn, the ones never
    measured at 0 dose, after the used ones in the order they were used."""
    dose = pd.DataFrame(
        {
            "spot": ["B1", "B1", "A1"],
            "total_Gy": [1e8, 2e8, 5e7],
            "x_mm": [0.0, 0.0, None],  # a scan that did not say where it was
            "y_mm": [0.5, 0.5, None],
        }
    )
    grid = pd.DataFrame({"spot": ["A1", "A2", "B1"], "x_mm": [0.0, 0.5, 0.0]})
    grid["y_mm"] = [0.0, 0.0, 0.5]
    bars = plots.dose_bars(dose, 5e8, grid).get(0).data
    assert list(bars["spot"]) == ["B1", "A1", "A2"]
    assert list(bars["dose"]) == [200.0, 50.0, 0.0]
    points = plots.spot_map(dose, grid).get(0).data.set_index("spot")
    assert points.loc["A1", ["x_mm", "y_mm"]].tolist() == [0.0, 0.0]  # from the grid
    assert points.loc["A2", "dose"] == 0.0 and len(points) == 3
    assert list(plots.dose_bars(dose, 5e8).get(0).data["spot"]) == ["B1", "A1"]  # no grid
    assert len(plots.spot_map(pd.DataFrame(), grid).get(0).data) == 3  # nothing measured yet


def test_the_spot_map_names_every_spot_and_rings_the_one_under_the_beam():
    hv.extension("bokeh")
    dose = pd.DataFrame(
        {"spot": ["A1", "A1", "B1"], "scan_Gy": [1e8, 1e8, 5e7], "total_Gy": [1e8, 2e8, 5e7]}
    ).assign(x_mm=None, y_mm=None)  # the scans did not say where: the grid does
    grid = pd.DataFrame({"spot": ["A1", "A2", "B1"], "x_mm": [0.0, 0.5, 0.0]})
    grid["y_mm"] = [0.0, 0.0, 0.5]
    drawn = plots.spot_map(dose, grid, "B1")
    points, labels, beam = (drawn.get(k) for k in range(3))
    assert sorted(labels.data["spot"]) == ["A1", "A2", "B1"]
    assert list(beam.data["spot"]) == ["B1"] and points.opts["title"] == "spot map: beam on B1"
    hv.render(drawn)
    # the budget in scans: A1 has 300 MGy left at 100 MGy a scan, B1 9 of 50 MGy scans
    assert plots.scans_left_text(dose, 5e8, "A1") == "spot A1 200 of 500 MGy, 3 scans left"
    assert plots.scans_left_text(dose, 5e8, "B1").endswith("9 scans left")
    assert plots.scans_left_text(dose, 5e8, "A2") == "spot A2 fresh, budget 500 MGy"
    assert plots.scans_left_text(dose, 0.0, "A1") == ""


@pytest.mark.slow
def test_a_new_page_draws_an_edges_fractions_before_its_first_update(lfp_run, lfp_view):
    """A page drawn before its first update (seconds, on a busy server) showed empty
    fraction plots titled with no edge: the edge is now chosen when the page is built."""
    hv.extension("bokeh")
    session = Session(StateFeed(lfp_view, None), DashboardOptions(run_dir=lfp_run))
    assert session.edge.options == ["Fe-L"] and session.edge.value == "Fe-L"
    fits = lfp_view.snapshot.fits
    for channel, plot in session.time.fractions.items():
        assert plot.pane.object.title.text.startswith("Fe-L fractions")
        shown = plot.table.source.data["time"]
        assert len(shown) == (fits["channel"] == channel).sum() > 0


@pytest.mark.slow
def test_fractions_are_sent_again_only_when_the_chosen_edges_fits_change(lfp_run, lfp_view):
    """Both fraction plots were redrawn at every fit of any edge: a third of a redraw. Now a
    new fit of the chosen edge is appended, and the rest sends nothing."""
    hv.extension("bokeh")
    session = Session(StateFeed(lfp_view, None), DashboardOptions(run_dir=lfp_run))
    snap = lfp_view.snapshot
    same = {"TEY": "same", "TFY": "same"}
    figure = session.time.fractions["TEY"].pane.object
    assert session._send_fractions(snap) == same  # drawn when the page was made
    other = snap.fits.iloc[[-1]].assign(edge="Mn-L", spectrum_id=10**6)
    assert session._send_fractions(replace(snap, fits=pd.concat([snap.fits, other]))) == same
    newer = snap.fits.iloc[[-1]].assign(spectrum_id=10**6, t=snap.fits["t"].max() + 60)
    grown = pd.concat([snap.fits, newer])
    assert (
        session._send_fractions(replace(snap, fits=grown))[newer["channel"].iloc[0]] == "streamed"
    )
    refit = grown.copy()
    refit.loc[refit.index[0], "f:" + _species(refit)[0]] += 0.01
    assert "replaced" in session._send_fractions(replace(snap, fits=refit)).values()
    assert session.time.fractions["TEY"].pane.object is figure  # the same figure throughout
    session.edge.options = ["Fe-L", "Mn-L"]
    session.edge.value = "Mn-L"  # another edge: its own figure, titled with it
    assert session.time.fractions["TEY"].pane.object.title.text.startswith("Mn-L fractions")


def _species(fits: pd.DataFrame) -> list[str]:
    return [c[2:] for c in fits.columns if c.startswith("f:") and fits[c].notna().any()]


@pytest.mark.slow
def test_heatmaps_are_rebuilt_only_where_a_scan_joined(lfp_run):
    """A page re-sends a heatmap only when it is a new object: each spectrum re-sent all."""
    view = RunView(lfp_run)
    try:
        assert view.refresh()
        before = view.snapshot.heatmaps
        key = ("Fe-L", "TFY", "charge")
        buf = view.normalised[key]
        soc, energy, norm = buf[-1]
        buf.append((soc + 1e-3, energy, norm))  # as _normalise_new adds a scan
        view.heat_touched.add(key)
        after = view._heatmaps()
        assert after[key] is not before[key]
        assert len(after[key][0]) == min(len(before[key][0]) + 1, view.heatmap_spectra)
        assert all(after[k] is before[k] for k in before if k != key)
        # the same as built from scratch
        view.heat_touched.update(view.normalised)
        scratch = view._heatmaps()
        for k in after:
            for a, b in zip(after[k], scratch[k], strict=True):
                np.testing.assert_array_equal(a, b)
    finally:
        view.close()


def test_cell_trace_stays_bounded_and_keeps_recent_rows_whole():
    trace = CellTrace(capacity=1000)
    t = np.arange(100_000.0)
    for chunk in np.array_split(t, 97):
        trace.extend(np.column_stack([chunk, chunk, chunk, chunk, chunk]))
    assert len(trace.data) <= 1000
    assert trace.data[0, 0] == 0.0 and trace.data[-1, 0] == t[-1]
    assert np.all(np.diff(trace.data[:, 0]) > 0)
    tail = trace.data[-400:, 0]
    assert np.all(np.diff(tail) == 1.0)  # the newest rows at full resolution
    late = np.array([[50_000.5, 1, 1, 1, 1]])
    trace.extend(late)
    assert np.all(np.diff(trace.data[:, 0]) > 0)


def test_alarms_from_the_store_open_until_acknowledged(tmp_path):
    """Alarms come from the run's events, so every dashboard (and a restarted monitor) agrees."""
    store = RunStore(tmp_path)
    recorded: list[tuple[str, dict]] = []

    def event(kind, link, t, **detail):
        recorded.append((kind, detail))
        store.submit("event", (1, t, kind, link, json.dumps(detail), "monitor"))

    alarms = Alarms(event)
    # a suspicion is not an alarm, nor a verdict of electrochemistry; a damage verdict is
    alarms.on_event("damage_suspicion", None, {"spot": "A1", "test": "repeat", "p_value": 1e-6})
    verdict = {"spot": "A1", "edge": "Mn-L", "control_spot": "B1", "evidence": {}}
    alarms.on_event("damage_verdict", None, {**verdict, "verdict": "electrochemistry"})
    for why in ("Mn2+ +0.05 above the control spot", "Mn2+ +0.09 above the control spot"):
        alarms.on_event("damage_verdict", None, {**verdict, "verdict": "damage", "why": why})
    alarms.on_event(
        "gap_unrecoverable",
        "potentiostat",
        {"count": 2, "first": 8, "last": 9, "reason": "no longer held by the driver"},
    )
    alarms.on_event("series_start", "potentiostat", {})  # not an alarm
    store.flush()
    view = RunView(tmp_path)
    view.refresh()
    got = {a["category"]: a for a in view.snapshot.alarms}
    assert set(got) == {"damage", "gap"}
    assert got["damage"]["count"] == 2 and "+0.09" in got["damage"]["message"]
    assert "seq 8-9" in got["gap"]["message"]
    assert alarms.acknowledge(got["damage"]["id"])
    assert not alarms.acknowledge(got["damage"]["id"])  # only once
    store.flush()
    view.refresh()
    assert [a["category"] for a in view.snapshot.alarms] == ["gap"]
    # a restarted monitor rebuilds the same open alarms from the events
    again = Alarms(event)
    conn = open_readonly(tmp_path)
    again.restore(conn.execute("SELECT kind, detail FROM events ORDER BY id"))
    assert [a["category"] for a in again.open()] == ["gap"]
    assert again.raise_("spots", "none left", key="x")["id"] == 3  # ids continue
    conn.close()
    view.close()
    store.close()


def test_dashboard_refuses_a_network_address_without_authentication(tmp_path):
    proc = cli(
        "dashboard", "--run-dir", str(tmp_path), "--address", "0.0.0.0", timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "--address 0.0.0.0 exposes the dashboard" in proc.stderr
    assert "--password-file" in proc.stderr


def test_alarm_messages_are_finite_for_missing_fields():
    seen = []
    alarms = Alarms(lambda kind, link, t, **d: seen.append(d))
    alarms.on_event("disconnected", "spectrometer", {})
    assert seen[0]["message"] == "spectrometer silent for 0 s"
    alarms.on_event("spot_move_retry", None, {"spot": "A1", "target": "A2"})
    assert seen[1]["message"].startswith("scans still come from spent spot A1 after a move")
    # how far past its budget the stuck spot is, counting up on the same alarm
    alarms.on_event("spot_move_retry", None, {"spot": "A1", "target": "A2", "dose_Gy": 3.16e9})
    assert "spent spot A1 (3160 MGy so far) after a move to A2" in seen[2]["message"]
    assert seen[2]["count"] == 2


def test_the_header_says_where_the_beam_is_not_only_where_it_was_sent():
    """A stage that acks a move and stays put: the newest scans still come from the spent
    spot, and the header must say so beside the spot the orchestrator asked for."""
    spectra = pd.DataFrame({"spectrum_id": [1, 2, 3], "spot": ["A1", "A1", None]})
    assert spot_text("A2", spectra) == "A1 (latest scan; A2 requested)"
    assert spot_text("A1", spectra) == "A1"
    assert spot_text(None, spectra) == "A1"
    assert spot_text("A2", pd.DataFrame()) == "A2"  # no scan yet
    assert spot_text(None, pd.DataFrame({"spectrum_id": [1], "spot": [None]})) == "-"


@pytest.mark.slow
def test_the_header_gives_the_experiment_at_a_glance(lfp_view):
    """Elapsed time, Ewe, I, SOC, the beam's spot against its budget and the newest valence of
    each edge and channel with its fit's verdict, from the run alone (no monitor connected)."""
    s = lfp_view.snapshot
    text = glance_html(s)
    elapsed = s.cell["t"].iloc[-1] - s.cell["t"].iloc[0]
    assert f"{int(elapsed) // 3600}:{int(elapsed) % 3600 // 60:02d} h elapsed" in text
    assert f"Ewe {s.cell['Ewe'].iloc[-1]:.3f} V" in text and "SOC " in text and "I " in text
    newest = s.fits.sort_values("spectrum_id").groupby(["edge", "channel"]).tail(1)
    assert len(newest) >= 2  # TEY and TFY at least
    for _, f in newest.iterrows():
        assert f"{f['edge']} {f['channel']} {f['valence']:.2f} ± {f['valence_unc']:.2g}" in text
        assert f"({f['quality']})" in text


@pytest.mark.slow
def test_the_events_table_reads_as_text_not_json(lfp_view):
    s = lfp_view.snapshot
    table = events_frame(s)
    assert s.events and len(table) == len(s.events)
    assert not table["detail"].str.contains('{"', regex=False).any()  # no raw JSON
    assert not table["detail"].str.contains("<", regex=False).any()  # no markup
    newest = s.events[-1]
    assert table["kind"].iloc[0] == newest["kind"]  # newest first
    shown = [k for k in newest if k not in {"id", "time", "t", "kind", "link"}]
    assert all(f"{k}: " in table["detail"].iloc[0] for k in shown), (shown, table.iloc[0])
    attention = table["attention"] == "attention"
    assert set(table.loc[attention, "kind"]) <= ATTENTION
    assert not set(table.loc[~attention, "kind"]) & ATTENTION


def test_damage_suspicions_and_verdicts_are_told_apart(tmp_path):
    """A suspicion is a test's finding; only a verdict from a control spot is damage."""
    store = RunStore(tmp_path)
    suspicion = {
        "spectrum_id": 7,
        "spot": "A1",
        "edge": "Mn-L",
        "test": "dose_slope",
        "statistic": 5.0,
        "p_value": 1e-5,
        "dose_Gy": 6e6,
        "detail": {"scans": 4},
    }
    verdict = {
        "verdict": "damage",
        "spot": "A1",
        "edge": "Mn-L",
        "suspicion": suspicion,
        "suspect_spectrum": 9,
        "control_spot": "B1",
        "why": "Mn2+ +0.080 above the control spot (p 1.0e-06)",
        "evidence": {"p_value": 1e-6},
    }
    for i, (kind, d) in enumerate(
        [
            ("damage_suspicion", suspicion),
            ("damage_suspicion", suspicion),
            ("damage_verdict", verdict),
        ]
    ):
        store.submit("event", (i, 1.0 + i, kind, None, json.dumps(d), "ingest"))
    store.flush()
    view = RunView(tmp_path)
    view.refresh()
    snap = view.snapshot
    assert damage_counts(snap) == "1 confirmed, 2 suspected"
    page = damage_html(snap)
    assert page.count('data-status="suspicion"') == 2 and page.count('data-status="damage"') == 1
    assert "above the control spot" in page
    view.close()
    store.close()


@pytest.mark.slow
def test_a_ring_dump_shows_in_the_beam_trace_where_it_was(tmp_path):
    """na-mno2's ring dumps 2400-2700 s into the run (its spectrometer's realism.beam_losses,
    the truth): the beam trace marks the scan points measured then, and nothing else."""
    run = tmp_path / "run"
    record_demo(run, 40, "--preset", "na-mno2", timeout=200)
    t0 = json.loads((run / "demo.json").read_text())["t0_ns"] * 1e-9
    config = json.loads((run / "demo-config.json").read_text())
    losses = config["drivers"]["spectrometer"]["realism"]["beam_losses"]
    assert losses == [[2400.0, 2700.0]]
    view = RunView(run)
    try:
        view.refresh()
        s = view.snapshot
    finally:
        view.close()
    conn = open_readonly(run)
    try:
        scans = conn.execute("SELECT id, raw_id FROM spectra WHERE kind = 'xas_scan'").fetchall()
    finally:
        conn.close()
    expected = []
    for sid, raw_id in scans:
        t = np.asarray(decode(read_raw(run, raw_id).frames).arrays["point_t"])
        dark = np.zeros(len(t), bool)
        for a, b in losses:
            dark |= (t - t0 >= a) & (t - t0 < b)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], dark.astype(np.int8), [0]))))
        half = 0.5 * float(np.median(np.diff(t)))
        expected += [
            (sid, t[a] - half, t[b - 1] + half)
            for a, b in zip(edges[::2], edges[1::2], strict=True)
        ]
    assert len(s.beam) == len(scans) and len(expected) >= 2  # the dump cut at least two scans
    assert [sid for sid, *_ in s.beam_lost] == [sid for sid, *_ in expected]
    np.testing.assert_allclose(
        [x for _, *ab in s.beam_lost for x in ab], [x for _, *ab in expected for x in ab], atol=1e-6
    )
    assert f"beam lost {len(expected)} time(s)" in beam_text(s)
    time = TimePlots(HoursAxis(None))
    time.show_beam(s.beam, s.beam_lost)
    assert f"lost {len(expected)} time(s)" in time.beam.figure.title.text
    assert len(time.lost.data["x0"]) == len(expected)


def test_cycling_tab_shows_what_the_run_derived(lfp_run, lfp_view):
    """The Cycling tab's data are the run's own tables (Run), and every plot renders with its
    units, with data and with nothing yet."""
    import operando

    hv.extension("bokeh")
    s = lfp_view.snapshot
    with operando.open_run(lfp_run) as run:
        halves, cycles, steps = run.half_cycles(), run.cycles(), run.current_steps()
        placed = run.spectra_on_cycles()
    assert len(halves) > 0 and len(steps) > 0
    assert [h.index for h in s.half_cycles] == halves["idx"].tolist()
    np.testing.assert_allclose([h.capacity_mAh for h in s.half_cycles], halves["capacity_mAh"])
    assert len(s.cycles) == len(cycles)
    np.testing.assert_allclose(s.steps["r_0_ohm"], steps["r_0_ohm"])
    # every fit of a spectrum taken inside a half-cycle is placed on it
    inside = placed.dropna(subset=["half_cycle"])
    ids = ",".join(str(int(i)) for i in inside["spectrum_id"]) or "-1"
    fits_inside = _count(lfp_run, f"SELECT count(*) FROM analysis WHERE spectrum_id IN ({ids})")
    assert len(s.fits_on_cycles) == fits_inside > 0
    assert sorted(s.fits_on_cycles["capacity"].round(9).unique()) == sorted(
        inside.loc[inside["spectrum_id"].isin(set(s.fits["spectrum_id"])), "capacity_mAh"]
        .round(9)
        .unique()
    )
    fig, _ = draw(cycleplots.dqdv_picture(s.half_cycles))
    assert fig.xaxis[0].axis_label == "Ewe (V)" and fig.yaxis[0].axis_label == "dQ/dV (mAh/V)"
    # a curve per half-cycle shown, each holding that half-cycle's dQ/dV
    curves = [r.data_source.data for r in fig.renderers if r.glyph.__class__.__name__ == "Line"]
    shown = [h for h in s.half_cycles if h.dqdv_V][-6:]
    assert [len(c["dQdV"]) for c in curves] == [len(h.dqdv_mAh_V) for h in shown]
    q, _ = draw(cycleplots.valence_on_cycles_picture(s.fits_on_cycles, "capacity"))
    assert q.xaxis[0].axis_label == "capacity (mAh)"
    capacity, (charge, _) = draw(cycleplots.cycles_picture(s.cycles, "capacity"))
    assert capacity.yaxis[0].axis_label == "capacity (mAh)"
    np.testing.assert_allclose(charge.data["y"], s.cycles["charge_mAh"])
    r, _ = draw(cycleplots.resistance_picture(s.steps))
    assert r.yaxis[0].axis_label == "resistance (ohm)"
    for picture in (
        cycleplots.valence_on_cycles_picture(s.fits_on_cycles, "Ewe"),
        cycleplots.cycles_picture(s.cycles, "efficiency"),
        cycleplots.dqdv_picture([]),
        cycleplots.valence_on_cycles_picture(pd.DataFrame(), "Ewe"),
        cycleplots.cycles_picture(pd.DataFrame(), "capacity"),
        cycleplots.resistance_picture(pd.DataFrame()),
        cycleplots.gitt_picture(s.gitt),
        cycleplots.gitt_picture(pd.DataFrame()),
    ):
        draw(picture)
    pulses = pd.DataFrame(
        {"soc_after": [0.1, 0.2], "d_cm2_s": [1e-10, 2e-10], "ocv_after_V": [3.7, 3.8]}
    ).assign(notes=["", "rest not relaxed"])
    d, (points,) = draw(cycleplots.gitt_picture(pulses))
    assert d.yaxis[0].axis_label == "D (cm^2/s)" and "diffusion" in d.title.text
    assert list(points.data["fill"]) == [1.0, 0.0]  # the pulse whose rest had not relaxed: hollow
    # without D: the equilibrium points, each with its 1-sigma from its rest's relaxation
    no_d = pulses.drop(columns="d_cm2_s").assign(ocv_unc_V=[1e-3, 5e-3])
    ocv, (bars,) = draw(cycleplots.gitt_picture(no_d))
    assert ocv.yaxis[0].axis_label == "Ewe (V)"
    assert list(bars.data["hi"] - bars.data["lo"]) == pytest.approx([2e-3, 1e-2])
