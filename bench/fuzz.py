"""Fuzzing: malformed input into the frame decoder (through the monitor's ingest, with its
analysis, and a real run store), the EC-Lab text reader, the MethodSCRIPT parsers, and real
instrument files damaged. No crash, every bad message recorded with its error.

    python bench/fuzz.py [--n 100000] [--seed 1]

Inputs are mutations of valid input (bit flips, truncation, insertion, splices, dropped or
repeated frames, headers re-encoded with fields of the wrong type, out of range or missing,
arrays relabelled as another dtype or filled with NaN and infinities, random bytes): seeded
and reproducible. Prints one JSON line per target:
- ``frames``: inputs, recorded (raw log rows; must equal inputs), malformed (each with its
  error; a mutation may still be a valid message), derive, align and analysis errors (must be
  0; numeric overflow in them raises), crashes (0).
- ``eclab_mpt`` / ``methodscript``: inputs, parsed, refused with our error, crashes (must be 0).
- ``bluesky``: documents from a bluesky proxy into its driver (publishing on a real socket):
  taken or refused (counted, with why); crashes (escaping the driver's handler: must be 0).
- ``files``: the real files of ``shared/data`` (beamline scan files in column text and HDF5,
  EC-Lab .mpr) with bytes damaged, read as the drivers read them: read, or refused naming the
  file (``reader_died``: of those, how many crashed libhdf5 in the reader process); crashes
  (must be 0).
Exit status 1 if any target crashed or lost an input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.asyncio
from operando.drivers.base import DriverOptions
from operando.drivers.bluesky import BlueskyDocuments
from operando.drivers.eclab import MptFormatError, MptReader
from operando.drivers.eclab_mpr import read_mpr
from operando.drivers.isolated_reader import IsolatedReader
from operando.drivers.methodscript import (
    MethodScriptError,
    decode_value,
    encode_value,
    parse_error,
    parse_package,
)
from operando.drivers.sim.spectra import export_references

from operando.config import AlignmentConfig, AnalysisConfig, SourceConfig
from operando.ingest import Ingest
from operando.protocol import (
    MODE_CC,
    PotentiostatBatch,
    RIXSRows,
    SeriesStart,
    Spot,
    XASScan,
    encode,
)
from operando.scanfile import ScanFileError
from operando.store import Run, RunStore, open_readonly
from operando.transport import Publisher

ECLAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "eclab"
XAS = ECLAB.parent / "xas"


SAME_SIZE = ("<f8", "<i8", "<u8", "<c8", "<f4", "<i4", "<u4", "<i2", "<u2", "|i1", "|u1", "|b1")


class Mutator:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def overwrite(self, b: bytes) -> bytes:
        """One to twenty bytes of a binary file overwritten, its length kept."""
        out = bytearray(b)
        for _ in range(int(self.rng.integers(1, 21))):
            out[int(self.rng.integers(0, len(out)))] = int(self.rng.integers(0, 256))
        return bytes(out)

    def bytes_(self, b: bytes) -> bytes:
        """One to three byte-level mutations."""
        r = self.rng
        out = bytearray(b)
        for _ in range(int(r.integers(1, 4))):
            op = int(r.integers(0, 6))
            n = len(out)
            if op == 0 and n:  # flip bits
                i = int(r.integers(0, n))
                out[i] ^= 1 << int(r.integers(0, 8))
            elif op == 1 and n:  # truncate
                del out[int(r.integers(0, n)) :]
            elif op == 2:  # insert random bytes
                i = int(r.integers(0, n + 1))
                out[i:i] = r.bytes(int(r.integers(1, 16)))
            elif op == 3 and n:  # an interesting byte
                out[int(r.integers(0, n))] = int(r.choice([0, 0x7F, 0x80, 0xC1, 0xFF, 0xDD]))
            elif op == 4 and n > 4:  # splice a chunk elsewhere
                i, j = sorted(int(x) for x in r.integers(0, n, 2))
                k = int(r.integers(0, n))
                out[k:k] = out[i:j]
            elif op == 5:  # random bytes instead
                out = bytearray(r.bytes(int(r.integers(0, 64))))
        return bytes(out)

    def value(self) -> Any:
        return self.rng.choice(
            np.array(
                [
                    None,
                    -1,
                    2**63,  # this and the next: integers MessagePack carries, SQLite cannot
                    2**64 - 1,
                    1.5,
                    "x" * 3,
                    b"\x00",
                    [],
                    {},
                    [1, "a"],
                    {"k": 1},
                    True,
                    "nan",
                    "<c8",  # this and the next: dtypes of the same size as "<f8", not real
                    "|b1",
                ],
                dtype=object,
            )
        )

    def header(self, raw: bytes) -> bytes:
        """Decode the MessagePack header, damage a field, encode it again."""
        h = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        keys = list(h)
        r = self.rng
        op = int(r.integers(0, 4))
        if op == 0 and keys:
            del h[keys[int(r.integers(0, len(keys)))]]
        elif op == 1 and keys:
            h[keys[int(r.integers(0, len(keys)))]] = self.value()
        elif op == 2:
            h[r.bytes(4).hex()] = self.value()
        elif op == 3 and "arrays" in h and h["arrays"]:
            k = int(r.integers(0, len(h["arrays"])))
            spec = list(h["arrays"][k])
            spec[int(r.integers(0, 3))] = self.value()
            h["arrays"] = [*h["arrays"][:k], spec, *h["arrays"][k + 1 :]]
        return msgpack.packb(h, use_bin_type=True, default=str)

    def relabel(self, raw: bytes) -> bytes:
        """An array's dtype swapped for another of the same size: the frame still fits, its
        values are now complex, boolean, unsigned..."""
        h = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        k = int(self.rng.integers(0, len(h["arrays"])))
        spec = list(h["arrays"][k])
        same_size = [d for d in SAME_SIZE if np.dtype(d).itemsize == np.dtype(spec[1]).itemsize]
        spec[1] = str(self.rng.choice(same_size))
        h["arrays"] = [*h["arrays"][:k], spec, *h["arrays"][k + 1 :]]
        return msgpack.packb(h, use_bin_type=True)

    def message(self, frames: list[bytes]) -> list[bytes]:
        r = self.rng
        frames = list(frames)
        op = int(r.integers(0, 7))
        if op == 0:
            i = int(r.integers(0, len(frames)))
            frames[i] = self.bytes_(frames[i])
        elif op == 1:
            try:
                frames[1] = self.header(frames[1])
            except Exception:
                frames[1] = self.bytes_(frames[1])
        elif op == 2:  # a frame dropped
            del frames[int(r.integers(0, len(frames)))]
        elif op == 3:  # a frame repeated
            i = int(r.integers(0, len(frames)))
            frames.insert(i, frames[i])
        elif op == 4 and len(frames) > 2:  # an array's values not finite (as float64)
            i = int(r.integers(2, len(frames)))
            fill = float(r.choice([np.nan, np.inf, -np.inf]))
            frames[i] = np.full(len(frames[i]) // 8 + 1, fill).tobytes()[: len(frames[i])]
        elif op == 5 and len(frames) > 2:
            frames[1] = self.relabel(frames[1])
        else:  # an array frame of the wrong length
            if len(frames) > 2:
                i = int(r.integers(2, len(frames)))
                frames[i] = frames[i][: len(frames[i]) // 2]
            else:
                frames.append(r.bytes(8))
        return frames


def valid_messages() -> list[list[bytes]]:
    """One of each kind the monitor derives from, with arrays."""
    t = 1.8e9 + np.arange(10) * 0.1
    e = np.linspace(630, 660, 64)
    msgs = [
        encode(SeriesStart(source="s", session="a", seq=0, instrument="spectrometer")),
        encode(
            PotentiostatBatch(source="p", session="a", seq=1, t_ns=int(t[-1] * 1e9)),
            {
                "t": t,
                "Ewe": np.full(10, 3.7),
                "I": np.full(10, 0.5),
                "mode": np.full(10, MODE_CC, np.int8),
                "step": np.zeros(10, np.int32),
                "cycle": np.zeros(10, np.int32),
            },
        ),
        encode(
            XASScan(
                source="s",
                session="a",
                seq=2,
                scan_id="x",
                edge="Mn-L",
                t_start_ns=int(t[0] * 1e9),
                t_end_ns=int(t[-1] * 1e9),
                channels=("I0", "TEY"),
                spot=Spot(id="A1"),
            ),
            {"energy": e, "I0": np.ones(64), "TEY": e / 600},
        ),
        encode(
            RIXSRows(
                source="s",
                session="a",
                seq=3,
                scan_id="m",
                map_id="m",
                t_start_ns=int(t[0] * 1e9),
                t_end_ns=int(t[-1] * 1e9),
            ),
            {
                "excitation": np.array([640.0]),
                "emission": np.linspace(600, 650, 32),
                "counts": np.ones((1, 32)),
            },
        ),
    ]
    return [[bytes(memoryview(f)) for f in m] for m in msgs]


def next_in_sequence(frames: list[bytes], seq: int) -> list[bytes]:
    h = msgpack.unpackb(frames[1], raw=False)
    return [frames[0], msgpack.packb({**h, "seq": seq}, use_bin_type=True), *frames[2:]]


def fuzz_frames(n: int, seed: int) -> dict[str, Any]:
    mut = Mutator(seed)
    base = valid_messages()
    crashes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        store = RunStore(run)
        sources = [
            SourceConfig(name="potentiostat", role="potentiostat", data="tcp://127.0.0.1:1"),
            SourceConfig(name="spectrometer", role="spectrometer", data="tcp://127.0.0.1:2"),
        ]
        # with the analysis on: mutated spectra reach the fits and the dose ledger too
        refs = export_references("Mn-L", Path(tmp) / "mn-l.csv")
        analysis = AnalysisConfig(
            references={"Mn-L": str(refs)},
            dose_budget_Gy=5e6,
            spot_area_mm2=0.01,
            sample_formula="LiMn2O4",
            sample_density_g_cm3=4.2,
        )
        ingest = Ingest(store, sources, AlignmentConfig(capacity_mAh=1.0), None, analysis, run)
        sent = Counter[str]()
        t0 = time.perf_counter()
        # numbers that overflow in derived state (inf, then NaN in every later alignment) are
        # a defect, not a warning: raised, they count as derive or align errors
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            for i in range(n):
                link = "potentiostat" if i % len(base) == 1 else "spectrometer"
                # each input the next seq of its link: a repeated seq is a duplicate, and the
                # monitor derives nothing from a duplicate (the mutated values would go untried)
                frames = mut.message(next_in_sequence(base[i % len(base)], sent[link]))
                sent[link] += 1
                try:
                    ingest.receive(link, frames)
                    if i % 1000 == 999:
                        ingest.align_due()
                except Exception:
                    crashes[traceback.format_exc(limit=3).splitlines()[-1]] += 1
            ingest.finish()
        store.flush()
        store.close()
        elapsed = time.perf_counter() - t0
        conn = open_readonly(run)
        recorded, malformed, without_error = conn.execute(
            "SELECT count(*), sum(status = 'malformed'), "
            "sum(status = 'malformed' AND (error IS NULL OR error = '')) FROM raw"
        ).fetchone()
        derive_errors, align_errors, analysis_errors, fits = conn.execute(
            "SELECT sum(kind = 'derive_error'), sum(kind = 'align_error'), "
            "sum(kind = 'analysis_error'), (SELECT count(*) FROM analysis) FROM events"
        ).fetchone()
        examples = [
            e for (e,) in conn.execute("SELECT DISTINCT error FROM raw WHERE error IS NOT NULL")
        ]
        conn.close()
    return {
        "target": "frames",
        "inputs": n,
        "recorded": recorded,
        "malformed": malformed,
        "malformed_without_error": without_error,
        "derive_errors": derive_errors,
        "align_errors": align_errors,
        # an exception in the analysis (a fit that fails says why in a fit_failed event)
        "analysis_errors": analysis_errors,
        "fits": fits,
        "crashes": sum(crashes.values()),
        "crash_kinds": dict(crashes),
        "distinct_errors": len(examples),
        "error_examples": sorted(examples, key=len)[:5],
        "inputs_per_s": round(n / elapsed),
        "ok": recorded == n
        and not (crashes or derive_errors or align_errors or analysis_errors or without_error),
    }


def fuzz_sparse_batches(n: int, seed: int) -> dict[str, Any]:
    """Potentiostat batches of every shape a real instrument sends: 1 to 2,000 rows, a row
    every 0.1 s to 20 min (a batch up to days long, far beyond the 6 h history), pauses
    between batches, an occasional batch out of time order. Every row must be derived (in the
    potentiostat table, with its SOC), none counted as not derived."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        store = RunStore(run)
        sources = [SourceConfig(name="potentiostat", role="potentiostat", data="tcp://127.0.0.1:1")]
        ingest = Ingest(store, sources, AlignmentConfig(capacity_mAh=1e6), None, None, run)
        t_next, rows_sent, crashes = 1.8e9, 0, Counter[str]()
        t0 = time.perf_counter()
        for seq in range(n):
            k = int(rng.choice([1, 5, 50, 500, 2000], p=[0.2, 0.3, 0.3, 0.15, 0.05]))
            step = float(rng.choice([0.1, 1.0, 120.0, 1200.0]))
            t = t_next + np.cumsum(rng.uniform(0.5, 1.5, k) * step)
            if rng.random() < 0.02:  # out of time order within the batch
                t = rng.permutation(t)
            t_next = float(t.max()) + float(rng.choice([0.0, 60.0, 36_000.0]))
            frames = encode(
                PotentiostatBatch(
                    source="potentiostat", session="f", seq=seq, t_ns=int(t_next * 1e9)
                ),
                {
                    "t": t,
                    "Ewe": rng.uniform(3.0, 4.2, k),
                    "I": rng.choice([0.0, 0.5, -0.5], k),
                    "mode": np.full(k, MODE_CC, np.int8),
                    "step": np.zeros(k, np.int32),
                    "cycle": np.zeros(k, np.int32),
                },
            )
            try:
                ingest.receive("potentiostat", [bytes(memoryview(f)) for f in frames])
            except Exception:
                crashes[traceback.format_exc(limit=3).splitlines()[-1]] += 1
            rows_sent += k
        ingest.finish()
        store.flush()
        store.close()
        elapsed = time.perf_counter() - t0
        with Run(run) as r:
            cell = r.potentiostat()
            not_derived = r.summary()["sources"]["potentiostat"]["not_derived"]
    return {
        "target": "sparse_batches",
        "inputs": n,
        "rows_sent": rows_sent,
        "rows_derived": len(cell),
        "rows_without_soc": int(cell["soc"].isna().sum()),
        "not_derived": not_derived,
        "crashes": sum(crashes.values()),
        "crash_kinds": dict(crashes),
        "inputs_per_s": round(n / elapsed),
        "ok": len(cell) == rows_sent
        and not_derived == 0
        and not crashes
        and not cell["soc"].isna().any(),
    }


def fuzz_follow_chunks(n: int, seed: int) -> dict[str, Any]:
    """Each real EC-Lab export fed as --follow reads it: in chunks of any size, cut anywhere
    (mid-line, mid-number, mid-header), and ended without its newline as EC-Lab leaves it.
    The rows must be exactly those of reading it whole."""
    rng = np.random.default_rng(seed)
    files = sorted(ECLAB.glob("*.mpt"))
    if not files:
        return {"target": "follow_chunks", "skipped": f"no .mpt files in {ECLAB}", "ok": True}
    whole = {}
    for f in files:
        r = MptReader(f.name)
        whole[f] = r.feed(f.read_bytes() + b"\n")
    differ, crashes = 0, Counter[str]()
    for i in range(n):
        f = files[i % len(files)]
        data = f.read_bytes().rstrip(b"\r\n")
        reader = MptReader(f.name)
        parts, at = [], 0
        try:
            while at < len(data):
                size = int(rng.choice([1, 7, 100, 4096, 65536]))
                parts.append(reader.feed(data[at : at + size]))
                at += size
            assert reader.pending_is_row()  # --settle publishes it
            parts.append(reader.feed(b"\n"))
            got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            if any(not np.array_equal(got[k], whole[f][k], equal_nan=True) for k in got):
                differ += 1
        except Exception:
            crashes[traceback.format_exc(limit=3).splitlines()[-1]] += 1
    return {
        "target": "follow_chunks",
        "inputs": n,
        "files": len(files),
        "differ": differ,
        "crashes": sum(crashes.values()),
        "crash_kinds": dict(crashes),
        "ok": not differ and not crashes,
    }


def _parser_outcome(
    target: str, n: int, parsed: int, refused: int, crashes: Counter[str]
) -> dict[str, Any]:
    return {
        "target": target,
        "inputs": n,
        "parsed": parsed,
        "refused": refused,
        "crashes": sum(crashes.values()),
        "crash_kinds": dict(crashes),
        "ok": not crashes,
    }


def fuzz_eclab(n: int, seed: int) -> dict[str, Any]:
    mut = Mutator(seed)
    files = sorted(ECLAB.glob("*.mpt"))
    if not files:
        return {"target": "eclab_mpt", "skipped": f"no .mpt files in {ECLAB}", "ok": True}
    # the head of each real file (header and first rows): what the reader meets first
    heads = [f.read_bytes()[:20000] for f in files]
    parsed = refused = lines_refused = 0
    crashes: Counter[str] = Counter()
    for i in range(n):
        data = mut.bytes_(heads[i % len(heads)])
        reader = MptReader(f"fuzz-{i}")
        try:
            # fed in two pieces, as a file still being written
            cut = int(mut.rng.integers(0, len(data) + 1))
            reader.feed(data[:cut])
            reader.feed(data[cut:])
            parsed += 1
            lines_refused += len(reader.take_refused())  # left out and named, not fatal
        except MptFormatError:
            refused += 1
        except Exception:
            crashes[traceback.format_exc(limit=3).splitlines()[-1]] += 1
    return {
        **_parser_outcome("eclab_mpt", n, parsed, refused, crashes),
        "lines_refused": lines_refused,
    }


def fuzz_methodscript(n: int, seed: int) -> dict[str, Any]:
    mut = Mutator(seed)
    lines = [
        "Pda8012345u;ba7F85E36p,14,288",
        "Pab7F85E36u;ba48D503Dp,14,288",
        f"Pda{encode_value(3.9)};ba{encode_value(-4.5e-4)};ab{encode_value(3.9)}",
        "!0004: Line 2, Col 1",
        "M0007",
        "*",
        "e",
    ]
    parsed = refused = 0
    crashes: Counter[str] = Counter()
    for i in range(n):
        line = mut.bytes_(lines[i % len(lines)].encode()).decode("latin-1")
        try:
            if line.startswith("!"):
                parse_error(line)
            elif line.startswith("P"):
                parse_package(line)
            else:
                decode_value(line[:8])
            parsed += 1
        except MethodScriptError:
            refused += 1
        except Exception:
            crashes[traceback.format_exc(limit=3).splitlines()[-1]] += 1
    return _parser_outcome("methodscript", n, parsed, refused, crashes)


def bluesky_messages() -> list[bytes]:
    """A step scan as a bluesky RemoteDispatcher path carries it: start, descriptor, events,
    stop, each 'prefix name msgpack'."""
    energy = np.linspace(630.0, 660.0, 5)
    docs: list[tuple[str, dict[str, Any]]] = [
        ("start", {"uid": "r1", "time": 1.8e9, "plan_name": "scan", "edge": "Mn-L"}),
        (
            "descriptor",
            {
                "uid": "d1",
                "run_start": "r1",
                "name": "primary",
                "time": 1.8e9,
                "data_keys": {k: {"dtype": "number", "shape": []} for k in ("energy", "tey")},
            },
        ),
    ]
    for k, e in enumerate(energy):
        t = 1.8e9 + k
        docs.append(
            (
                "event",
                {
                    "uid": f"e{k}",
                    "descriptor": "d1",
                    "time": t,
                    "seq_num": k + 1,
                    "data": {"energy": float(e), "tey": 0.1 * k},
                    "timestamps": {"energy": t, "tey": t},
                },
            )
        )
    docs.append(("stop", {"uid": "s1", "run_start": "r1", "time": 1.8e9 + 6}))
    return [b"p " + name.encode() + b" " + msgpack.packb(doc) for name, doc in docs]


def fuzz_bluesky(n: int, seed: int) -> dict[str, Any]:
    """Proxy messages into the bluesky driver, publishing on a real socket: each document is
    taken or refused (counted, with why); nothing escapes to stop the driver."""

    async def run() -> dict[str, Any]:
        mut = Mutator(seed)
        base = bluesky_messages()
        ctx = zmq.asyncio.Context()
        opts = DriverOptions(name="bluesky", data="", command="")
        driver = BlueskyDocuments(opts, "tcp://127.0.0.1:1")
        driver.pub = Publisher(ctx, "tcp://127.0.0.1:*", "bluesky", heartbeat_s=3600)
        crashes: Counter[str] = Counter()
        try:
            for i in range(n):
                prefix, name, payload = base[i % len(base)].split(b" ", 2)
                if i % 3 == 0:  # a third arrive intact: runs complete and scans are sent
                    message = base[i % len(base)]
                elif i % 3 == 1:
                    message = mut.bytes_(base[i % len(base)])
                else:
                    message = b" ".join((prefix, name, mut.header(payload)))
                try:
                    await driver.handle(message)
                except Exception:
                    crashes[traceback.format_exc(limit=3).splitlines()[-1]] += 1
        finally:
            await driver.pub.close()
            ctx.destroy(linger=0)
        refused, taken = driver.counts["refused"], driver.counts["documents"]
        return {
            **_parser_outcome("bluesky", n, taken, refused, crashes),
            "scans_sent": driver.counts["scans"],
        }

    logging.getLogger("operando.drivers.bluesky").setLevel(logging.CRITICAL)  # refusals, counted
    return asyncio.run(run())


def fuzz_files(n: int, seed: int) -> dict[str, Any]:
    """Real files damaged: beamline scan files (column text, RIXS columns, NeXus and library
    HDF5) through the scan-file reader, EC-Lab .mpr through galvani. Each is read or refused
    with a ScanFileError / MptFormatError naming it; anything else would stop the driver."""
    mut = Mutator(seed)
    sources = [(p, fmt) for p, fmt in _real_files() if p.exists()]
    if not sources:
        return {"target": "files", "skipped": f"no data files under {XAS}", "ok": True}
    contents = [p.read_bytes() for p, _ in sources]
    parsed = refused = reader_died = 0
    crashes: Counter[str] = Counter()
    reader = IsolatedReader()  # as the scan-files driver reads: libhdf5 may crash on one
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            k = i % len(sources)
            (src, fmt), data = sources[k], contents[k]
            # the RIXS reader takes the excitation energy from the file's name
            path = Path(tmp) / (src.name if fmt == "rixs-columns" else f"input{src.suffix}")
            # binary files: bytes overwritten in place (an offset table still points home);
            # text: the byte-level mutations
            binary = src.suffix in (".h5", ".mpr")
            path.write_bytes(mut.overwrite(data) if binary else mut.bytes_(data))
            try:
                if fmt == "mpr":
                    read_mpr(path)
                else:
                    reader.read(path, fmt, {}, None)
                parsed += 1
            except (ScanFileError, MptFormatError) as e:
                refused += 1
                reader_died += "reader process died" in str(e)
            except Exception:
                crashes[traceback.format_exc(limit=3).splitlines()[-1]] += 1
    reader.close()
    return {**_parser_outcome("files", n, parsed, refused, crashes), "reader_died": reader_died}


def _real_files() -> list[tuple[Path, str]]:
    nickelate = XAS / "fabbris2023_nickelate_NiL_OK_cc0"
    return [
        (XAS / "ausync_sxr_OK_mit" / "sxr129598.asc", "auto"),
        (nickelate / "La4Ni3O10_pi_NiLedgeXAS.dat", "auto"),
        (nickelate / "rixs_La4Ni3O10_pi" / "La4Ni3O10_pi_854.0eV.dat", "rixs-columns"),
        (XAS / "flexpes_maxiv_CuO_OK_CuL_mit" / "library.h5", "auto"),
        (XAS / "pynxxas_NXxas_FeK_hardxray_mit" / "Fe_XDIFiles.h5", "auto"),
        (ECLAB / "yadg_gcpl.issue_149.mpr", "mpr"),
        (ECLAB / "yadg_ocv.mpr", "mpr"),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="inputs per target")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    ok = True
    # files: a tenth as many (each input is a file written, then read in a worker process)
    for fuzz, n in (
        (fuzz_frames, a.n),
        (fuzz_eclab, a.n),
        (fuzz_methodscript, a.n),
        (fuzz_bluesky, a.n),
        (fuzz_files, a.n // 10),
        # whole batches and whole files: a hundredth as many
        (fuzz_sparse_batches, a.n // 100),
        (fuzz_follow_chunks, a.n // 100),
    ):
        result = fuzz(n, a.seed)
        print(json.dumps(result), flush=True)
        ok = ok and result["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
