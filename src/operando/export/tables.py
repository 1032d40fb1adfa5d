"""The run's electrochemistry tables as every export writes them: flat columns (a list of dQ/dV
peaks as JSON text), times in seconds since the run's start, units beside them."""

from __future__ import annotations

import json

import pandas as pd

from operando.store.reader import Run

UNITS = {
    "t_start": "s",
    "t_end": "s",
    "t_step": "s",
    "capacity_mAh": "mA*h",
    "capacity_mAh_g": "mA*h/g",
    "energy_mWh": "mW*h",
    "mean_voltage_V": "V",
    "peaks_V": "V",
    "peak_heights": "mA*h/V",
    "charge_mAh": "mA*h",
    "discharge_mAh": "mA*h",
    "charge_energy_mWh": "mW*h",
    "discharge_energy_mWh": "mW*h",
    "i_before_mA": "mA",
    "i_after_mA": "mA",
    "v_before_V": "V",
    "first_after_s": "s",
    "held_s": "s",
    "Ewe": "V",
    "dQdV": "mA*h/V",
    "voltage_V": "V",
    "height_mAh_V": "mA*h/V",
    "shift_V": "V",
    "flat_V": "V",
    "tau_s": "s",
    "i_mA": "mA",
    "ocv_before_V": "V",
    "ocv_after_V": "V",
    "delta_es_V": "V",
    "delta_et_V": "V",
    "d_cm2_s": "cm^2/s",
    "ocv_unc_V": "V",
    "rest_end_V": "V",
    "duration_s": "s",
    "e_i_V": "V",
    "k_ohm_s05": "ohm/s^0.5",
    "k_unc_ohm_s05": "ohm/s^0.5",
    "dedt_V_s": "V/s",
    "dedt_unc_V_s": "V/s",
    "d_unc_cm2_s": "cm^2/s",
}


def cycling_tables(run: Run, t0: float) -> dict[str, pd.DataFrame]:
    """``half_cycles``, ``cycles``, ``current_steps``, ``dqdv`` (long form) and
    ``dqdv_peaks`` (tracked from cycle to cycle), ``gitt`` (titration pulses) and
    ``interruptions`` (ICI); empty frames for a run recorded before they were derived."""
    return {name: cycling_table(run, name, t0) for name in CYCLING_TABLES}


CYCLING_TABLES = (
    "half_cycles",
    "cycles",
    "current_steps",
    "dqdv",
    "dqdv_peaks",
    "gitt",
    "interruptions",
)


def cycling_table(run: Run, name: str, t0: float) -> pd.DataFrame:
    """One of ``CYCLING_TABLES``, flat, its times in seconds since ``t0``."""
    if name == "half_cycles":
        table = run.half_cycles()
        for column in ("peaks_V", "peak_heights"):
            table[column] = [json.dumps(v) for v in table[column]]
        for column in ("t_start", "t_end"):
            table[column] = table[column] - t0
    elif name == "current_steps":
        table = run.current_steps()
        if "t_step" in table and len(table):
            table["t_step"] = table["t_step"] - t0
    elif name in ("gitt", "interruptions"):
        table = run.gitt() if name == "gitt" else run.interruptions()
        table["t_start"] = table["t_start"] - t0
        table["notes"] = ["; ".join(n) for n in table["notes"]]
    else:
        table = {"cycles": run.cycles, "dqdv": run.dqdv, "dqdv_peaks": run.dqdv_peaks}[name]()
    return table


def units_of(table: pd.DataFrame) -> dict[str, str]:
    """Columns with a unit (resistances by their name: ``r_..._ohm``)."""
    out = {c: UNITS[c] for c in table.columns if c in UNITS}
    out.update({c: "ohm" for c in table.columns if str(c).endswith("_ohm")})
    return out
