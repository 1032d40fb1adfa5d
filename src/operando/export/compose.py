"""A run's event-model documents, composed as they become final: the one source of both
``operando export --format documents`` (the whole run at once) and ``operando publish`` (a
run followed live, from a cursor it keeps).

A document, once given out, never changes (event-model has no revisions), so each part of the
run is given out when nothing recorded later can change it:

- ``start`` with the run's first row or spectrum;
- ``electrochemistry``: pages of the potentiostat rows in the order recorded, a page closed at
  ``PAGE_ROWS`` rows or at the first row ``PAGE_SECONDS`` from its first (the row that closes
  it must have arrived, so a page is out at most ``PAGE_SECONDS`` after its rows);
- ``half_cycles``, ``current_steps``, ``gitt``, ``interruptions``: an event a row, when its row
  is recorded (the trackers record a row once it is done), a half-cycle still open at the end
  of the record with the stop;
- one stream per edge and scan shape and one per RIXS map: an event a spectrum, once its
  alignment is whole (a partial one may be realigned by a refill: with the stop) and the
  analysis has passed it (each channel it fits has a fit, or a later spectrum has one);
- ``event_log``: an event an entry of the run's event log, when it is recorded (what a remote
  dashboard shows of alarms, damage suspicions and verdicts, triggers and gaps);
- ``relaxation``: each rest's relaxation fits, once a later rest has one (the analysis fits a
  rest again as it grows, keeping the newest), or at the end;
- ``map_reductions``: each RIXS map's reduction (ROI and reference sums, their ratio, the SOC), once
  the map has all its rows, or at the end (the analysis replaces it as rows come);
- ``stop`` when the run has ended: exit status "success" when every source closed its series,
  else "abort" naming those that did not.

Every uid follows ``Uids`` (decision 0013): the same run gives the same documents, whether
composed in one go or over a week from a cursor saved after each acknowledged batch. The
cursor already counts a document when it is given out: saved once that document is safe, it
never gives it out again, nor skips one.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import event_model
import msgspec
import numpy as np
import pandas as pd

from operando import __version__
from operando.config import ExperimentConfig
from operando.export.nexus import nexus_name
from operando.export.tables import cycling_table, units_of
from operando.store.reader import RecordedSpectrum, Run

Document = tuple[str, dict[str, Any]]
PAGE_ROWS = 1000
PAGE_SECONDS = 10.0
READ_ROWS = 50_000  # potentiostat rows read at a time
READ_SPECTRA = 200  # new spectra placed in their streams at a time
_INTEGER = {"mode": int, "step": int, "cycle": int}
_ELECTROCHEMISTRY = {
    "Ewe": ("number", "V"),
    "I": ("number", "mA"),
    "Q": ("number", "mA*h"),
    "soc": ("number", None),
    "mode": ("integer", None),
    "step": ("integer", None),
    "cycle": ("integer", None),
}
_CYCLING = (
    ("half_cycles", "t_end"),
    ("current_steps", "t_step"),
    ("gitt", "t_start"),
    ("interruptions", "t_start"),
)
_TABLES = {"gitt": "gitt_pulses"}  # a stream's table in the store, where the names differ
_ALIGNED = (
    ("Ewe_mean", "ewe_mean_V", "number", "V"),
    ("I_mean", "i_mean_mA", "number", "mA"),
    ("soc", "soc", "number", None),
    ("Q", "q_mAh", "number", "mA*h"),
    ("cycle", "cycle", "integer", None),
    ("mode", "mode", "integer", None),
)


class Uids:
    """Each document's uid from the run's (``Run.uid``) and its place in the run: the same
    run gives the same documents, so a consumer de-duplicates by uid (a document published
    twice after a restart, a run exported again)."""

    def __init__(self, run_uid: str) -> None:
        self.root = uuid.UUID(run_uid)

    def __call__(self, *place: object) -> str:
        return str(uuid.uuid5(self.root, "/".join(map(str, place))))


class Cursor(msgspec.Struct, kw_only=True):
    """How far the documents of a run have been given out (saved by a publisher after each
    acknowledged batch; a fresh one gives out the whole run)."""

    start: dict[str, Any] | None = None
    descriptors: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    events: dict[str, int] = msgspec.field(default_factory=dict)  # given out, per stream
    potentiostat_rowid: int = 0  # the last potentiostat row given out
    spectrum_id: int = 0  # the last spectrum placed in its stream
    shapes: dict[str, str] = msgspec.field(default_factory=dict)  # scan shape -> stream
    placed: dict[str, int] = msgspec.field(default_factory=dict)  # spectra placed, per stream
    waiting: list[tuple[int, str, int]] = msgspec.field(default_factory=list)  # id, stream, seq
    event_id: int = 0  # the last entry of the run's event log given out
    stopped: bool = False


def _key(dtype: str, source: str, shape: list[int] | None = None, units: str | None = None):
    k: dict[str, Any] = {"dtype": dtype, "shape": shape or [], "source": source}
    if units:
        k["units"] = units
    return k


def _clean(v: Any) -> Any:
    """Plain JSON-able values: arrays as lists, NaN and missing as None."""
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()] if v.dtype.kind == "f" else v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def fitted_channels(cfg: ExperimentConfig, s: RecordedSpectrum) -> list[str]:
    """The channels of a spectrum the analysis fits (an XAS scan of an edge with references:
    ``operando.analyze``), so a stream's keys are known from its first spectrum."""
    a = cfg.analysis
    if not a.enabled or s.kind == "rixs_rows" or s.edge not in a.references:
        return []
    return [c for c in a.channels if c in s.arrays]


class Composer:
    """Gives out the run's documents that are final, from ``cursor`` on (advanced as it goes;
    save it once what was given out is safe)."""

    def __init__(self, run: Run, cursor: Cursor | None = None) -> None:
        self.run = run
        self.cursor = cursor or Cursor()
        self.uids = Uids(run.uid)
        self._expected: dict[int, set[str]] = {}  # waiting spectrum -> the channels it fits

    def documents(self, *, ended: bool) -> Iterator[Document]:
        """What became final since the last call; with ``ended`` (nothing will be recorded
        any more) everything left, and the stop."""
        c = self.cursor
        if c.stopped:
            return
        if c.start is None:
            counts = self.run.counts()
            if not ended and not counts["potentiostat_rows"] + counts["spectra"]:
                return
            yield "start", self._start()
        yield from self._electrochemistry(ended)
        for name, time_column in _CYCLING:
            yield from self._cycling(name, time_column, ended)
        yield from self._spectra(ended)
        yield from self._event_log()
        yield from self._relaxation(ended)
        yield from self._map_reductions(ended)
        if ended:
            yield "stop", self._stop()

    # -- start and stop -----------------------------------------------------------------------
    def _start(self) -> dict[str, Any]:
        run = self.run
        start = event_model.compose_run(
            uid=str(self.uids.root),
            time=run.time_range()[0],
            metadata={
                "plan_name": "operando",
                "operando_run": run.name,
                "experiment": run.config.name,
                "description": run.config.description,
                "program": f"operando {__version__}",
                "configuration": msgspec.to_builtins(run.config),
            },
        ).start_doc
        self.cursor.start = dict(start)
        return self.cursor.start

    def _stop(self) -> dict[str, Any]:
        c = self.cursor
        assert c.start is not None
        unclosed = self.run.sources_not_closed()
        stop = event_model.ComposeStop(
            start=c.start,  # type: ignore[arg-type]  # a RunStart, as it was composed
            event_counters={name: n + 1 for name, n in c.events.items()},
            poison_pill=[],
        )(
            exit_status="abort" if unclosed else "success",
            reason=f"no series end from {', '.join(unclosed)}" if unclosed else "",
            uid=self.uids("stop"),
            time=self.run.time_range()[1],
        )
        c.stopped = True
        return dict(stop)

    @property
    def t0(self) -> float:
        assert self.cursor.start is not None
        return float(self.cursor.start["time"])

    # -- streams ------------------------------------------------------------------------------
    def _describe(self, name: str, keys: dict[str, Any], time: float) -> Document | None:
        """The stream's descriptor, the first time it is needed."""
        c = self.cursor
        if name in c.descriptors:
            return None
        assert c.start is not None
        d = event_model.ComposeDescriptor(start=c.start, streams={}, event_counters={})(  # type: ignore[arg-type]
            name=name, data_keys=keys, time=time, uid=self.uids(name)
        )
        c.descriptors[name] = dict(d.descriptor_doc)
        c.events[name] = 0
        return "descriptor", c.descriptors[name]

    def _event(self, name: str, data: dict[str, Any], time: float, seq: int) -> dict[str, Any]:
        c = self.cursor
        compose = event_model.ComposeEvent(
            descriptor=c.descriptors[name],  # type: ignore[arg-type]
            event_counters={name: seq},
        )
        ev = compose(
            data=data,
            timestamps=dict.fromkeys(data, time),
            time=time,
            seq_num=seq,
            uid=self.uids(name, seq),
        )
        c.events[name] += 1
        return dict(ev)

    def _events_of(
        self,
        name: str,
        keys: dict[str, Any],
        times: Sequence[float] | np.ndarray[Any, Any],
        rows: Iterable[dict[str, Any]],
    ) -> Iterator[Document]:
        """The stream's descriptor (the first time), then an event a row, at ``times``."""
        described = self._describe(name, keys, float(times[0]))
        if described:
            yield described
        for k, data in enumerate(rows):
            yield "event", self._event(name, data, float(times[k]), self.cursor.events[name] + 1)

    def _electrochemistry(self, ended: bool) -> Iterator[Document]:
        name, src = "electrochemistry", "potentiostat"
        c = self.cursor
        while True:
            rows = self.run.potentiostat_after(c.potentiostat_rowid, READ_ROWS)
            if rows.empty:
                return
            t = rows["t"].to_numpy(float)
            keys = {k: _key(dtype, src, units=u) for k, (dtype, u) in _ELECTROCHEMISTRY.items()}
            described = self._describe(name, keys, float(t[0]))
            if described:
                yield described
            i = 0
            while i < len(rows):
                window = t[i : i + PAGE_ROWS]
                breaks = np.flatnonzero(np.abs(window - window[0]) >= PAGE_SECONDS)
                n = int(breaks[0]) if breaks.size else len(window)
                closed = breaks.size > 0 or n == PAGE_ROWS or ended
                if not closed:  # its closing row has not come yet
                    return
                part = rows.iloc[i : i + n]
                page = self._page(name, part, t[i : i + n])
                c.potentiostat_rowid = int(part["rowid"].iloc[-1])
                yield "event_page", page
                i += n
            if len(rows) < READ_ROWS:
                return

    def _page(self, name: str, part: pd.DataFrame, t: np.ndarray) -> dict[str, Any]:
        c = self.cursor
        first = c.events[name] + 1
        seq = list(range(first, first + len(part)))
        data = {k: _clean(part[k].to_numpy(_INTEGER.get(k, float))) for k in _ELECTROCHEMISTRY}
        compose = event_model.ComposeEventPage(
            descriptor=c.descriptors[name],  # type: ignore[arg-type]
            event_counters={name: first},
        )
        page = compose(
            data=data,
            timestamps={k: t.tolist() for k in data},
            seq_num=seq,
            time=t.tolist(),
            uid=[self.uids(name, n) for n in seq],
        )
        c.events[name] += len(part)
        return dict(page)

    def _cycling(self, name: str, time_column: str, ended: bool) -> Iterator[Document]:
        """An event a row of a derived table: its scalar columns (units in the data keys) and
        its whole recorded document."""
        done = self.cursor.events.get(name, 0)
        if not ended and self.run.settled_rows(_TABLES.get(name, name)) <= done:
            return  # nothing new: the table is not read (it is read whole when a row comes)
        table = cycling_table(self.run, name, self.t0)
        if len(table) <= done:
            return
        if name == "half_cycles" and not ended:  # an open half-cycle may still grow
            still_open = np.flatnonzero(~table["complete"].to_numpy(bool))
            table = table.iloc[: int(still_open[0])] if still_open.size else table
        if len(table) <= done:
            return
        units = units_of(table)
        keys = {}
        for column in table.columns:
            kind = table[column].dtype.kind
            dtype = {"b": "boolean", "i": "integer", "O": "string"}.get(kind, "number")
            keys[str(column)] = _key(dtype, "operando.electrochem", units=units.get(str(column)))
        # the row as recorded, JSON (a half-cycle's dQ/dV curve, a step's resistances at
        # stated times): what a remote dashboard draws, as the local one does from the store
        keys["document"] = _key("string", "operando.electrochem")
        documents = self.run.documents_of(_TABLES.get(name, name))
        t = table[time_column].to_numpy(float) + self.t0
        # by column, so an integer column stays integer in a row of floats
        rows = (
            {str(k): _clean(v) for k, v in row.items()} | {"document": documents[n]}
            for n, row in enumerate(table.iloc[done:].to_dict("records"), done)
        )
        yield from self._events_of(name, keys, t[done:], rows)

    def _event_log(self) -> Iterator[Document]:
        """The run's event log (gaps, alarms, damage suspicions and verdicts, triggers,
        series starts and ends, ...): an event an entry, as recorded (an entry never changes).
        ``detail`` is the entry's JSON text, ``t`` the time it is about (None: not known)."""
        name, c = "event_log", self.cursor
        while True:
            rows = self.run.events_after(c.event_id, READ_ROWS)
            if rows.empty:
                return
            received = rows["recv_ns"].to_numpy(float) * 1e-9
            keys = {
                "kind": _key("string", "operando"),
                "source": _key("string", "operando"),
                "t": _key("number", "operando", units="s"),
                "detail": _key("string", "operando"),
            }
            described = self._describe(name, keys, float(received[0]))
            if described:
                yield described
            for k, row in enumerate(rows.to_dict("records")):
                data = {
                    "kind": row["kind"],
                    "source": row["link"] or "",
                    "t": _clean(row["t"]),
                    "detail": row["detail"],
                }
                c.event_id = int(row["id"])
                yield "event", self._event(name, data, float(received[k]), c.events[name] + 1)
            if len(rows) < READ_ROWS:
                return

    def _relaxation(self, ended: bool) -> Iterator[Document]:
        """Each rest's relaxation fits (a row a series and quantity), once they are final: the
        analysis fits a rest again as it grows and keeps only the newest fit, so a rest goes
        out when a later one has a fit, or at the end."""
        name, c = "relaxation", self.cursor
        newest, n = self.run.rests_fitted()
        if newest is None or (not ended and n < 2):
            return
        # a rest's rows never change once a later rest began: the count given out is a place
        rows = self.run.relaxation_before(math.inf if ended else newest, c.events.get(name, 0))
        if rows.empty:
            return
        keys = {
            "rest_start": _key("number", "operando.analysis", units="s"),
            "series": _key("string", "operando.analysis"),
            "quantity": _key("string", "operando.analysis"),
            "model": _key("string", "operando.analysis"),
            "tau_s": _key("number", "operando.analysis", units="s"),
            "tau_err_s": _key("number", "operando.analysis", units="s"),
            "resolved": _key("boolean", "operando.analysis"),
            "n_points": _key("integer", "operando.analysis"),
            "document": _key("string", "operando.analysis"),  # the whole fit, JSON
        }
        start = rows["rest_start"].to_numpy(float)
        data = (
            {
                "rest_start": float(start[k]) - self.t0,  # s since the run's start, as tables
                "series": row["series"],
                "quantity": row["quantity"],
                "model": row["model"],
                "tau_s": _clean(row["tau_s"]),
                "tau_err_s": _clean(row["tau_err_s"]),
                "resolved": bool(row["resolved"]),
                "n_points": int(row["n_points"]),
                "document": row["doc"],
            }
            for k, row in enumerate(rows.to_dict("records"))
        )
        yield from self._events_of(name, keys, start, data)

    def _map_reductions(self, ended: bool) -> Iterator[Document]:
        """Each RIXS map's reduction, once final (``Run.rixs_maps_final``), at the time of the
        row that completed it (a run recorded before that was kept: the run's end)."""
        name, c = "map_reductions", self.cursor
        rows = self.run.rixs_maps_final(c.events.get(name, 0), ended)
        if rows.empty:
            return
        keys = {
            "map_id": _key("string", "operando.analysis"),
            "rows": _key("integer", "operando.analysis"),
            "rows_total": _key("integer", "operando.analysis"),
            "roi": _key("number", "operando.analysis", units="counts"),
            "reference": _key("number", "operando.analysis", units="counts"),
            "ratio": _key("number", "operando.analysis"),
            "soc": _key("number", "operando.analysis"),
            "document": _key("string", "operando.analysis"),  # PFY, iPFY, cuts: JSON
        }
        docs = [json.loads(d) for d in rows["doc"]]
        # a run recorded before reductions kept their last row's time: the run's end
        end = self.run.time_range()[1] if any("t_end" not in d for d in docs) else math.nan
        t = [float(d.get("t_end", end)) for d in docs]
        data = (
            {
                "map_id": row["map_id"],
                "rows": int(row["rows"]),
                "rows_total": int(row["rows_total"]),
                "roi": _clean(row["roi"]),
                "reference": _clean(row["reference"]),
                "ratio": _clean(row["ratio"]),
                "soc": _clean(row["soc"]),
                "document": row["doc"],
            }
            for row in rows.to_dict("records")
        )
        yield from self._events_of(name, keys, t, data)

    def _spectra(self, ended: bool) -> Iterator[Document]:
        c = self.cursor
        last_fitted = self.run.last_fitted()
        # spectra placed before and not final then: decided from the index, and read from
        # the raw log only to go out (one waits the whole run in a run without alignment)
        ready = self.run.readiness([sid for sid, _, _ in c.waiting]) if c.waiting else {}
        for entry in list(c.waiting):
            sid, name, seq = entry
            partial, fitted = ready.get(sid, (None, set()))
            if ended or (partial is False and self._passed(sid, fitted, last_fitted)):
                c.waiting.remove(entry)  # before it is given out: the cursor says it went
                self._expected.pop(sid, None)
                yield from self._spectrum_event(self.run.spectrum(sid), name, seq)
        while True:
            new = list(self.run.iter_spectra(after=c.spectrum_id, limit=READ_SPECTRA))
            for s in new:
                name, seq = self._place(s)
                c.spectrum_id = s.id
                partial = None if s.alignment is None else bool(s.alignment.get("partial", True))
                self._expected[s.id] = set(fitted_channels(self.run.config, s))
                if ended or (partial is False and self._passed(s.id, set(s.fits), last_fitted)):
                    self._expected.pop(s.id)
                    yield from self._spectrum_event(s, name, seq)
                else:
                    c.waiting.append((s.id, name, seq))
            if len(new) < READ_SPECTRA:
                return

    def _spectrum_event(self, s: RecordedSpectrum, name: str, seq: int) -> Iterator[Document]:
        described = self._describe(name, self._spectrum_keys(s), s.t_start)
        if described:
            yield described
        yield "event", self._event(name, self._spectrum_data(s), s.t_end, seq)

    def _place(self, s: RecordedSpectrum) -> tuple[str, int]:
        """The spectrum's stream (scans of one edge and shape, or rows of one RIXS map) and
        its number in it, in the order recorded."""
        c = self.cursor
        if s.kind == "rixs_rows":
            shape = json.dumps(["rixs", s.map_id or s.scan_id])
            base = nexus_name(f"rixs_{s.map_id or s.scan_id}")
        else:
            shape = json.dumps([s.edge, s.channels, len(s.arrays["energy"])])
            base = nexus_name(s.edge or "unknown_edge")
        name = c.shapes.get(shape)
        if name is None:
            taken = sum(1 for v in c.shapes.values() if v == base or v.startswith(f"{base}_"))
            name = c.shapes[shape] = base if taken == 0 else f"{base}_{taken + 1}"
        c.placed[name] = c.placed.get(name, 0) + 1
        return name, c.placed[name]

    def _passed(self, sid: int, fitted: set[str], last_fitted: int) -> bool:
        """Has the analysis passed the spectrum: each channel it fits has a fit, or a later
        spectrum has one (a fit that failed leaves none)?"""
        if last_fitted > sid:
            return True
        if sid not in self._expected:  # placed before a restart: read once to know
            self._expected[sid] = set(fitted_channels(self.run.config, self.run.spectrum(sid)))
        return self._expected[sid] <= fitted

    def _spectrum_keys(self, s: RecordedSpectrum) -> dict[str, Any]:
        src = s.source
        keys: dict[str, dict[str, Any]] = {
            "spectrum_id": _key("integer", "operando"),  # its number in the run store
            "scan_id": _key("string", src),
            "edge": _key("string", src),
            "spot": _key("string", src),
            "spot_x": _key("number", src, units="mm"),
            "spot_y": _key("number", src, units="mm"),
            "trigger_id": _key("string", src),
            "t_start": _key("number", src, units="s"),
            "t_end": _key("number", src, units="s"),
            "partial": _key("boolean", "operando.align"),
            "dose_Gy": _key("number", "operando.analysis", units="Gy"),
            "scan_dose_Gy": _key("number", "operando.analysis", units="Gy"),
        }
        for k, _, dtype, units in _ALIGNED:
            keys[k] = _key(dtype, "operando.align", units=units)
        if s.kind == "rixs_rows":  # where these rows go in their map
            keys["map_id"] = _key("string", src)
            for k in ("row_offset", "rows_total"):
                keys[k] = _key("integer", src)
        for a in s.arrays:
            if a != "point_t":
                unit = "eV" if a == "energy" else None
                keys[nexus_name(a)] = _key("array", src, list(s.arrays[a].shape), unit)
        for channel in fitted_channels(self.run.config, s):
            c = nexus_name(channel)
            keys[f"valence_{c}"] = _key("number", "operando.analysis")
            keys[f"valence_uncertainty_{c}"] = _key("number", "operando.analysis")
            keys[f"fit_quality_{c}"] = _key("string", "operando.analysis")
            keys[f"fit_notes_{c}"] = _key("string", "operando.analysis")
            # a JSON object, valence -> fraction: its names come from the references
            keys[f"fractions_{c}"] = _key("string", "operando.analysis")
            keys[f"fit_{c}"] = _key("string", "operando.analysis")  # the whole fit, JSON
        return keys

    def _spectrum_data(self, s: RecordedSpectrum) -> dict[str, Any]:
        al = s.alignment or {}
        data: dict[str, Any] = {
            "spectrum_id": s.id,
            "scan_id": s.scan_id,
            "edge": s.edge,
            "spot": s.spot or "",
            "spot_x": s.spot_x,
            "spot_y": s.spot_y,
            "trigger_id": s.trigger_id or "",
            "t_start": s.t_start,
            "t_end": s.t_end,
            "partial": bool(al.get("partial", True)),
            "dose_Gy": (s.dose or {}).get("after_Gy"),
            "scan_dose_Gy": (s.dose or {}).get("dose_Gy"),
        }
        for k, field, _, _ in _ALIGNED:
            data[k] = al.get(field)
        if s.kind == "rixs_rows":
            data["map_id"] = s.map_id
            data["row_offset"], data["rows_total"] = s.row_offset, s.rows_total
        for a, values in s.arrays.items():
            if a != "point_t":
                data[nexus_name(a)] = values
        for channel in fitted_channels(self.run.config, s):
            c, fit = nexus_name(channel), s.fits.get(channel)
            data[f"valence_{c}"] = fit and fit.get("average_valence")
            data[f"valence_uncertainty_{c}"] = fit and fit.get("valence_uncertainty")
            # "unjudged": fitted before fits were judged; the notes say why not "good"
            data[f"fit_quality_{c}"] = fit and fit.get("quality", "unjudged")
            data[f"fit_notes_{c}"] = fit and "; ".join(fit.get("notes", ()))
            data[f"fractions_{c}"] = fit and json.dumps(fit.get("fractions", {}))
            data[f"fit_{c}"] = fit and json.dumps(fit)
        return {k: _clean(v) for k, v in data.items()}


def run_documents(run: Run) -> Iterator[Document]:
    """Every document of a recorded run, as a publisher that followed it gave them out."""
    yield from Composer(run).documents(ended=True)
