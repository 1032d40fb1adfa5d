"""``operando fit``: the live analysis on scan files, many per call."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED, cli
from operando.drivers.sim.spectra import EDGES, Realism, references, synthesize_xas


def write_scans(tmp_path, truths):
    rng = np.random.default_rng(1)
    ed = EDGES["Mn-L"]
    e = ed.axis()
    r = references("Mn-L", e)
    mat = np.column_stack([r[v] for v in ed.names])
    paths = []
    for k, f in enumerate(truths):
        frac = np.tile([f[v] for v in ed.names], (len(e), 1))
        ch = synthesize_xas(e, np.zeros(len(e)), mat, frac, frac, Realism(), rng)
        path = tmp_path / f"scan{k}.dat"
        np.savetxt(
            path,
            np.column_stack([e, ch["I0"], ch["TEY"], ch["TFY"]]),
            header="energy\tI0\tTEY\tTFY",
            comments="# ",
            delimiter="\t",
        )
        paths.append(str(path))
    return paths


def export_refs(tmp_path, edge="Mn-L"):
    out = tmp_path / f"{edge}.csv"
    return cli("references", "export", "--edge", edge, "--out", str(out)).stdout.strip()


def test_fit_many_files_as_json(tmp_path):
    """Every signal column of every file by default, the fluorescence one with self-absorption
    (as the monitor does), each result with its quality."""
    refs = export_refs(tmp_path)
    truths = [{"Mn2+": 0.1 * k, "Mn3+": 0.4, "Mn4+": 0.6 - 0.1 * k} for k in range(4)]
    files = write_scans(tmp_path, truths)
    out = cli("fit", *files, "--references", refs, "--json").stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert [(r["file"], r["channel"]) for r in results] == [
        (f, c) for f in files for c in ("TEY", "TFY")
    ]
    for r, truth in zip(results, [t for t in truths for _ in range(2)], strict=True):
        assert set(r) >= {"fractions", "uncertainties", "shift_eV", "chi2_red", "quality"}
        assert r["normalised"] is True and r["quality"] in ("good", "check")
        for k, v in truth.items():
            assert r["fractions"][k] == pytest.approx(v, abs=0.02)
        if r["channel"] == "TFY":
            assert r["method"] == "self_absorption"
            # the simulated cell's saturation, within 3 sigma of the reported beta
            assert abs(r["self_absorption_beta"] - 24) < 3 * r["self_absorption_beta_uncertainty"]
        else:
            assert r["method"] == "linear"
    plain = cli(
        "fit", *files[:1], "--references", refs, "--channel", "TFY", "--self-absorption", "none"
    ).stdout
    assert "[TFY]" in plain and "quality" in plain and "beta" not in plain


def test_fit_reports_bad_files_and_goes_on(tmp_path):
    refs = export_refs(tmp_path)
    good = write_scans(tmp_path, [{"Mn2+": 0.0, "Mn3+": 0.5, "Mn4+": 0.5}])[0]
    bad = tmp_path / "bad.dat"
    bad.write_text("energy TEY\n640 1\n641 x\n")
    proc = cli("fit", str(bad), good, "--references", refs, "--channel", "TEY", check=False)
    assert proc.returncode == 1
    assert "bad.dat:3: not a row of numbers" in proc.stderr
    assert "scan0.dat [TEY]: Mn2+ 0.0" in proc.stdout and "Mn3+ 0.49" in proc.stdout


def test_fit_refuses_to_guess(tmp_path):
    """A channel the file lacks is an error naming its columns (it silently fitted another);
    no I0 is a warning and "normalised": false; a references file that is missing or not
    text is one line naming it, exit 2, no traceback."""
    refs = export_refs(tmp_path)
    scan = np.loadtxt(write_scans(tmp_path, [{"Mn2+": 0.2, "Mn3+": 0.5, "Mn4+": 0.3}])[0])
    tfy_only = tmp_path / "tfy_only.dat"
    np.savetxt(tfy_only, scan[:, [0, 1, 3]], header="energy I0 TFY", comments="# ")
    proc = cli("fit", str(tfy_only), "--references", refs, "--channel", "TEY", check=False)
    assert proc.returncode == 1
    assert "no column 'TEY' to fit (columns: ['energy', 'I0', 'TFY'])" in proc.stderr
    assert proc.stdout == ""

    no_i0 = tmp_path / "no_i0.dat"
    np.savetxt(no_i0, scan[:, [0, 2]], header="energy TEY", comments="# ")
    proc = cli("fit", str(no_i0), "--references", refs, "--json")
    assert "warning: no I0 column" in proc.stderr
    assert json.loads(proc.stdout)["normalised"] is False

    for missing in (str(tmp_path / "nowhere.csv"), str(no_i0.with_suffix(".npz"))):
        if missing.endswith(".npz"):
            (tmp_path / "no_i0.npz").write_bytes(b"\x00\x01 not a zip")
        proc = cli("fit", str(no_i0), "--references", missing, check=False)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and missing in lines[0], proc.stderr


@pytest.mark.skipif(not (SHARED / "data").exists(), reason="../shared/data is not here")
def test_fit_on_real_measured_ni_l_files_says_the_references_do_not_fit(tmp_path):
    """La4Ni3O10 (La M4 under Ni L3) against model Ni references: before, "Ni2+ 1.000 +-
    0.000" (TEY) and shift -1.5 eV with beta 10000 (TFY), all without a word. Now each
    channel is fitted, judged poor with its reasons, and no sigma is 0."""
    refs = export_refs(tmp_path, "Ni-L")
    folder = SHARED / "data/xas/fabbris2023_nickelate_NiL_OK_cc0"
    files = sorted(str(p) for p in folder.glob("*_NiLedgeXAS.dat"))
    proc = cli("fit", *files, "--references", refs, "--json")
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 4 and {r["channel"] for r in results} == {"TEY", "TFY"}
    assert proc.stderr.count("warning: no I0 column") == 2
    for r in results:
        assert abs(sum(r["fractions"].values()) - 1) < 1e-9
        assert r["quality"] == "poor" and r["notes"]
        assert all(u > 0 for u in r["uncertainties"].values())
