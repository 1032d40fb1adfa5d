"""The live dashboard: a Panel server beside the monitor (``operando dashboard``).

One process serves any number of browser tabs. A ``StateFeed`` thread keeps one ``RunView`` of
the run store current; each tab redraws from the view's newest snapshot at a bounded rate
(``render_hz``) and as soon as the view has read something new, redrawing only the parts
that changed. The Electrochemistry & valence and Spectra tabs are Bokeh figures fed with what
is new (``timeplots``, ``spectraplots``: decision 0016), the Cycling tab Bokeh figures kept
between redraws (``cycleplots``); the other tabs are HoloViews plots redrawn when shown.
Long time series are downsampled for display (min-max + LTTB over the whole trace) while the
full data stay in the store. Nothing a browser does can slow ingest: the monitor only ever
sees a SUB socket that may fall behind.

Binds 127.0.0.1 unless told otherwise; on any other address it refuses to start without
authentication (Panel's basic auth: a password file). Controls (acquire, hold, resume,
acknowledge) appear only when started with the monitor's command endpoint.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import math
import secrets
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import holoviews as hv
import pandas as pd
import panel as pn
from holoviews.streams import Pipe
from operando.dashboards import plots
from operando.dashboards.cycleplots import CyclingPlots
from operando.dashboards.hours import HoursAxis
from operando.dashboards.remote import RemoteError, open_remote
from operando.dashboards.spectraplots import SpectraPlots
from operando.dashboards.timeplots import TimePlots
from operando.dashboards.view import RunView, Snapshot, StateFeed

from operando.clock import utc_text
from operando.events import EventKind
from operando.monitor import command_monitor
from operando.protocol import MODE_NAMES
from operando.store.summary import published_text, published_to
from operando.transport import CommandError

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 2.0  # a slow redraw delays the next one by twice its time, at most this
MAX_ALARMS_SHOWN = 8  # newest first; the rest are counted


@dataclass
class DashboardOptions:
    run_dir: Path | None  # the run store here (None: a run in Tiled)
    tiled: str | None = None  # a Tiled server's URI, with ``run``: a run followed there
    run: str | None = None  # its uid, or its run directory's name
    api_key: str | None = None
    monitor: str | None = None  # the monitor's state endpoint
    command: str | None = None  # its command endpoint: enables the controls
    address: str = "127.0.0.1"
    port: int = 5006
    # how often a page looks for news: a quarter second's wait is most of what a spectrum
    # waits at real time (2/s gave p95 > 1 s); under load a redraw waits twice its own time
    render_hz: float = 4.0
    password_file: Path | None = None


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class DashboardError(RuntimeError):
    pass


def check_exposure(opts: DashboardOptions) -> None:
    """A dashboard with controls on a network address must not be open to anyone."""
    if not _is_loopback(opts.address) and opts.password_file is None:
        raise DashboardError(
            f"--address {opts.address} exposes the dashboard beyond this machine: give "
            "--password-file FILE (Panel basic auth), or keep the default 127.0.0.1 and "
            "tunnel (ssh -L)"
        )
    if opts.password_file is not None and not opts.password_file.exists():
        raise DashboardError(f"--password-file {opts.password_file}: no such file")


def _edges(snap: Snapshot) -> list[str]:
    """The edges fitted so far, for the fractions' edge selector."""
    return sorted(snap.fits["edge"].unique()) if len(snap.fits) else []


def newest_edge(fits: pd.DataFrame) -> str | None:
    """The edge of the newest fit, where the experiment is now: the edge selector starts on
    it (it started on the first in the alphabet, an edge maybe scanned hours ago)."""
    return str(fits.loc[fits["t"].idxmax(), "edge"]) if len(fits) else None


def _pipe(data: Any) -> Pipe:
    return Pipe(data=data)


def _pane(plot: Any, height: int) -> pn.pane.HoloViews:
    """A plot that rescales to new data (framewise), keeps its own axes (not linked to other
    panes: an energy axis of Ni L is not one of Mn L) and stretches to the window's width
    (fixed sizes left half of a 1600 px screen empty)."""
    return pn.pane.HoloViews(
        plot.opts(framewise=True, responsive=True, height=height, min_width=360),
        linked_axes=False,
        sizing_mode="stretch_width",
    )


class Session:
    """One browser tab: its streams and widgets, redrawn from the shared snapshot."""

    def __init__(self, feed: StateFeed, opts: DashboardOptions) -> None:
        self.feed, self.opts = feed, opts
        self.seen: dict[str, int] = {}
        self.rests: list[tuple[float, float]] = []
        self.next_redraw = 0.0
        self.redraw_ms = 0.0  # the last redraw's server time, shown in the header
        self.steps_ms: dict[str, float] = {}  # and what it was spent on, per step
        self.version = -1
        snap = feed.view.snapshot
        # the edge whose fractions are drawn, chosen before the first paint: a page drawn
        # before its first update (seconds, on a busy server) showed no fractions at all
        edges = _edges(snap)
        self.edge = pn.widgets.Select(
            name="fractions of edge",
            options=edges,
            value=newest_edge(snap.fits),
            width=160,
            css_classes=["op-edge"],  # found by the browser test and the bench
        )
        self.pipes = {
            "relaxation": _pipe(snap.relaxation),
            "dose": _pipe((snap.dose, snap.budget_Gy, snap.spots, beam_spot(snap.spectra))),
            "rixs": _pipe(snap.rixs_latest),
            "rixs_maps": _pipe(snap.rixs_maps),
        }
        self.hours = HoursAxis(float(snap.cell["t"].iloc[0]) if len(snap.cell) else None)
        # the first tab, drawn with what the run has now (a page opened before its first
        # update, seconds on a busy server, showed empty plots)
        self.time = TimePlots(self.hours)
        self.time.show_cell(snap.cell, snap.cell_revision)
        self.time.show_marks(snap.rests, snap.spectra, snap.triggers)
        self.time.show_beam(snap.beam, snap.beam_lost)
        self.time.show_valence(snap.fits)
        self.time.show_fractions(snap.fits, self.edge.value)
        self.cycling = CyclingPlots()  # drawn when its tab is first opened
        self.spectra = SpectraPlots()
        self.spectra.show(snap.latest, snap.fits, snap.heatmaps)
        self.edge.param.watch(self._edge_chosen, "value")
        self.header = pn.pane.HTML("", sizing_mode="stretch_width")
        self.alarms = pn.pane.HTML("", sizing_mode="stretch_width")
        self.ack_select: pn.widgets.Select | None = None
        self.ack_button = pn.widgets.Button(name="Acknowledge alarm", width=160, disabled=True)
        self.message = pn.pane.HTML("", sizing_mode="stretch_width")
        self.damage = pn.pane.HTML("", sizing_mode="stretch_width")
        self.fit_quality = pn.pane.HTML(fit_quality_html(snap), sizing_mode="stretch_width")
        self.event_counts = pn.pane.HTML("", sizing_mode="stretch_width")
        # filterable by kind, source, attention and text (a raw dump made the operator hunt)
        self.events = pn.widgets.Tabulator(
            events_frame(Snapshot()),
            header_filters={
                "UTC": {"type": "input", "func": "like", "placeholder": "time"},
                "kind": {"type": "list", "valuesLookup": True, "clearable": True},
                "source": {"type": "list", "valuesLookup": True, "clearable": True},
                "attention": {"type": "list", "valuesLookup": True, "clearable": True},
                "detail": {"type": "input", "func": "like", "placeholder": "text"},
            },
            # Tabulator's plaintext escapes: a detail (a file name, an instrument's message) is
            # shown as text, never run as markup
            formatters={column: {"type": "plaintext"} for column in EVENT_COLUMNS},
            disabled=True,
            show_index=False,
            pagination="local",
            page_size=50,
            layout="fit_data_stretch",
            sizing_mode="stretch_width",
            css_classes=["op-events"],
        )
        if self.events.style is not None:  # pandas' Styler: the rows that need attention
            self.events.style.apply(_attention_row, axis=1)
        self.stale: set[str] = set()
        self.rixs_sent = snap.rixs_latest
        self.layout = self._layout()
        self.steps = self._steps()
        self.tabs.param.watch(self._tab_opened, "active")

    # -- layout ------------------------------------------------------------------------------
    def _layout(self) -> pn.Column:
        p = self.pipes
        relax_v = hv.DynamicMap(
            lambda data: plots.relaxation_plot(data, "valence"), streams=[p["relaxation"]]
        )
        relax_e = hv.DynamicMap(
            lambda data: plots.relaxation_plot(data, "Ewe"), streams=[p["relaxation"]]
        )
        bars = hv.DynamicMap(lambda data: plots.dose_bars(*data), streams=[p["dose"]])
        spots = hv.DynamicMap(
            lambda data: plots.spot_map(data[0], data[2], data[3]), streams=[p["dose"]]
        )
        rixs = hv.DynamicMap(lambda data: plots.rixs_map(data), streams=[p["rixs"]])
        ratio = hv.DynamicMap(lambda data: plots.rixs_ratio(data), streams=[p["rixs_maps"]])
        self.tabs = tabs = pn.Tabs(
            (
                "Electrochemistry & valence",
                pn.Column(self.edge, self.time.layout, sizing_mode="stretch_width"),
            ),
            ("Cycling", self.cycling.layout),
            (
                "Spectra",
                pn.Column(
                    self.spectra.latest.pane,
                    self.fit_quality,
                    self.spectra.residual.pane,
                    self.spectra.valence.pane,
                    self.spectra.heatmap_column,
                    sizing_mode="stretch_width",
                ),
            ),
            (
                "Relaxation",
                pn.Row(
                    _pane(relax_v, height=360),
                    _pane(relax_e, height=360),
                    sizing_mode="stretch_width",
                ),
            ),
            (
                "Dose & damage",
                pn.Column(
                    pn.Row(
                        _pane(bars, height=320),
                        _pane(spots, height=320),
                        sizing_mode="stretch_width",
                    ),
                    self.damage,
                    sizing_mode="stretch_width",
                ),
            ),
            (
                "RIXS",
                pn.Row(
                    _pane(rixs, height=360),
                    _pane(ratio, height=360),
                    sizing_mode="stretch_width",
                ),
            ),
            ("Events", pn.Column(self.event_counts, self.events, sizing_mode="stretch_width")),
            dynamic=True,  # only the open tab is drawn: a page loads in a fraction
            sizing_mode="stretch_width",
        )
        return pn.Column(
            self.header,
            self.alarms,
            self._controls(),
            self.message,
            tabs,
            sizing_mode="stretch_width",
        )

    def _controls(self) -> pn.viewable.Viewable:
        if not self.opts.command:
            return pn.pane.HTML(
                "<small>read-only view (start with <code>--command</code> for controls)</small>"
            )
        spectra = self.feed.view.snapshot.spectra
        edges = sorted({*spectra["edge"].dropna()}) if "edge" in spectra else []
        edge = pn.widgets.Select(name="edge", options=edges or ["Mn-L"], width=120)
        acquire = pn.widgets.Button(name="Acquire spectrum", button_type="primary", width=160)
        hold = pn.widgets.Button(name="Hold cell", width=110)
        resume = pn.widgets.Button(name="Resume cell", width=120)

        self.ack_select = pn.widgets.Select(name="alarm", options={}, width=160)
        self.ack_button.on_click(self._acknowledge)

        async def on_acquire(event: Any) -> None:
            await self._command("acquire", {"edge": edge.value})

        # Panel awaits a callback only when it is a coroutine function (partial keeps that)
        acquire.on_click(on_acquire)
        hold.on_click(partial(self._command, "hold", {}))
        resume.on_click(partial(self._command, "resume", {}))
        return pn.Row(edge, acquire, hold, resume, self.ack_select, self.ack_button)

    async def _command(self, action: str, args: dict[str, Any], event: Any = None) -> None:
        assert self.opts.command
        try:
            result = await command_monitor(self.opts.command, action, args, timeout_s=10.0)
            text = f"{action}: done {html.escape(json.dumps(result))}"
            colour = "#009E73"
        except (CommandError, OSError) as e:
            text, colour = f"{action} failed: {html.escape(str(e))}", "#D55E00"
        self.message.object = f'<div class="op-message" style="color:{colour}">{text}</div>'

    # -- redraw ------------------------------------------------------------------------------
    def _changed(self, snap: Snapshot, *parts: str) -> bool:
        return any(snap.parts.get(p, 0) != self.seen.get(p, -1) for p in parts)

    def update(self) -> None:
        snap = self.feed.view.snapshot
        now = time.monotonic()
        if snap.version == self.version or now < self.next_redraw:
            return
        # One batch per redraw: Bokeh re-collects the document's models once, not per stream
        # (per stream, that walk took most of the server's time with two browsers open).
        with pn.io.hold(freeze=True):
            if self.hours.t0_s is None and len(snap.cell):
                self.hours.start_at(float(snap.cell["t"].iloc[0]))
            self._redraw(snap)
        # Under load (many tabs, fast replay) redraw less often rather than starve the server:
        # at most a third of the time goes to this tab's redraws, so new tabs still load.
        took = time.monotonic() - now
        self.redraw_ms = 1e3 * took
        self.next_redraw = now + min(2 * took, MAX_BACKOFF_S)

    def _steps(self) -> list[tuple[str, int | None, Any, Any]]:
        """(name, tab it draws on or None for always, when it is due, what it does)."""
        p = self.pipes

        def marks_due(snap: Snapshot) -> bool:
            return self._changed(snap, "spectra", "events") or snap.rests != self.rests

        def marks(snap: Snapshot) -> None:
            self.time.show_marks(snap.rests, snap.spectra, snap.triggers)
            self.rests = snap.rests

        def time_fits(snap: Snapshot) -> None:
            self.time.show_valence(snap.fits)
            edges = _edges(snap)
            if edges != self.edge.options:
                self.edge.options = edges
                if self.edge.value not in edges and edges:
                    self.edge.value = newest_edge(snap.fits)  # the watcher sends them
            self._send_fractions(snap)

        def spectra_tab(snap: Snapshot) -> None:
            self.spectra.show(snap.latest, snap.fits, snap.heatmaps)
            self.fit_quality.object = fit_quality_html(snap)

        def relaxation(snap: Snapshot) -> None:
            if snap.relaxation is not None:
                p["relaxation"].send(snap.relaxation)

        def dose(snap: Snapshot) -> None:
            p["dose"].send((snap.dose, snap.budget_Gy, snap.spots, beam_spot(snap.spectra)))
            self.damage.object = damage_html(snap)

        def rixs_due(snap: Snapshot) -> bool:
            return snap.rixs_latest is not self.rixs_sent or self._changed(snap, "rixs")

        def rixs(snap: Snapshot) -> None:
            # only when RIXS rows or maps came: every spectrum redrew both plots before (and
            # the browser logged a Bokeh error for each)
            p["rixs"].send(snap.rixs_latest)
            p["rixs_maps"].send(snap.rixs_maps)
            self.rixs_sent = snap.rixs_latest

        def events(snap: Snapshot) -> None:
            self.event_counts.object = event_counts_html(snap)
            self.events.value = events_frame(snap)

        def parts(*names: str) -> Any:
            return lambda snap: self._changed(snap, *names)

        return [
            ("cell", 0, parts("cell"), lambda s: self.time.show_cell(s.cell, s.cell_revision)),
            ("marks", 0, marks_due, marks),
            ("beam", 0, parts("spectra"), lambda s: self.time.show_beam(s.beam, s.beam_lost)),
            ("time fits", 0, parts("fits"), time_fits),
            ("cycling", 1, parts("cycling", "fits", "spectra"), self.cycling.show),
            ("spectra", 2, parts("fits", "spectra"), spectra_tab),
            ("relaxation", 3, parts("relaxation", "fits", "cell"), relaxation),
            ("dose", 4, parts("dose", "events"), dose),
            ("rixs", 5, rixs_due, rixs),
            ("events", 6, parts("events"), events),
            ("alarms", None, parts("events", "status"), self._alarms),
        ]

    def _redraw(self, snap: Snapshot) -> None:
        """Send what changed to the open tab; what changed on hidden tabs waits until shown
        (a hidden plot costs nothing, and the server's time goes to what is looked at)."""
        steps_ms: dict[str, float] = {}
        for name, tab, due, draw in self.steps:
            if not (name in self.stale or due(snap)):
                continue
            if tab is not None and tab != self.tabs.active:
                self.stale.add(name)
                continue
            t0 = time.perf_counter()
            draw(snap)
            steps_ms[name] = 1e3 * (time.perf_counter() - t0)
            self.stale.discard(name)
        if steps_ms:
            self.steps_ms = steps_ms
        header = header_html(snap, self.feed, self.redraw_ms, self.steps_ms, self.tabs.active)
        if header != self.header.object:
            self.header.object = header
        self.seen, self.version = dict(snap.parts), snap.version

    def _tab_opened(self, event: Any) -> None:
        with pn.io.hold(freeze=True):
            self._redraw(self.feed.view.snapshot)

    def _edge_chosen(self, event: Any) -> None:
        # one patch, as a redraw is: the new figures and what they refer to arrive together
        # (sent apart, the page met references it did not know and kept the old edge)
        with pn.io.hold(freeze=True):
            self._send_fractions()

    def _send_fractions(self, snap: Snapshot | None = None) -> dict[str, str]:
        """The chosen edge's fractions: its new fits appended, or the plots made again for
        another edge (a fit of another edge sends nothing)."""
        snap = snap or self.feed.view.snapshot
        return self.time.show_fractions(snap.fits, self.edge.value)

    def _alarms(self, snap: Snapshot) -> None:
        """Open alarms, newest first, as one HTML pane; acknowledging is one select and one
        button that stay the same widgets (rows of widgets rebuilt as alarms came and went did
        not reach a page that was loaded while alarms were open)."""
        newest = sorted(snap.alarms, key=lambda a: -int(a["id"]))
        text = "".join(alarm_html(a) for a in newest[:MAX_ALARMS_SHOWN])
        if len(newest) > MAX_ALARMS_SHOWN:
            text += f"<b>{len(newest) - MAX_ALARMS_SHOWN} more open alarms</b> (Events tab)"
        if text != self.alarms.object:
            self.alarms.object = text
        if self.ack_select is not None:
            options = {f"#{a['id']} {a.get('category')}": int(a["id"]) for a in newest}
            if options != self.ack_select.options:
                self.ack_select.options = options
                self.ack_button.disabled = not options

    async def _acknowledge(self, event: Any) -> None:
        if self.ack_select is not None and self.ack_select.value is not None:
            await self._command("acknowledge", {"alarm": int(self.ack_select.value)})


# -- HTML pieces (pure) ----------------------------------------------------------------------
def _fmt(v: Any, spec: str, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:{spec}}{unit}"


def alarm_html(a: dict[str, Any]) -> str:
    category = html.escape(str(a.get("category")))
    count = f" (x{a['count']})" if a.get("count", 1) > 1 else ""
    return (
        f'<div class="op-alarm" data-category="{category}" data-id="{a["id"]}" '
        'style="background:#D55E00;color:white;padding:4px 8px;margin:2px 0;border-radius:4px">'
        f"<b>ALARM #{a['id']} [{category}]</b> {html.escape(str(a.get('message')))}{count}</div>"
    )


def spot_text(requested: str | None, spectra: pd.DataFrame) -> str:
    """Where the beam is: the spot of the newest scan, and the spot the orchestrator asked
    for when that differs (a move in flight, or a stage that acked a move and did not make
    it: the header must not say the beam is on a fresh spot while the spent one is dosed)."""
    latest = beam_spot(spectra)
    if latest is None:
        return str(requested or "-")
    if requested is None or str(requested) == latest:
        return latest
    return f"{latest} (latest scan; {requested} requested)"


def beam_spot(spectra: pd.DataFrame) -> str | None:
    """The spot the newest scan came from (where the beam is), None before any."""
    with_spot = spectra.loc[spectra["spot"].notna()] if "spot" in spectra else spectra.iloc[:0]
    if not len(with_spot):
        return None
    return str(with_spot.sort_values("spectrum_id")["spot"].iloc[-1])


def header_html(
    snap: Snapshot,
    feed: StateFeed,
    redraw_ms: float = 0.0,
    steps_ms: dict[str, float] | None = None,
    tab: int = 0,
) -> str:
    st = snap.status
    sp = snap.spectra
    n_spectra = len(sp)
    partial = int(sp["partial"].sum()) if n_spectra else 0
    latest = int(sp["spectrum_id"].max()) if n_spectra else 0
    if snap.monitor_connected:
        live = '<span style="color:#009E73">monitor connected</span>'
    elif feed.view.run_dir is None:  # a run followed in Tiled: what its publisher wrote
        live = '<span class="op-remote">read from Tiled (the monitor is elsewhere)</span>'
    else:
        live = '<span style="color:#D55E00">monitor not connected: showing the run store</span>'

    rows = []
    for name, s in st.get("sources", {}).items():
        silent = s.get("silent_s")
        rows.append(
            "<tr>"
            f"<td>{html.escape(name)}</td><td>{s.get('role', '')}</td>"
            f"<td>{s.get('messages', 0)}</td><td>{_fmt(snap.rates.get(name), '.1f')}</td>"
            f"<td>{s.get('gaps', 0)} ({s.get('lost', 0)} lost)</td><td>{s.get('malformed', 0)}</td>"
            f"<td>{s.get('not_derived', 0)}</td><td>{s.get('refused', 0)}</td>"
            f"<td>{s.get('late', 0)}</td><td>{s.get('restarts', 0)}</td>"
            f"<td>{_fmt(silent, '.1f', ' s')}</td></tr>"
        )
    sources = (
        '<table class="op-sources" style="font-size:90%"><tr><th>source</th><th>role</th>'
        "<th>messages</th><th>msg/s</th><th>gaps</th><th>malformed</th><th>not derived</th>"
        "<th>refused</th>"
        "<th>late</th>"
        "<th>restarts</th><th>silent</th></tr>" + "".join(rows) + "</table>"
        if rows
        else ""
    )
    orch = st.get("orchestration", {})
    # what the last redraw spent its time on: hover to read, the dashboard bench collects it
    spent = {k: round(v, 1) for k, v in (steps_ms or {}).items()}
    spent_text = ", ".join(f"{k} {v:.0f} ms" for k, v in spent.items())
    return (
        f'<div class="op-header"><b>operando</b> - {html.escape(feed.view.label)} - {live}'
        f"{glance_html(snap)}"
        f'<br>spectra: <span class="op-spectra" data-count="{n_spectra}">{n_spectra}</span>'
        f' (<span class="op-partial">{partial}</span> partial) - latest '
        f'<span id="op-latest" class="op-latest" data-spectrum-id="{latest}">{latest}</span>'
        f" - spot {html.escape(spot_text(orch.get('spot'), sp))}"
        f' - alarms <span class="op-alarm-count">{len(snap.alarms)}</span>'
        f" - damage {damage_counts(snap)}"
        f" - {beam_text(snap)}"
        f"{published_html(feed.view.run_dir) if feed.view.run_dir else ''}"
        f" - state batches missed {feed.missed}"
        f' - redraw <span class="op-redraw" data-tab="{tab}" data-sent="{time.time():.3f}"'
        f' data-refreshed="{snap.refreshed_at:.3f}"'
        f' data-steps="{html.escape(json.dumps(spent))}"'
        f' title="{html.escape(spent_text)}">{redraw_ms:.0f}</span> ms'
        f"<br>{sources}</div>"
    )


def published_html(run_dir: Path) -> str:
    """Where the run's documents go (``operando publish``) and how far they got, with the
    age of the newest acknowledgement (a broker away shows as an age that grows)."""
    parts = []
    for p in published_to(run_dir):
        if "error" in p:
            parts.append(html.escape(f"{p['sink']}: cursor unreadable"))
            continue
        age = time.time() - p["saved"]
        late = not p["stop_sent"] and age > 30
        colour = ' style="color:#D55E00"' if late else ""
        parts.append(
            f'<span class="op-published" data-events="{p["events"]}" '
            f'data-stop="{int(p["stop_sent"])}"{colour} title="{html.escape(published_text(p))}">'
            f"{html.escape(p['url'])}: {p['events']} events"
            + (", stop sent" if p["stop_sent"] else f", acknowledged {age:.0f} s ago")
            + "</span>"
        )
    return " - documents to " + ", ".join(parts) if parts else ""


def beam_text(snap: Snapshot) -> str:
    """'beam lost 2 times, newest 12:03:10 UTC (4.0 min)': a dump seen in I0 (the scans it
    touched read dark counts), or that I0 showed none."""
    if not len(snap.beam):
        return "beam: no I0 yet"
    if not snap.beam_lost:
        return '<span class="op-beam" data-lost="0">beam: never lost (I0)</span>'
    _, a, b = max(snap.beam_lost, key=lambda x: x[1])
    return (
        f'<span class="op-beam" data-lost="{len(snap.beam_lost)}" style="color:#D55E00">'
        f"beam lost {len(snap.beam_lost)} time(s), newest {utc_text(a)} "
        f"({(b - a) / 60:.1f} min)</span>"
    )


def glance_html(snap: Snapshot) -> str:
    """The experiment at a glance, in large type: time since the first row, the protocol
    step and cycle, Ewe, I, SOC, the spot against its budget, and the newest valence of each
    edge and channel with its fit's verdict."""
    cell = snap.status.get("cell") or {}
    trace = snap.cell
    last = trace.iloc[-1] if len(trace) else None
    ewe = cell.get("Ewe_V", None if last is None else float(last["Ewe"]))
    current = cell.get("I_mA", None if last is None else float(last["I"]))
    soc = cell.get("soc", None if last is None else float(last["soc"]))
    mode = cell.get("mode", None if last is None else int(last["mode"]))
    elapsed = (
        float(trace["t"].iloc[-1] - trace["t"].iloc[0]) if len(trace) else None
    )  # source time, the experiment's own clock
    # the protocol's step and cycle come with the monitor's status only (not in the trace)
    step = f"step {cell['step']}, cycle {cell['cycle']}, " if "cycle" in cell else ""
    mode_name = MODE_NAMES.get(int(mode), str(mode)) if mode is not None else "-"
    spot = beam_spot(snap.spectra)
    budget = plots.scans_left_text(snap.dose, snap.budget_Gy, spot)
    parts = [
        f"{_elapsed(elapsed)} elapsed",
        f"{step}{mode_name}",
        f"Ewe {_fmt(ewe, '.3f', ' V')}",
        f"I {_fmt(current, '.4g', ' mA')}",
        f"SOC {_fmt(soc, '.3f')}",
        budget or (f"spot {spot}" if spot else "no spot yet"),
    ]
    valences = []
    if len(snap.fits):
        newest = snap.fits.sort_values("spectrum_id").groupby(["edge", "channel"]).tail(1)
        for _, f in newest.sort_values(["edge", "channel"]).iterrows():
            colour = QUALITY_COLOUR.get(str(f["quality"]), "#555555")
            valences.append(
                f"{html.escape(str(f['edge']))} {html.escape(str(f['channel']))} "
                # sigma to two significant digits: '± 0.00' read as an exact result
                f"{_fmt(f['valence'], '.2f')} ± {_fmt(f['valence_unc'], '.2g')} "
                f'<span style="color:{colour}">({html.escape(str(f["quality"]))})</span>'
            )
    valence_line = (
        f'<br><span class="op-valence">valence: {" &middot; ".join(valences)}</span>'
        if valences
        else ""
    )
    return (
        f'<div class="op-glance" style="font-size:135%;margin:4px 0">'
        f"{' &nbsp;|&nbsp; '.join(html.escape(x) if '<' not in x else x for x in parts)}"
        f"{valence_line}</div>"
    )


def _elapsed(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}:{rem // 60:02d} h"


def damage_counts(snap: Snapshot) -> str:
    """'2 confirmed, 5 suspected': a suspicion is not a verdict, and says so."""
    d = snap.damage
    if not len(d):
        return "none suspected"
    confirmed = int((d["status"] == "damage").sum())
    suspected = int((d["status"] == "suspicion").sum())
    checks = int((d["status"] == "check").sum())
    by_dose = f", {checks} checked by dose" if checks else ""
    return f"{confirmed} confirmed, {suspected} suspected{by_dose}"


# a verdict's colour: only a confirmed one is red
STATUS_COLOUR = {"damage": "#cf222e", "suspicion": "#9a6700", "electrochemistry": "#1a7f37"}


def damage_html(snap: Snapshot) -> str:
    d = snap.damage
    if not len(d):
        return (
            "<p>No damage suspected: the tests compare scans at a known state (a settled "
            "rest, or the same current, SOC and time into the step), and a spot scanned past "
            "the check dose is compared with a control spot every few scans.</p>"
        )
    rows = "".join(
        f'<tr data-status="{html.escape(r["status"])}">'
        f'<td><b style="color:{STATUS_COLOUR.get(r["status"], "#57606a")}">'
        f"{html.escape(r['status'])}</b></td>"
        f"<td>{r['spectrum_id']}</td><td>{html.escape(str(r['spot']))}</td>"
        f"<td>{html.escape(str(r['test']))}</td><td>{_fmt(r['p_value'], '.1e')}</td>"
        f"<td>{_fmt(r['dose_MGy'], '.2f')}</td>"
        f"<td>{html.escape(r['why'] or r['evidence'])}</td></tr>"
        for r in d.tail(50).to_dict("records")
    )
    return (
        f'<p class="op-damage">damage: {damage_counts(snap)} (newest 50). A suspicion is '
        "a test's finding; only a verdict from a control spot acts.</p>"
        "<table><tr><th>status</th><th>spectrum</th><th>spot</th><th>test</th><th>p</th>"
        "<th>dose (MGy)</th><th>why / evidence</th></tr>"
        f"{rows}</table>"
    )


QUALITY_COLOUR = {"good": "#1a7f37", "check": "#9a6700", "poor": "#cf222e"}


def fit_quality_html(snap: Snapshot) -> str:
    """The newest spectrum's fits: each channel's verdict and every reason behind it, and how
    many of the run's fits were judged poor."""
    latest = snap.latest
    if latest is None or not latest.quality:
        return '<div class="op-fit-quality">no fit yet</div>'
    items = "".join(
        f'<li data-channel="{html.escape(c)}" data-quality="{html.escape(q)}">'
        f'<b style="color:{QUALITY_COLOUR.get(q, "#57606a")}">{html.escape(c)} {html.escape(q)}'
        f"</b>{': ' + html.escape('; '.join(notes)) if notes else ''}</li>"
        for c, (q, notes) in sorted(latest.quality.items())
    )
    fits = snap.fits
    poor = int((fits["quality"] == "poor").sum()) if "quality" in fits else 0
    tally = f"{poor} of {len(fits)} fits in this run judged poor" if len(fits) else ""
    return (
        f'<div class="op-fit-quality">spectrum {latest.spectrum_id} fits:<ul>{items}</ul>'
        f'<span class="op-poor-fits" data-count="{poor}">{tally}</span></div>'
    )


EVENT_COLUMNS = ("UTC", "kind", "source", "attention", "detail")


def events_frame(snap: Snapshot) -> pd.DataFrame:
    """The events the dashboard keeps (the newest 500), newest first, as rows a person reads
    and filters: UTC time, kind, source, whether it needs attention, and each detail as
    'name: value' (numbers to 4 digits)."""
    rows = [
        (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["time"])),
            e["kind"],
            str(e.get("link") or ""),
            "attention" if e["kind"] in ATTENTION else "",
            _detail(e),
        )
        for e in reversed(snap.events)
    ]
    return pd.DataFrame(rows, columns=pd.Index(EVENT_COLUMNS))


def _attention_row(row: pd.Series) -> list[str]:
    return ["background:#fde2cf" if str(row["attention"]) == "attention" else ""] * len(row)


def event_counts_html(snap: Snapshot) -> str:
    counts = ", ".join(
        f"{html.escape(k)} {v}" for k, v in sorted(snap.event_counts.items(), key=lambda kv: -kv[1])
    )
    return (
        f"<p>events of the run by kind: {counts or 'none yet'}. The table holds the newest "
        f"{len(snap.events)}; filter by kind, source, attention or text in its header.</p>"
    )


# kinds an operator must look at: marked in the events table
ATTENTION = frozenset(
    str(k)
    for k in (
        EventKind.ALARM,
        EventKind.DAMAGE_FLAG,
        EventKind.DAMAGE_SUSPICION,
        EventKind.DAMAGE_VERDICT,
        EventKind.DOSE_BUDGET_EXCEEDED,
        EventKind.DOSE_BUDGET_WARNING,
        EventKind.DRIVER_REFUSED,
        EventKind.STRANGER_REFUSED,
        EventKind.GAP,
        EventKind.GAP_UNRECOVERABLE,
        EventKind.MALFORMED,
        EventKind.DERIVE_ERROR,
        EventKind.FIT_FAILED,
        EventKind.ANALYSIS_ERROR,
        EventKind.SOC_OUT_OF_RANGE,
        EventKind.SOURCE_RESTARTED,
        EventKind.DISCONNECTED,
        EventKind.STORE_ERROR,
        EventKind.STORE_ROW_REFUSED,
    )
)


def _detail(e: dict[str, Any]) -> str:
    """'name: value' of each detail (nested ones as parent.name), as plain text (the table
    shows it as text, never as markup)."""
    skip = {"id", "time", "t", "kind", "link"}
    return "; ".join(f"{k}: {v}" for k, v in _flat(e, skip))


def _flat(d: dict[str, Any], skip: set[str], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            out += _flat(v, set(), f"{prefix}{k}.")
            continue
        if isinstance(v, float):
            text = f"{v:.4g}"
        elif isinstance(v, list | tuple):
            text = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:8])
            text += f", ... ({len(v)})" if len(v) > 8 else ""
        else:
            text = str(v)
        out.append((f"{prefix}{k}", text if len(text) <= 160 else text[:157] + "..."))
    return out


# -- serving ---------------------------------------------------------------------------------
def serve(opts: DashboardOptions) -> int:
    check_exposure(opts)
    hv.extension("bokeh", logo=False)
    # Every element rescales to each new frame: a live plot's ranges follow its data (set on
    # the overlays alone, the voltage axis stayed at the first frame's range).
    hv.opts.defaults(
        *(
            getattr(hv.opts, element)(framewise=True)
            for element in ("Curve", "Scatter", "Segments", "Spread", "Bars", "Points")
        ),
        *(getattr(hv.opts, e)(framewise=True) for e in ("QuadMesh", "Overlay")),
    )
    pn.extension("tabulator", notifications=False)  # the Events table
    if opts.tiled is not None and opts.run is not None:
        try:
            view = RunView(open_remote(opts.tiled, opts.run, opts.api_key))
        except RemoteError as e:
            raise DashboardError(str(e)) from None
    else:
        assert opts.run_dir is not None
        view = RunView(opts.run_dir)
    feed = StateFeed(view, opts.monitor)
    feed.start()

    def app() -> pn.viewable.Viewable:
        session = Session(feed, opts)
        pn.state.onload(session.update)  # the first fill as soon as the page is there
        # a page redraws as soon as the view has read something new (waiting for its next
        # look, up to a quarter second, was a third of a spectrum's way to the page at real
        # time), and looks for news at ``render_hz`` as well
        doc = pn.state.curdoc
        assert doc is not None  # inside a session: Panel calls app() for each page

        def wake(snap: Snapshot) -> None:  # in the feed's thread: Bokeh's thread-safe call
            doc.add_next_tick_callback(session.update)

        feed.on_refresh.append(wake)
        pn.state.on_session_destroyed(lambda context: feed.on_refresh.remove(wake))
        pn.state.add_periodic_callback(session.update, period=int(1000 / opts.render_hz))
        return session.layout

    origins = [f"{opts.address}:{opts.port}"]
    if _is_loopback(opts.address):
        origins += [f"localhost:{opts.port}", f"127.0.0.1:{opts.port}"]
    auth: dict[str, Any] = {}
    if opts.password_file is not None:
        auth = {
            "basic_auth": opts.password_file.read_text().strip(),
            "cookie_secret": secrets.token_hex(32),
        }
    server: Any = pn.serve(  # a bokeh Server (threaded=False): panel declares a union
        {"/": app},
        port=opts.port,
        address=opts.address,
        websocket_origin=origins,
        show=False,
        start=False,
        title="operando",
        # /liveness answers without building a page: readiness probes must not each start a
        # session (on a loaded machine they timed out and piled up, and the page never came)
        liveness=True,
        **auth,
    )
    print(f"operando dashboard: http://{opts.address}:{opts.port}/", flush=True)

    def stop(*_: Any) -> None:
        server.io_loop.add_callback_from_signal(server.io_loop.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    try:
        server.io_loop.start()
    finally:
        server.stop()
        feed.stop()
    return 0
