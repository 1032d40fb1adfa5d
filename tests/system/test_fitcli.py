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


def test_fit_many_files_as_json(tmp_path):
    refs = cli(
        "references", "export", "--edge", "Mn-L", "--out", str(tmp_path / "mn.csv")
    ).stdout.strip()
    truths = [{"Mn2+": 0.1 * k, "Mn3+": 0.4, "Mn4+": 0.6 - 0.1 * k} for k in range(4)]
    files = write_scans(tmp_path, truths)
    out = cli("fit", *files, "--references", refs, "--edge", "Mn-L", "--json").stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in results] == files
    for r, truth in zip(results, truths, strict=True):
        assert set(r) >= {"file", "fractions", "uncertainties", "shift_eV", "chi2_red"}
        for k, v in truth.items():
            assert r["fractions"][k] == pytest.approx(v, abs=0.02)
    tfy = cli(
        "fit", *files[:1], "--references", refs, "--channel", "TFY", "--self-absorption", "--json"
    ).stdout
    assert json.loads(tfy)["self_absorption_beta"] == pytest.approx(24, rel=0.3)


def test_fit_reports_bad_files_and_goes_on(tmp_path):
    refs = cli(
        "references", "export", "--edge", "Mn-L", "--out", str(tmp_path / "mn.csv")
    ).stdout.strip()
    good = write_scans(tmp_path, [{"Mn2+": 0.0, "Mn3+": 0.5, "Mn4+": 0.5}])[0]
    bad = tmp_path / "bad.dat"
    bad.write_text("energy TEY\n640 1\n641 x\n")
    proc = cli("fit", str(bad), good, "--references", refs, "--edge", "Mn-L", check=False)
    assert proc.returncode == 1
    assert "bad.dat:3: not a row of numbers" in proc.stderr
    assert "scan0.dat: Mn2+ 0.0" in proc.stdout and "Mn3+ 0.49" in proc.stdout


@pytest.mark.skipif(not (SHARED / "data").exists(), reason="../shared/data is not here")
def test_fit_runs_on_real_measured_ni_l_files(tmp_path):
    refs = cli(
        "references", "export", "--edge", "Ni-L", "--out", str(tmp_path / "ni.csv")
    ).stdout.strip()
    folder = SHARED / "data/xas/fabbris2023_nickelate_NiL_OK_cc0"
    files = sorted(str(p) for p in folder.glob("*_NiLedgeXAS.dat"))
    out = cli("fit", *files, "--references", refs, "--edge", "Ni-L", "--json").stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 2 and all("fractions" in r for r in results)
    assert all(abs(sum(r["fractions"].values()) - 1) < 1e-9 for r in results)
