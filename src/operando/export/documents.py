"""``operando export RUN --format documents``: the run as event-model documents.

One run start, then a descriptor and events per stream, then the stop, each made and validated
by ``event_model.compose_run``, so the run goes into databroker or Tiled like any bluesky run:

- ``electrochemistry``: the potentiostat rows (Ewe, I, Q, soc, mode, step, cycle) as event pages
  of up to 1000 rows, each row's time its event time;
- one stream per edge and scan shape, e.g. ``Mn_L`` (and ``Mn_L_2`` should a scan of another
  length or channel set come): energy and every channel as arrays, the aligned electrochemistry
  (Ewe_mean, I_mean, soc, Q, cycle, mode, partial), spot, dose and per channel the valence with
  its uncertainty and fractions;
- ``rixs_<map>``: one event per RIXS row (excitation, emission axis, counts).

Written as JSON lines (``[name, doc]`` per line, as suitcase-jsonl) or a MessagePack stream of
``[name, doc]`` pairs (as suitcase-msgpack). NaN goes out as null.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from operando import __version__
from operando.export import Progress
from operando.export.nexus import nexus_name
from operando.export.tables import cycling_tables, units_of
from operando.store.reader import RecordedSpectrum, Run

Document = tuple[str, dict[str, Any]]
SERIALIZERS = ("jsonl", "msgpack")
PAGE_ROWS = 1000
_INTEGER = {"mode": int, "step": int, "cycle": int}

_ALIGNED = (
    ("Ewe_mean", "ewe_mean_V", "number", "V"),
    ("I_mean", "i_mean_mA", "number", "mA"),
    ("soc", "soc", "number", None),
    ("Q", "q_mAh", "number", "mA*h"),
    ("cycle", "cycle", "integer", None),
    ("mode", "mode", "integer", None),
)


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


class Uids:
    """Each document's uid from the run's (``Run.uid``) and its place in the run: the same
    run gives the same documents, so a consumer de-duplicates by uid (a document published
    twice after a restart, a run exported again)."""

    def __init__(self, run_uid: str) -> None:
        self.root = uuid.UUID(run_uid)

    def __call__(self, *place: object) -> str:
        return str(uuid.uuid5(self.root, "/".join(map(str, place))))

    def events(self, stream: str, seq_nums: list[int]) -> list[str]:
        return [self(stream, n) for n in seq_nums]


def run_documents(run: Run, progress: Progress | None = None) -> Iterator[Document]:
    import event_model

    t0, t1 = run.time_range()
    uids = Uids(run.uid)
    bundle = event_model.compose_run(
        uid=str(uids.root),
        time=t0,
        metadata={
            "plan_name": "operando",
            "operando_run": run.name,
            "experiment": run.config.name,
            "description": run.config.description,
            "program": f"operando {__version__}",
            "configuration": msgspec.to_builtins(run.config),
        },
    )
    yield "start", dict(bundle.start_doc)
    yield from _electrochemistry(bundle, run, uids)
    yield from _cycling(bundle, run, t0, uids)
    streams = _group_spectra(run, progress)
    for name, spectra in streams.items():
        yield from _spectrum_stream(bundle, name, spectra, uids)
    yield "stop", dict(bundle.compose_stop(time=t1, uid=uids("stop")))


def _electrochemistry(bundle: Any, run: Run, uids: Uids) -> Iterator[Document]:
    df = run.potentiostat()
    if df.empty:
        return
    src = "potentiostat"
    keys = {
        "Ewe": _key("number", src, units="V"),
        "I": _key("number", src, units="mA"),
        "Q": _key("number", src, units="mA*h"),
        "soc": _key("number", src),
        "mode": _key("integer", src),
        "step": _key("integer", src),
        "cycle": _key("integer", src),
    }
    d = bundle.compose_descriptor(
        name="electrochemistry", data_keys=keys, time=float(df.t[0]), uid=uids("electrochemistry")
    )
    yield "descriptor", dict(d.descriptor_doc)
    for start in range(0, len(df), PAGE_ROWS):
        part = df.iloc[start : start + PAGE_ROWS]
        t = part["t"].to_numpy(float)
        data = {k: _clean(part[k].to_numpy(_INTEGER.get(k, float))) for k in keys}
        seq = list(range(start + 1, start + len(part) + 1))
        page = d.compose_event_page(
            data=data,
            timestamps={k: t.tolist() for k in keys},
            seq_num=seq,
            time=t.tolist(),
            uid=uids.events("electrochemistry", seq),
        )
        yield "event_page", dict(page)


def _cycling(bundle: Any, run: Run, t0: float, uids: Uids) -> Iterator[Document]:
    """A stream of half-cycles (an event at each one's end), one of current steps (at each
    step), one of titration pulses and one of current interruptions (at each one's start):
    their scalar columns, units in the data keys (dQ/dV curves: NeXus and Tiled)."""
    tables = cycling_tables(run, t0)
    streams = (
        ("half_cycles", "t_end"),
        ("current_steps", "t_step"),
        ("gitt", "t_start"),
        ("interruptions", "t_start"),
    )
    for name, time_column in streams:
        table = tables[name]
        if table.empty:
            continue
        units = units_of(table)
        keys = {}
        for column in table.columns:
            kind = table[column].dtype.kind
            dtype = {"b": "boolean", "i": "integer", "O": "string"}.get(kind, "number")
            keys[str(column)] = _key(dtype, "operando.electrochem", units=units.get(str(column)))
        t = (table[time_column].to_numpy(float) + t0).tolist()
        d = bundle.compose_descriptor(name=name, data_keys=keys, time=t[0], uid=uids(name))
        yield "descriptor", dict(d.descriptor_doc)
        data = {k: [_clean(v) for v in table[k].tolist()] for k in keys}
        seq = list(range(1, len(table) + 1))
        page = d.compose_event_page(
            data=data,
            timestamps={k: t for k in keys},
            seq_num=seq,
            time=t,
            uid=uids.events(name, seq),
        )
        yield "event_page", dict(page)


def _group_spectra(run: Run, progress: Progress | None) -> dict[str, list[RecordedSpectrum]]:
    """Spectra by stream: scans of one edge and shape, or the rows of one RIXS map."""
    total = run.count_spectra()
    shapes: dict[tuple[Any, ...], str] = {}
    streams: dict[str, list[RecordedSpectrum]] = {}
    for n, s in enumerate(run.iter_spectra(), 1):
        if s.kind == "rixs_rows":
            shape: tuple[Any, ...] = ("rixs", s.map_id or s.scan_id)
            base = nexus_name(f"rixs_{s.map_id or s.scan_id}")
        else:
            shape = (s.edge, tuple(s.channels), len(s.arrays["energy"]))
            base = nexus_name(s.edge or "unknown_edge")
        name = shapes.get(shape)
        if name is None:
            taken = sum(1 for v in shapes.values() if v == base or v.startswith(f"{base}_"))
            name = shapes[shape] = base if taken == 0 else f"{base}_{taken + 1}"
        streams.setdefault(name, []).append(s)
        if progress is not None:
            progress(n, total)
    return streams


def _spectrum_stream(
    bundle: Any, name: str, spectra: list[RecordedSpectrum], uids: Uids
) -> Iterator[Document]:
    first = spectra[0]
    src = first.source
    keys: dict[str, dict[str, Any]] = {
        "scan_id": _key("string", src),
        "spot": _key("string", src),
        "t_start": _key("number", src, units="s"),
        "t_end": _key("number", src, units="s"),
        "partial": _key("boolean", "operando.align"),
        "dose_Gy": _key("number", "operando.analysis", units="Gy"),
    }
    for k, _, dtype, units in _ALIGNED:
        keys[k] = _key(dtype, "operando.align", units=units)
    arrays = {nexus_name(a): a for a in first.arrays if a != "point_t"}
    for k, a in arrays.items():
        keys[k] = _key("array", src, list(first.arrays[a].shape), "eV" if a == "energy" else None)
    fit_keys: dict[str, tuple[str, str, str | None]] = {}
    for s in spectra:
        for channel, fit in s.fits.items():
            c = nexus_name(channel)
            fit_keys[f"valence_{c}"] = (channel, "average_valence", None)
            fit_keys[f"valence_uncertainty_{c}"] = (channel, "valence_uncertainty", None)
            fit_keys[f"fit_quality_{c}"] = (channel, "quality", None)
            fit_keys[f"fit_notes_{c}"] = (channel, "notes", None)
            for comp in fit.get("fractions", {}):
                fit_keys[nexus_name(f"fraction_{c}_{comp}")] = (channel, "fractions", comp)
    for k, (_, field, _) in fit_keys.items():
        keys[k] = _key("string" if field in ("quality", "notes") else "number", "operando.analysis")
    d = bundle.compose_descriptor(name=name, data_keys=keys, time=first.t_start, uid=uids(name))
    yield "descriptor", dict(d.descriptor_doc)
    for seq, s in enumerate(spectra, 1):
        al = s.alignment or {}
        data: dict[str, Any] = {
            "scan_id": s.scan_id,
            "spot": s.spot or "",
            "t_start": s.t_start,
            "t_end": s.t_end,
            "partial": bool(al.get("partial", True)),
            "dose_Gy": (s.dose or {}).get("after_Gy"),
        }
        for k, field, _, _ in _ALIGNED:
            data[k] = al.get(field)
        for k, a in arrays.items():
            data[k] = s.arrays.get(a)
        for k, (channel, field, comp) in fit_keys.items():
            fit = s.fits.get(channel, {})
            if field == "notes":  # why the quality is not good, one phrase each
                data[k] = "; ".join(fit.get("notes", ())) if fit else None
            elif field == "quality":  # "unjudged": fitted before fits were judged
                data[k] = fit.get("quality", "unjudged") if fit else None
            else:
                data[k] = fit.get(field, {}).get(comp) if comp else fit.get(field)
        data = {k: _clean(v) for k, v in data.items()}
        ev = d.compose_event(
            data=data,
            timestamps=dict.fromkeys(data, s.t_end),
            time=s.t_end,
            seq_num=seq,
            uid=uids(name, seq),
        )
        yield "event", dict(ev)


def write_documents(
    run_dir: str | Path, out: str | Path, serializer: str, progress: Progress | None = None
) -> tuple[Path, dict[str, int]]:
    """Write the run's documents; return the file and how many documents of each kind."""
    if serializer not in SERIALIZERS:
        raise ValueError(f"serializer {serializer!r}: one of {', '.join(SERIALIZERS)}")
    out = Path(out)
    counts: dict[str, int] = {}
    enc = msgspec.json.Encoder() if serializer == "jsonl" else msgspec.msgpack.Encoder()
    with Run(run_dir) as run, open(out, "wb") as f:
        for name, doc in run_documents(run, progress):
            counts[name] = counts.get(name, 0) + 1
            f.write(enc.encode([name, doc]))
            if serializer == "jsonl":
                f.write(b"\n")
    return out, counts


def read_documents(path: str | Path) -> Iterator[Document]:
    """The documents of a file ``write_documents`` wrote (either serializer)."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        for line in data.splitlines():
            if line.strip():
                name, doc = msgspec.json.decode(line)
                yield name, doc
        return
    import msgpack  # a stream of concatenated objects: msgspec decodes one object only

    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    for name, doc in unpacker:
        yield name, doc
