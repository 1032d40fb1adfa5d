"""The Cycling tab: which dQ/dV peak a valence change belongs to (the two on one voltage
axis), how valence follows the capacity passed, and capacity, efficiency, resistance and the
titrations (GITT, ICI) by cycle or SOC.

Pure builders turn the view's tables into ``Picture``s; ``CyclingPlots`` shows them as Bokeh
figures that are kept between redraws (``pictures``). Through HoloViews, opening this tab under
a RIXS run's load took up to 1.3 s (p95), its eight plots built again each time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pandas as pd
import panel as pn
from operando.dashboards.pictures import Glyph, Layer, Picture, PicturePlot
from operando.dashboards.plots import PALETTE, marker_of

DIRECTION_COLOUR = {"charge": PALETTE[3], "discharge": PALETTE[0]}
EWE, DQDV, CAPACITY, VALENCE = (
    "Ewe (V)",
    "dQ/dV (mAh/V)",
    "capacity (mAh)",
    "average oxidation state",
)


def _points(x: str, y: str, colour: str, **kw: Any) -> Glyph:
    return ("scatter", {"x": x, "y": y, "color": colour, "size": 7, **kw})


def _bars(x: str, colour: str) -> Glyph:
    """+-1 sigma from the table's 'lo' and 'hi' columns, as vertical segments."""
    return ("segment", {"x0": x, "y0": "lo", "x1": x, "y1": "hi", "color": colour, "alpha": 0.6})


def with_bars(frame: pd.DataFrame, y: str, err: Any, *, log: bool = False) -> pd.DataFrame:
    """``frame`` with 'lo' and 'hi' = y -+ err; on a log axis a bar reaching zero or below
    ends at a tenth of the value."""
    lo = frame[y] - err
    if log:
        lo = lo.where(lo > 0, frame[y] / 10)
    return frame.assign(lo=lo, hi=frame[y] + err)


def dqdv_picture(halves: list[Any], last: int = 6) -> Picture:
    """dQ/dV of the newest ``last`` closed-or-running half-cycles (discharge negative), their
    peaks marked; older cycles paler, so a peak's drift from cycle to cycle reads at a glance."""
    shown = [h for h in halves if h.dqdv_V][-last:]
    if not shown:
        return Picture("dQ/dV: no half-cycle closed yet", EWE, DQDV)
    tips = (("Ewe", "@Ewe{0.000} V"), ("dQ/dV", "@dQdV{0.00} mAh/V"))
    layers = []
    for n, h in enumerate(shown):
        colour, alpha = DIRECTION_COLOUR[h.direction], 0.35 + 0.65 * (n + 1) / len(shown)
        line = {"x": "Ewe", "y": "dQdV", "line_width": 2, "color": colour, "alpha": alpha}
        layers.append(
            Layer(
                f"{h.direction} {h.cycle}" + ("" if h.complete else " (open)"),
                pd.DataFrame({"Ewe": h.dqdv_V, "dQdV": h.dqdv_mAh_V}),
                (("line", line),),
                tips,
            )
        )
    peaks = [(p.voltage_V, p.height_mAh_V, h.cycle, h.direction) for h in shown for p in h.peaks]
    if peaks:
        frame = pd.DataFrame(peaks, columns=pd.Index(["Ewe", "dQdV", "cycle", "direction"]))
        marks = _points("Ewe", "dQdV", PALETTE[7], marker="x", size=9)
        layers.append(Layer("peaks", frame, (marks,), (*tips, ("cycle", "@cycle @direction"))))
    return Picture("incremental capacity (dQ/dV)", EWE, DQDV, tuple(layers))


def valence_on_cycles_picture(placed: pd.DataFrame, x: str) -> Picture:
    """Valence against the cell voltage (``x='Ewe'``: beside dQ/dV, on its voltage axis) or
    the capacity passed in the half-cycle (``x='capacity'``), charge and discharge apart; one
    marker a series."""
    x_label = EWE if x == "Ewe" else CAPACITY
    title = "valence vs Ewe" if x == "Ewe" else "valence vs capacity in the half-cycle"
    layers = []
    if len(placed):
        names = sorted(placed["series"].unique())  # the same marker a series on every redraw
        for key, g in placed.groupby(["series", "direction"], sort=True):
            series, direction = cast(tuple[str, str], key)
            g = g.dropna(subset=["valence", x])
            if not len(g):
                continue
            frame = pd.DataFrame(
                {x: g[x], "valence": g["valence"], "cycle": g["cycle"], "quality": g["quality"]}
            )
            marker = marker_of(series, names)
            colour = DIRECTION_COLOUR.get(str(direction), PALETTE[4])
            tips = (
                (x, f"@{{{x}}}{{0.000}} {'V' if x == 'Ewe' else 'mAh'}"),
                ("valence", "@valence{0.000}"),
                ("cycle", "@cycle (@quality)"),
            )
            glyph = _points(x, "valence", colour, marker=marker, size=6)
            layers.append(Layer(f"{series} {direction}", frame, (glyph,), tips))
    if not layers:
        return Picture(f"{title}: no fitted spectrum in a half-cycle yet", x_label, VALENCE)
    return Picture(title, x_label, VALENCE, tuple(layers))


def cycles_picture(cycles: pd.DataFrame, quantity: str) -> Picture:
    """Per cycle: ``'capacity'`` (charge and discharge, mAh; a cycle still running drawn
    hollow) or ``'efficiency'`` (coulombic and energy, %; complete cycles only)."""
    capacity = quantity == "capacity"
    title = "capacity per cycle" if capacity else "efficiency per cycle"
    y_label = CAPACITY if capacity else "efficiency (%)"
    if not len(cycles):
        return Picture(f"{title}: no half-cycle yet", "cycle", y_label)
    if not capacity:  # the efficiency of a cycle still running means nothing yet
        cycles = cycles.loc[cycles["complete"].astype(bool)]
        if not len(cycles):
            return Picture(f"{title}: no complete cycle yet", "cycle", y_label)
    names = (
        {"charge": "charge_mAh", "discharge": "discharge_mAh"}
        if capacity
        else {"coulombic": "coulombic_efficiency", "energy": "energy_efficiency"}
    )
    unit, scale = ("mAh", 1.0) if capacity else ("%", 100.0)
    layers = []
    for n, (name, column) in enumerate(names.items()):
        frame = pd.DataFrame(
            {
                "cycle": cycles["cycle"].to_numpy(),
                "y": cycles[column].to_numpy(float) * scale,
                "fill": np.where(cycles["complete"].astype(bool), 1.0, 0.0),
            }
        )
        colour = DIRECTION_COLOUR.get(name, PALETTE[n + 1])
        glyphs = (
            ("line", {"x": "cycle", "y": "y", "color": colour, "alpha": 0.5}),
            _points("cycle", "y", colour, fill_alpha="fill"),
        )
        tips = (("cycle", "@cycle"), (name, f"@y{{0.000}} {unit}"))
        layers.append(Layer(name, frame, glyphs, tips))
    return Picture(title, "cycle", y_label, tuple(layers))


def resistance_picture(steps: pd.DataFrame) -> Picture:
    """R0 of every current step (extrapolated to the step, with its 1-sigma) against the
    cycle it falls in, and the DC resistance 10 s after the step."""
    y_label = "resistance (ohm)"
    if not len(steps) or "r_0_ohm" not in steps:
        return Picture("resistance: no current step yet", "cycle", y_label)
    r0 = steps.dropna(subset=["r_0_ohm"])
    frame = pd.DataFrame(
        {"cycle": r0["cycle"], "R": r0["r_0_ohm"], "err": r0["r_0_unc_ohm"], "soc": r0["soc"]}
    )
    tips = (("cycle", "@cycle"), ("R", "@R{0.000} ohm"))
    layers = [
        Layer(
            "R0 (extrapolated)",
            with_bars(frame, "R", frame["err"]),
            (_bars("cycle", PALETTE[0]), _points("cycle", "R", PALETTE[0], size=6)),
            (*tips, ("1 sigma", "@err{0.000} ohm"), ("SOC", "@soc{0.000}")),
        )
    ]
    if "r_10s_ohm" in steps:
        r10 = steps.dropna(subset=["r_10s_ohm"])
        frame = pd.DataFrame({"cycle": r10["cycle"], "R": r10["r_10s_ohm"]})
        glyph = _points("cycle", "R", PALETTE[1], marker="triangle", size=6)
        layers.append(Layer("DC at 10 s", frame, (glyph,), tips))
    return Picture("resistance per current step", "cycle", y_label, tuple(layers))


def along_titration(rows: pd.DataFrame, soc: str, label: str) -> tuple[str, pd.Series]:
    """The x of titration points (its axis label, its values): their SOC, or, in a run without
    a capacity (no SOC), hours since the first of them: drawn either way, never left out for
    a NaN."""
    values = pd.Series(rows.get(soc, np.nan), index=rows.index, dtype=float)
    if bool(np.isfinite(values.to_numpy()).any()):
        return label, values
    start = pd.Series(rows["t_start"], index=rows.index, dtype=float)
    return "time since the first (h)", (start - start.min()) / 3600.0


def _titration(
    rows: pd.DataFrame,
    x: tuple[str, pd.Series],
    y: tuple[str, str | None, str],
    colour: str,
    *,
    log: bool,
    label: str,
    title: str,
    extra: dict[str, Any] | None = None,
    tips: tuple[tuple[str, str], ...] = (),
) -> Picture:
    """Titration points (GITT pulses, ICI interruptions) with their 1-sigma: ``x`` (label,
    values), ``y`` (column, its error column if any, label); hollow where the notes say an
    assumption failed, the notes in the hover."""
    (x_label, xs), (column, err, y_label) = x, y
    frame = pd.DataFrame(
        {
            "x": xs.to_numpy(float),
            "y": rows[column].to_numpy(float),
            "err": rows[err].to_numpy(float) if err in rows else np.full(len(rows), np.nan),
            "notes": rows["notes"].replace("", "assumptions met").to_numpy(),
            "fill": np.where(rows["notes"] == "", 1.0, 0.0),
            **{k: v.to_numpy() for k, v in (extra or {}).items()},
        }
    )
    number = "{0.000e}" if log else "{0.0000}"
    every_tip = (
        (x_label, "@x{0.000}"),
        (y_label, f"@y{number}"),
        ("1 sigma", f"@err{number}"),
        *tips,
        ("notes", "@notes"),
    )
    glyphs = (_bars("x", colour), _points("x", "y", colour, fill_alpha="fill"))
    layer = Layer(label, with_bars(frame, "y", frame["err"], log=log), glyphs, every_tip)
    return Picture(title, x_label, y_label, (layer,), y_log=log)


def gitt_picture(pulses: pd.DataFrame) -> Picture:
    """Titration pulses against the SOC after each: the diffusion coefficient (log scale)
    when the material's inputs are set, else the equilibrium (OCV) points with the 1-sigma
    from their rest's relaxation fits; a pulse whose assumptions failed drawn hollow."""
    if not len(pulses):
        return Picture(
            "titration (GITT): no pulse between two rests yet", "SOC after the pulse", EWE
        )
    has_d = bool("d_cm2_s" in pulses and pulses["d_cm2_s"].notna().any())
    title = (
        "titration (GITT): diffusion coefficient per pulse"
        if has_d
        else "titration (GITT): OCV after each pulse (D needs [electrochemistry.gitt] inputs)"
    )
    y = ("d_cm2_s", None, "D (cm^2/s)") if has_d else ("ocv_after_V", "ocv_unc_V", EWE)
    x = along_titration(pulses, "soc_after", "SOC after the pulse")
    return _titration(pulses, x, y, PALETTE[2], log=has_d, label="pulse", title=title)


def interruptions_picture(gaps: pd.DataFrame) -> Picture:
    """Current interruptions (ICI) against the SOC at each: the diffusion coefficient (log
    scale) when the material's inputs are set, else the resistance R; each with its 1-sigma,
    an interruption whose assumptions failed drawn hollow, its notes, R and k in the hover."""
    if not len(gaps):
        title = "interruptions (ICI): no short rest inside a current yet"
        return Picture(title, "SOC at the interruption", "R (ohm)")
    has_d = bool("d_cm2_s" in gaps and gaps["d_cm2_s"].notna().any())
    title = (
        "interruptions (ICI): diffusion coefficient"
        if has_d
        else "interruptions (ICI): resistance (D needs [electrochemistry.gitt] inputs)"
    )
    y = ("d_cm2_s", "d_unc_cm2_s", "D (cm^2/s)") if has_d else ("r_ohm", "r_unc_ohm", "R (ohm)")
    x = along_titration(gaps, "soc", "SOC at the interruption")
    extra = {"r_ohm": gaps["r_ohm"], "k": gaps["k_ohm_s05"]}
    tips = (("R", "@r_ohm{0.000} ohm"), ("k", "@k{0.000} ohm/s^0.5"))
    return _titration(
        gaps, x, y, PALETTE[3], log=has_d, label="interruption", title=title, extra=extra,
        tips=tips,
    )  # fmt: skip


# each plot of the tab: the view's table it draws, its height, and the picture it makes of it
PLOTS: dict[str, tuple[str, int, Callable[[Any], Picture]]] = {
    "dqdv": ("half_cycles", 280, dqdv_picture),
    "by_ewe": ("fits_on_cycles", 280, lambda t: valence_on_cycles_picture(t, "Ewe")),
    "by_capacity": ("fits_on_cycles", 300, lambda t: valence_on_cycles_picture(t, "capacity")),
    "capacity": ("cycles", 300, lambda t: cycles_picture(t, "capacity")),
    "efficiency": ("cycles", 280, lambda t: cycles_picture(t, "efficiency")),
    "resistance": ("steps", 280, resistance_picture),
    "gitt": ("gitt", 280, gitt_picture),
    "interruptions": ("interruptions", 280, interruptions_picture),
}


class CyclingPlots:
    """The Cycling tab's eight figures, each shown again only when its own table changed."""

    def __init__(self) -> None:
        self.plots = {name: PicturePlot(height) for name, (_, height, _) in PLOTS.items()}
        # the view's table each plot shows (the view makes a new one when it changes)
        self.shown: dict[str, Any] = {}
        p = {name: plot.pane for name, plot in self.plots.items()}

        def row(*panes: Any) -> pn.Row:
            return pn.Row(*panes, sizing_mode="stretch_width")

        # dQ/dV above valence vs Ewe: both against the cell voltage, read one above the other
        self.layout = pn.Column(
            p["dqdv"], p["by_ewe"], row(p["by_capacity"], p["capacity"]),
            row(p["efficiency"], p["resistance"]), row(p["gitt"], p["interruptions"]),
            sizing_mode="stretch_width",
        )  # fmt: skip

    def show(self, snap: Any) -> dict[str, str]:
        """What each plot did (``pictures.SAME``, ``REPLACED``, ``MADE``) with the snapshot's
        tables; a plot whose table is the one it shows is not looked at."""
        done = {}
        for name, (table, _, picture) in PLOTS.items():
            data = getattr(snap, table)
            if data is self.shown.get(name):
                continue
            done[name] = self.plots[name].show(picture(data))
            self.shown[name] = data
        return done
