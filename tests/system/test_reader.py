"""The notebook front door: ``operando.open_run`` on a demo run, finished and while recording."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, wait_for

import operando


def test_a_finished_run_reads_as_dataframes(lfp_run):
    with operando.open_run(lfp_run) as run:
        cell, spectra, fits = run.potentiostat(), run.spectra(), run.fits()
        dose, events, relax = run.dose(), run.events(), run.relaxation()
        summary = run.summary()
        assert run.config.name == "peo-lfp-relaxation"
        one = run.spectrum(int(spectra["spectrum_id"].iloc[-1]))
    assert all(isinstance(df, pd.DataFrame) for df in (cell, spectra, fits, dose, events, relax))
    assert len(cell) == summary["potentiostat_rows"] and cell["t"].is_monotonic_increasing
    assert len(spectra) == summary["spectra"]["total"] > 3
    # every fit has its spectrum, its fractions summing to one, and a 1-sigma per fraction
    assert set(fits["spectrum_id"]) <= set(spectra["spectrum_id"])
    f = fits.filter(like="f:").dropna(axis=1, how="all")
    u = fits.filter(like="u:").dropna(axis=1, how="all")
    assert len(f.columns) >= 2 and len(u.columns) == len(f.columns)
    assert np.allclose(f.sum(axis=1), 1.0, atol=1e-6)
    # and its verdict: judged live, counted by inspect
    assert set(fits["quality"]) <= {"good", "check", "poor"}
    assert all(isinstance(notes, list) for notes in fits["notes"])
    assert (fits["quality"] == "good").sum() > len(fits) / 2  # the simulator's own spectra
    assert summary["analysis"]["fit_quality"] == fits["quality"].value_counts().to_dict()
    assert (spectra["soc"].dropna().between(-0.05, 1.05)).all()
    assert set(dose["spectrum_id"]) <= set(spectra["spectrum_id"])
    assert "series_start" in set(events["kind"])
    assert {"tau_s", "tau_err_s", "resolved", "note", "series"} <= set(relax.columns)
    # one spectrum: its arrays from the raw log, with its alignment and fits
    assert "energy" in one.arrays and one.alignment is not None
    assert len(one.arrays["energy"]) == spectra["n_points"].iloc[-1]


def test_a_missing_run_is_one_clear_error(tmp_path):
    with pytest.raises(operando.store.StoreError, match="no such run directory"):
        operando.open_run(tmp_path / "nope")
    with pytest.raises(operando.store.StoreError, match="no run store"):
        operando.open_run(tmp_path)


def test_a_run_being_recorded_reads_concurrently_without_a_lock(tmp_path):
    """While ``operando demo`` records, a notebook reads the run again and again: each read
    sees more, none waits for the writer, and the monitor never notices."""
    run = tmp_path / "run"
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "operando.cli",
            "demo",
            "--headless",
            "--no-dashboard",
            "--duration",
            "25",
            "--speed",
            "120",
            "--run-dir",
            str(run),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        wait_for(lambda: (run / "run.sqlite").exists(), 60, what="the run store")
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and demo.poll() is None:
            t0 = time.monotonic()
            with operando.open_run(run) as r:
                seen.append((len(r.potentiostat()), len(r.spectra())))
            assert time.monotonic() - t0 < 5.0
            time.sleep(1.0)
        assert demo.wait(timeout=120) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    rows = [n for n, _ in seen]
    assert len(seen) >= 5 and rows == sorted(rows) and rows[-1] > rows[0]
    with operando.open_run(run) as r:
        assert len(r.potentiostat()) >= rows[-1]
        assert json.loads(r.events()["detail"].iloc[0]) is not None


def test_fit_scan_is_the_fit_the_monitor_made(lfp_run):
    """``operando.fit_scan`` on a recorded spectrum gives the fit the live monitor stored: one
    path from a scan to its valence, for the monitor, ``operando fit`` and a notebook."""
    with operando.open_run(lfp_run) as run:
        fits, cfg = run.fits(), run.config
        last = fits.iloc[-1]
        s = run.spectrum(int(last["spectrum_id"]))
    channel = str(last["channel"])
    refs = operando.References.from_file(cfg.analysis.references[s.edge])
    fit = operando.fit_scan(
        s.arrays,
        channel,
        refs,
        fit_range=cfg.analysis.fit_ranges.get(s.edge),
        self_absorption=channel in cfg.analysis.self_absorption,
    )
    assert fit.fractions == pytest.approx(s.fits[channel]["fractions"], abs=1e-9)
    assert fit.average_valence == pytest.approx(float(last["valence"]), abs=1e-9)
