"""A run followed in a Tiled server (``operando dashboard --tiled URI --run ID``): the rows a
dashboard draws, from what ``operando publish --tiled`` writes there (``operando.tiledbus``:
a bluesky run, a stream an event-model stream), so a dashboard on any machine that reaches
the Tiled server shows the run, live while it records and afterwards.

Each call gives what is new since the last one, as ``RunFollower`` does from the run store:
the ``seq_num`` values read of each stream are the watermark (rows come in no set order with
PostgreSQL as Tiled's tabular storage; event n's arrays are at row n - 1). Each stream's table
comes through Tiled's websocket stream (``dashboards.tiledstream``), so an idle refresh asks
the server nothing; a server without a streaming cache is polled, a table's ``seq_num``
column first and the rest only when it has news (Tiled 0.2's table API has no row offset).
A new spectrum's arrays are read over HTTP, one slice request per array for a stream's new
rows.

What Tiled holds is what the composer gave out: a spectrum appears once its alignment is
whole and the analysis passed it, a half-cycle once it closed, a rest's relaxation fits once a
later rest has one, a RIXS map's reduction (the ROI ratio) once the map has all its rows (or
the run ended); the map itself is drawn from its rows as they come.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from operando.dashboards.tiledstream import FollowedTable

from operando.config import ConfigError, ExperimentConfig, parse_config
from operando.store.follow import (
    AlignedSpectrum,
    ChannelFit,
    CyclingEntry,
    EventEntry,
    FittedSpectrum,
    RelaxationEntry,
    RixsEntry,
    SpectrumArrays,
    SpotDose,
)
from operando.store.schema import StoreError

log = logging.getLogger(__name__)

TILED_MISSING = "a dashboard from Tiled needs the tiled client: pip install 'operando[tiled]'"
# the store's derived tables, by the stream the composer gives each
CYCLING_STREAMS = {
    "half_cycles": ("half_cycles", "index"),
    "current_steps": ("current_steps", "t_step"),
    "gitt_pulses": ("gitt", "t_start"),
    "interruptions": ("interruptions", "t_start"),
}
SPECTRA_KEPT = 2000  # spectra whose fits and arrays are kept for drawing (the newest)
LIST_S = 2.0  # how often the run's streams are listed (a new one shows this late at most)


class RemoteError(RuntimeError):
    """A Tiled server or run that cannot be used (said in one line)."""


def _none(v: Any) -> Any:
    """Tiled gives a missing number as NaN, a missing string as None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def find_run(uri: str, run: str, api_key: str | None) -> Any:
    """The run's container in Tiled: by its uid (``operando inspect`` names it), or by the
    run directory's name in its start document."""
    try:
        from tiled.client import from_uri
        from tiled.client.utils import ClientError
        from tiled.queries import Key
    except ImportError:
        raise RemoteError(TILED_MISSING) from None
    import httpx

    try:
        client = from_uri(uri, api_key=api_key)
        if run in client:
            return client[run]
        found = client.search(Key("start.operando_run") == run)
        keys = list(found)
    except ClientError as e:
        raise RemoteError(f"{uri}: {e} (--api-key or $TILED_API_KEY)") from None
    except (httpx.HTTPError, OSError) as e:
        raise RemoteError(f"{uri}: cannot reach the Tiled server ({e})") from None
    if not keys:
        raise RemoteError(f"{uri}: no run {run!r} (give its uid, or its run directory's name)")
    if len(keys) > 1:
        raise RemoteError(f"{uri}: {len(keys)} runs named {run!r}: give the uid ({keys[0]}, ...)")
    return found[keys[0]]


class TiledFollower:
    """The rows of a run in Tiled, each call what is new (see the module's docstring)."""

    def __init__(self, node: Any, uri: str, websocket: bool = True) -> None:
        self.node = node
        self.websocket = websocket  # False: every table polled (a bench compares the two)
        self.label = f"{uri}/{node.item['id']} ({node.metadata['start'].get('operando_run')})"
        self.start: dict[str, Any] = dict(node.metadata["start"])
        self.rowid = 0  # a running number for the rows handed out (the views' watermarks)
        self.streams: dict[str, Any] = {}  # name -> its container
        self.keys: dict[str, dict[str, Any]] = {}  # name -> its descriptor's data keys
        self.followed: dict[str, FollowedTable] = {}  # name -> its table, followed
        self.names: set[str] = set()  # the run's streams, as last listed
        self.listed = -math.inf  # time.monotonic() of that
        # rows read of the spectrum streams, waiting for the call that hands them out
        self.pending: dict[str, list[dict[str, Any]]] = {"align": [], "fits": [], "dose": []}
        # spectrum id -> its arrays, and its channels' fits: for drawing the newest
        self.arrays: dict[int, SpectrumArrays] = {}
        self.channel_fits: dict[int, list[ChannelFit]] = {}
        self.kept: deque[int] = deque()

    # -- the run ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return True

    def close(self) -> None:
        for table in self.followed.values():
            table.close()
        self.node.context.close()

    def config(self) -> ExperimentConfig | None:
        """The experiment, from the start document (its reference files are the monitor's:
        fits are drawn without their model where they are not at the same path here)."""
        try:
            return parse_config(self.start.get("configuration") or {}, self.label)
        except ConfigError as e:
            log.warning("%s", e)
            return None

    def _names(self) -> set[str]:
        """The run's streams, listed again every ``LIST_S`` (a new edge, scan shape or RIXS
        map is a new stream)."""
        now = time.monotonic()
        if now - self.listed >= LIST_S:
            self.listed = now
            self.names = set(self.node)
        return self.names

    def _stream(self, name: str) -> Any | None:
        if name not in self.streams:
            if name not in self._names():
                return None
            node = self.node[name]
            self.streams[name] = getattr(node, "base", node)  # a composite: its container
            self.keys[name] = node.metadata.get("data_keys", {})  # a descriptor's: fixed
        return self.streams[name]

    def _table(self, name: str) -> pd.DataFrame:
        """A stream's events not read before, in ``seq_num`` order (``FollowedTable``)."""
        import httpx

        try:
            if name not in self.followed:
                stream = self._stream(name)
                if stream is None or "internal" not in stream:
                    return pd.DataFrame()
                self.followed[name] = FollowedTable(stream["internal"], name, self.websocket)
            return self.followed[name].new()
        except (httpx.HTTPError, OSError) as e:
            raise StoreError(f"reading {name} from Tiled: {e}") from None

    def _next_rowid(self) -> int:
        self.rowid += 1
        return self.rowid

    # -- the rows a view asks for -------------------------------------------------------------
    def cell_rows(self, link: str | None, chunk: int) -> np.ndarray | None:
        new = self._table("electrochemistry")
        if new.empty:
            return None
        # a missing SOC comes as None: NaN, as the store's rows give it
        columns = new[["time", "Ewe", "I", "soc", "mode"]].apply(pd.to_numeric, errors="coerce")
        return columns.to_numpy(np.float64)

    def _pull(self) -> None:
        """New rows of every spectrum stream, for alignments, fits and doses alike."""
        import httpx

        try:
            for name in sorted(self._names()):
                stream = self._stream(name)
                keys = self.keys.get(name, {})
                if stream is not None and "spectrum_id" in keys:
                    self._pull_stream(name, stream, keys)
        except (httpx.HTTPError, OSError) as e:
            raise StoreError(f"reading the spectra from Tiled: {e}") from None

    def _pull_stream(self, name: str, stream: Any, keys: dict[str, Any]) -> None:
        rows = self._table(name).to_dict("records")
        if not rows:
            return
        # each array's rows of these spectra in one request (event n is at row n - 1)
        lo, hi = int(rows[0]["seq_num"]), int(rows[-1]["seq_num"])
        block = {
            k: np.asarray(stream[k][lo - 1 : hi])
            for k, key in keys.items()
            if key["dtype"] == "array"
        }
        for row in rows:
            at = int(row["seq_num"]) - lo
            row = {k: _none(v) for k, v in row.items()}
            self._place(name, row, {k: v[at] for k, v in block.items()})

    def _place(self, name: str, row: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        sid = int(row["spectrum_id"])
        if "row_offset" in row:  # RIXS rows
            self.arrays[sid] = SpectrumArrays(
                ("counts",),
                arrays,
                str(row.get("map_id") or row.get("scan_id")),
                int(row["row_offset"]),
                int(row["rows_total"]),
            )
        else:
            self.arrays[sid] = SpectrumArrays(
                tuple(k for k in arrays if k != "energy"), arrays, "", 0, 0
            )
        self.kept.append(sid)
        while len(self.kept) > SPECTRA_KEPT:
            old = self.kept.popleft()
            self.arrays.pop(old, None)
            self.channel_fits.pop(old, None)
        row["_stream"] = name
        for queue in self.pending.values():
            queue.append(row)

    def _drain(self, what: str) -> list[dict[str, Any]]:
        self._pull()
        rows, self.pending[what] = self.pending[what], []
        return rows

    def alignments(self, again: Iterable[int]) -> list[AlignedSpectrum]:
        """New spectra (those in Tiled are final: never realigned, so ``again`` is moot)."""
        out = []
        for r in self._drain("align"):
            sid = int(r["spectrum_id"])
            out.append(
                AlignedSpectrum(
                    rowid=self._next_rowid(),
                    spectrum_id=sid,
                    raw_id=sid,  # spectrum_arrays finds it by its id
                    link=r["_stream"],
                    kind="rixs_rows" if "row_offset" in r else "xas_scan",
                    edge=r.get("edge") or "",
                    t_start=float(r["t_start"]),
                    t_end=float(r["t_end"]),
                    spot=r.get("spot") or None,
                    x_mm=r.get("spot_x"),
                    y_mm=r.get("spot_y"),
                    trigger_id=r.get("trigger_id") or None,
                    partial=int(bool(r.get("partial"))),
                    reason="",
                    soc=r.get("soc"),
                    Ewe=r.get("Ewe_mean"),
                    I=r.get("I_mean"),
                    revision=0,
                    q_mAh=r.get("Q"),
                )
            )
        return out

    def fits(self) -> list[FittedSpectrum]:
        """Each fitted channel of the new spectra (the key ``fit_<channel>``: the whole fit)."""
        out = []
        for r in self._drain("fits"):
            sid = int(r["spectrum_id"])
            for key, text in r.items():
                if not key.startswith("fit_") or key.startswith("fit_quality_") or not text:
                    continue
                if key.startswith("fit_notes_"):
                    continue
                channel = key.removeprefix("fit_")
                fit = json.loads(text)
                quality = r.get(f"fit_quality_{channel}") or "unjudged"
                notes = json.dumps(fit.get("notes", []))
                self.channel_fits.setdefault(sid, []).append(
                    ChannelFit(self._next_rowid(), sid, channel, text, quality, notes)
                )
                out.append(
                    FittedSpectrum(
                        rowid=self.rowid,
                        spectrum_id=sid,
                        channel=channel,
                        valence=fit.get("average_valence"),
                        valence_unc=fit.get("valence_uncertainty"),
                        chi2_red=fit.get("chi2_red"),
                        quality=quality,
                        notes=notes,
                        fractions=json.dumps(fit.get("fractions", {})),
                        uncertainties=json.dumps(fit.get("uncertainties", {})),
                        doc=text,
                        edge=r.get("edge") or "",
                        t_start=float(r["t_start"]),
                        t_end=float(r["t_end"]),
                        soc=r.get("soc"),
                        raw_id=sid,
                    )
                )
        return out

    def fits_of(self, spectrum_id: int) -> list[ChannelFit]:
        return list(self.channel_fits.get(spectrum_id, []))

    def doses(self) -> list[SpotDose]:
        out = []
        for r in self._drain("dose"):
            if r.get("scan_dose_Gy") is None or not r.get("spot"):
                continue
            out.append(
                SpotDose(
                    self._next_rowid(),
                    int(r["spectrum_id"]),
                    r["spot"],
                    float(r["scan_dose_Gy"]),
                    float(r["dose_Gy"]),
                    float(r["t_end"]),
                    r.get("spot_x"),
                    r.get("spot_y"),
                )
            )
        return out

    def events(self) -> list[EventEntry]:
        new = self._table("event_log")
        return [
            EventEntry(
                int(r["seq_num"]),
                round(float(r["time"]) * 1e9),
                _none(r["t"]),
                str(r["kind"]),
                _none(r["source"]) or None,
                str(r["detail"]),
            )
            for r in new.to_dict("records")
        ]

    def relaxation(self) -> list[RelaxationEntry]:
        """Each rest's relaxation fits, once final (a later rest began, or the run ended)."""
        t0 = float(self.start["time"])  # the stream's rest_start is s since the run's start
        return [
            RelaxationEntry(
                self._next_rowid(),
                float(r["rest_start"]) + t0,
                str(r["series"]),
                str(r["quantity"]),
                str(r["document"]),
            )
            for r in self._table("relaxation").to_dict("records")
        ]

    def rixs(self) -> list[RixsEntry]:
        """Each RIXS map's reduction, once final (all its rows, or the run ended)."""
        return [
            RixsEntry(
                self._next_rowid(),
                str(r["map_id"]),
                int(r["rows"]),
                int(r["rows_total"]),
                _none(r["roi"]),
                _none(r["ratio"]),
                _none(r["soc"]),
            )
            for r in self._table("map_reductions").to_dict("records")
        ]

    def cycling(self, table: str) -> list[CyclingEntry]:
        stream, key = CYCLING_STREAMS[table]
        new = self._table(stream)
        if new.empty or "document" not in new:
            return []
        out = []
        for text in new["document"]:
            doc = json.loads(text)
            out.append(CyclingEntry(self._next_rowid(), float(doc[key]), text))
        return out

    def spectrum_arrays(self, raw_id: int) -> SpectrumArrays | None:
        """One of the newest spectra's arrays (read with its row: ``_pull``)."""
        return self.arrays.get(raw_id)


def open_remote(uri: str, run: str, api_key: str | None) -> TiledFollower:
    return TiledFollower(find_run(uri, run, api_key), uri)
