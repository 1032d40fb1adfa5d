"""When the beam was lost, read from I0: never on measured I0 that kept its beam (a carbon dip,
hard X-ray monitors, drifting and glitched validation scans), always on a dump put into one."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
from conftest import SHARED

from operando.analysis.beam import LOST_BELOW, BeamHistory, point_times, scan_beam

XAS = SHARED / "data" / "xas"
AUSYNC = XAS / "ausync_sxr_OK_mit"


def measured_i0() -> dict[str, np.ndarray]:
    """Every measured or validation I0 we hold, by name."""
    out = {}
    for name in ("sxr129598.asc", "sxr129578_CK.asc"):  # O K, and C K with the carbon dip
        out[name] = np.loadtxt(AUSYNC / name, comments="#")[:, 4]
    with h5py.File(XAS / "pynxxas_NXxas_FeK_hardxray_mit" / "Fe_XDIFiles.h5") as h:
        for entry in h:
            out[f"Fe K {entry}"] = h[entry]["instrument/i0/data"][()]
    for element in ("fe", "ni"):
        z = np.load(SHARED / "data" / "validation" / f"{element}_L23" / f"{element}_validation.npz")
        offsets, i0 = z["spec_offsets"], z["spec_I0"]
        for k, (a, b) in enumerate(itertools.pairwise(offsets)):
            out[f"{element} validation {k}"] = i0[a:b]
    return out


def test_measured_i0_that_kept_its_beam_is_never_called_lost():
    i0s = measured_i0()
    assert len(i0s) >= 245  # 2 Australian Synchrotron, 3 Fe K, 240 validation scans
    lost = {
        name: b.lost
        for name, i0 in i0s.items()
        if (b := scan_beam(np.arange(len(i0)), i0, None)) and b.lost
    }
    assert lost == {}
    # the carbon dip in C K I0 is the deepest honest fall we hold: the threshold stays below it
    ck = i0s["sxr129578_CK.asc"]
    assert 0.8 * ck.min() / np.percentile(ck, 90) > LOST_BELOW


@pytest.mark.parametrize("name", ["sxr129598.asc", "sxr129578_CK.asc"])
def test_a_dump_in_a_measured_scan_is_found_where_it_was(name):
    i0 = np.loadtxt(AUSYNC / name, comments="#")[:, 4].copy()
    t = 1000.0 + 0.5 * np.arange(len(i0))  # a point every 0.5 s
    i0[200:260] = np.random.default_rng(1).poisson(3.0, 60)  # dark counts while the beam is off
    b = scan_beam(t, i0, None)
    assert b is not None and b.lost == ((t[200] - 0.25, t[259] + 0.25),)
    assert b.lost_s == pytest.approx(30.0)


def test_a_scan_lost_from_end_to_end_is_judged_by_the_scans_before_it_of_its_edge():
    history = BeamHistory()
    t = np.arange(100.0)
    for sid in range(5):
        history.add(sid, "Mn-L", t, np.full(100, 1e5))
        history.add(100 + sid, "Ni-L", t, np.full(100, 3e4))  # another edge, a third of the I0
    dark = history.add(5, "Mn-L", t, np.zeros(100))
    assert dark is not None and dark.lost == ((-0.5, 99.5),)
    # the dark scan does not lower the level the next one is judged by
    again = history.add(6, "Mn-L", t, np.full(100, 0.15e5))
    assert again is not None and again.level == 1e5 and again.lost
    assert [sid for sid, *_ in history.lost()] == [5, 6]
    # Ni L at its own level, a third of Mn L's, is not a lost beam
    assert not any(b.lost for sid, b in history.scans if sid >= 100)


def test_point_times_as_recorded_or_spread_over_the_scan():
    np.testing.assert_array_equal(point_times(0.0, 10.0, 3, np.array([1.0, 2.0, 9.0])), [1, 2, 9])
    np.testing.assert_array_equal(point_times(0.0, 10.0, 3, None), [0.0, 5.0, 10.0])
    assert scan_beam(np.arange(3.0), np.full(3, np.nan), None) is None
