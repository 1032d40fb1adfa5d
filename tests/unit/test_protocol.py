"""The wire protocol: one schema encodes and validates; bad input is named precisely."""

from __future__ import annotations

import ast
import contextlib

import msgspec
import numpy as np
import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.protocol import (
    MODE_CC,
    Ack,
    Command,
    Heartbeat,
    PotentiostatBatch,
    ProtocolError,
    RIXSRows,
    SeriesEnd,
    SeriesStart,
    Spot,
    StateUpdate,
    XASScan,
    decode,
    encode,
    peek_envelope,
)


def batch(n: int = 5) -> dict[str, np.ndarray]:
    return {
        "t": np.arange(n, dtype=float),
        "Ewe": np.full(n, 3.7),
        "I": np.full(n, 0.1),
        "mode": np.full(n, MODE_CC, np.int8),
        "step": np.zeros(n, np.int32),
        "cycle": np.zeros(n, np.int32),
        "Q": np.linspace(0, 1, n),
    }


def xas(n: int = 11) -> tuple[XASScan, dict[str, np.ndarray]]:
    h = XASScan(
        source="spec",
        scan_id="s1",
        edge="Mn-L",
        t_start_ns=10,
        t_end_ns=20,
        channels=("I0", "TEY", "TFY"),
        spot=Spot(id="A1", x_mm=0.5, y_mm=1.0),
        flux_ph_s=1e11,
        exposure_s=3.0,
        trigger_id="trig-1",
        extra={"note": "x"},
    )
    e = np.linspace(630, 660, n)
    return h, {"energy": e, "I0": np.ones(n), "TEY": e * 2, "TFY": e * 3, "point_t": e * 0}


CASES = [
    (SeriesStart(source="p", instrument="potentiostat", metadata={"capacity_mAh": 1.0}), {}),
    (SeriesEnd(source="p", reason="stopped", last_seq=9), {}),
    (PotentiostatBatch(source="p"), batch()),
    xas(),
    (
        RIXSRows(
            source="s",
            scan_id="r1",
            map_id="m",
            t_start_ns=0,
            t_end_ns=1,
            row_offset=2,
            rows_total=10,
        ),
        {
            "excitation": np.array([531.0, 531.25]),
            "emission": np.linspace(515, 535, 7),
            "counts": np.arange(14.0).reshape(2, 7),
        },
    ),
    (Command(source="c", id="1", action="acquire", args={"edge": "Mn-L"}), {}),
    (Ack(source="d", id="1", ok=False, error="no"), {}),
    (Heartbeat(source="p"), {}),
    (StateUpdate(source="m", topic="status", body={"a": [1, 2]}), {}),
]


@pytest.mark.parametrize(("header", "arrays"), CASES, ids=lambda c: type(c).__name__)
def test_every_kind_round_trips(header, arrays):
    frames = encode(header, arrays)
    msg = decode([bytes(memoryview(f)) for f in frames])
    assert type(msg.header) is type(header)
    assert msgspec.structs.replace(msg.header, arrays=()) == header
    assert set(msg.arrays) == set(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(msg.arrays[name], a)
        assert msg.arrays[name].dtype == a.dtype


def test_decode_error_names_field_and_reason():
    h = msgspec.msgpack.encode(
        {
            "v": 1,
            "kind": "xas_scan",
            "source": "s",
            "scan_id": 5,
            "t_start_ns": 0,
            "t_end_ns": 1,
            "channels": [],
        }
    )
    with pytest.raises(
        ProtocolError, match=r"xas_scan: Expected `str`, got `int` - at `\$.scan_id`"
    ):
        decode([b"t", h])


@pytest.mark.parametrize("field", ["seq", "t_ns"])
def test_integers_beyond_64_bits_are_malformed_not_stored(field):
    """MessagePack carries integers up to 2**64 - 1; SQLite holds signed 64 bits. Such a
    number is refused here, naming its field, and the message is recorded as malformed
    (it once reached the store's writer and stopped the recording)."""
    h = {"v": 1, "kind": "heartbeat", "source": "p", "session": "s", "seq": 1, "t_ns": 1}
    with pytest.raises(ProtocolError, match=rf"<= 9223372036854775807 - at `\$.{field}`"):
        decode([b"t", msgspec.msgpack.encode({**h, field: 2**64 - 1})])
    assert peek_envelope([b"t", msgspec.msgpack.encode({**h, field: 2**63})]) is None


def test_missing_required_field_is_named():
    h = msgspec.msgpack.encode({"v": 1, "kind": "potentiostat_batch"})
    with pytest.raises(ProtocolError, match="source"):
        decode([b"t", h])


def test_unknown_version_is_a_clear_error():
    h = msgspec.msgpack.encode({"v": 99, "kind": "heartbeat", "source": "p"})
    with pytest.raises(ProtocolError, match="unsupported protocol version 99.*speaks version 1"):
        decode([b"t", h])


def test_array_frames_must_match_header():
    frames = encode(PotentiostatBatch(source="p"), batch(4))
    with pytest.raises(ProtocolError, match="lists 7 array.* but 6"):
        decode(frames[:-1])
    short = [*frames[:3], b"\x00" * 8, *frames[4:]]
    with pytest.raises(
        ProtocolError, match=r"potentiostat_batch.arrays\['Ewe'\]: frame has 8 bytes"
    ):
        decode(short)


def test_inconsistent_columns_are_refused():
    b = batch(4)
    b["I"] = np.ones(5)
    with pytest.raises(ProtocolError, match=r"arrays\['I'\]: shape \(5,\), expected \(4,\)"):
        decode(encode(PotentiostatBatch(source="p"), b))
    h, a = xas()
    a["TEY"] = a["TEY"][:-1]
    with pytest.raises(ProtocolError, match="TEY"):
        decode(encode(h, a))
    h, a = xas()
    del a["TFY"]
    with pytest.raises(ProtocolError, match="missing array"):
        decode(encode(h, a))


def test_object_dtypes_are_refused_both_ways():
    with pytest.raises(ProtocolError, match="not a plain numeric dtype"):
        encode(PotentiostatBatch(source="p"), {**batch(2), "t": np.array([1, "x"], dtype=object)})
    header = msgspec.msgpack.encode(
        {"v": 1, "kind": "heartbeat", "source": "p", "arrays": [["evil", "|O", [1]]]}
    )
    with pytest.raises(ProtocolError, match="not an allowed numeric dtype"):
        decode([b"t", header, b"\x00" * 8])


@pytest.mark.parametrize(
    ("column", "values", "error"),
    [
        ("Ewe", np.full(5, 3.7 + 0j), r"\['Ewe'\]: complex128 values, expected real numbers"),
        ("mode", np.ones(5, bool), r"\['mode'\]: bool values, expected real numbers"),
        ("t", np.array([0, 1, np.nan, 3, 4]), r"\['t'\]\[2\]: nan is not a measured value"),
        ("I", np.array([0, 0, 0, np.inf, 0]), r"\['I'\]\[3\]: inf is not a measured value"),
        ("Q", np.array([-np.inf, 0, 0, 0, 0]), r"\['Q'\]\[0\]: -inf is not a measured"),
        ("Ewe", np.array([3.7, 1e300, 3.7, 3.7, 3.7]), r"\['Ewe'\]\[1\]: 1e\+300 is not a"),
        ("t", np.arange(5, dtype=np.int64) + 2**62, r"\['t'\]\[0\]: \d+ is not a measured"),
    ],
)
def test_potentiostat_columns_are_finite_real_numbers(column, values, error):
    """A NaN, an infinity or a number whose products overflow would enter the running
    integrals the alignment reads and spoil every spectrum after it; a complex or boolean
    column would be cast silently."""
    frames = encode(PotentiostatBatch(source="p"), {**batch(5), column: values})
    with pytest.raises(ProtocolError, match="potentiostat_batch.arrays" + error):
        decode(frames)


def test_spectrum_axes_and_channels_are_real_but_may_be_nan():
    h, a = xas()
    with pytest.raises(ProtocolError, match=r"\['TEY'\]: complex128 values"):
        decode(encode(h, {**a, "TEY": a["TEY"] + 1j}))
    a["TEY"][3] = np.nan  # a detector's dropout: kept as measured, for the analysis to judge
    assert np.isnan(decode(encode(h, a)).arrays["TEY"][3])


def test_spectrum_window_must_be_ordered():
    h, a = xas()
    with pytest.raises(ProtocolError, match="t_end_ns"):
        decode(encode(msgspec.structs.replace(h, t_start_ns=30, t_end_ns=20), a))


def test_big_endian_arrays_are_sent_little_endian():
    b = batch(3)
    b["Ewe"] = b["Ewe"].astype(">f8")
    msg = decode(encode(PotentiostatBatch(source="p"), b))
    assert msg.arrays["Ewe"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(msg.arrays["Ewe"], 3.7)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=5))
def test_arbitrary_bytes_only_ever_raise_protocol_error(frames):
    with contextlib.suppress(ProtocolError):
        decode(frames)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "kind",
                "source",
                "seq",
                "arrays",
                "scan_id",
                "channels",
                "t_start_ns",
                "t_end_ns",
                "id",
                "action",
            ]
        ),
        st.one_of(
            st.integers(-5, 5),
            st.text(max_size=5),
            st.none(),
            st.lists(st.integers(0, 3), max_size=3),
            st.sampled_from(["xas_scan", "heartbeat", "command"]),
        ),
    ),
    st.lists(st.binary(max_size=64), max_size=3),
)
def test_arbitrary_headers_only_ever_raise_protocol_error(header, arrays):
    with contextlib.suppress(ProtocolError):
        decode([b"t", msgspec.msgpack.encode(header), *arrays])


def test_no_module_imports_pickle():
    offenders = []
    for path in [
        *REPO.glob("src/**/*.py"),
        *REPO.glob("drivers/**/*.py"),
        *REPO.glob("dashboards/**/*.py"),
    ]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle") for n in names):
                offenders.append(str(path))
    assert offenders == []
