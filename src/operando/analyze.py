"""Live analysis of each aligned spectrum: valence per channel, damage findings, relaxation
during rests, RIXS reductions. Wires the pure functions of ``operando.analysis`` to a run:
keeps the per-run state (damage detector, rest periods, RIXS maps), writes results to
the store and puts them on the state stream. The same object runs live and in reprocess.
Doses are counted on arrival (``operando.doseledger``); each spectrum brings its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from operando.align import Alignment
from operando.analysis.damage import (
    DOSE_CHECK,
    DamageDetector,
    DamageSuspicion,
    DamageVerdict,
    ScanSummary,
    settled,
)
from operando.analysis.lcf import FitError, FitResult
from operando.analysis.normalize import EDGE_WINDOWS, NormalizationError, normalize
from operando.analysis.references import ReferenceError, References
from operando.analysis.relaxation import fit_relaxation, series_name
from operando.analysis.rest import RestCriterion
from operando.analysis.rixs import MapAccumulator
from operando.analysis.series import mcr_als, svd_rank
from operando.analysis.signal import poisson_sigma, signal
from operando.analysis.valence import fit_scan
from operando.config import AnalysisConfig
from operando.events import EventKind, Recorder
from operando.protocol import plain
from operando.store.rows import AnalysisRow, RelaxationRow, RixsRow, Row, SeriesRow

log = logging.getLogger(__name__)

Put = Callable[[Row], None]  # the run store's, for one typed row
# a table changed (the state stream's notices): its name, and what of it changed
Publish = Callable[[str, dict[str, Any]], None]
_json = msgspec.json.Encoder(enc_hook=plain)


class SpectrumInput(msgspec.Struct, kw_only=True):
    """What the analyzer needs of one aligned spectrum."""

    spectrum_id: int
    kind: str
    edge: str
    spot: str | None
    flux_ph_s: float
    exposure_s: float
    extra: dict[str, Any]
    scan_id: str = ""
    map_id: str = ""
    row_offset: int = 0
    rows_total: int = 0
    # its spot's dose before and after it, counted on arrival (nan: no spot)
    dose_before_Gy: float = math.nan
    dose_after_Gy: float = math.nan


class Analyzer:
    def __init__(
        self, cfg: AnalysisConfig, base_dir: Path, put: Put, event: Recorder, publish: Publish
    ) -> None:
        self.cfg = cfg
        self.put, self.event, self.publish = put, event, publish
        self.refs: dict[str, References] = {}
        for edge, path in cfg.references.items():
            p = Path(path) if Path(path).is_absolute() else base_dir / path
            try:
                self.refs[edge] = References.from_file(p)
            except ReferenceError as e:
                self.event(EventKind.ANALYSIS_ERROR, None, None, edge=edge, error=str(e))
        self.rest_criterion = RestCriterion(current_mA=cfg.rest_current_mA)
        self.damage = DamageDetector(cfg.damage, self.rest_criterion)
        self.rest: dict[str, list[tuple[float, float, float]]] = {}  # channel -> (t, v, sigma)
        # channel -> (t since the stop, value, sigma or None, scan duration): what a fit takes
        self.rest_series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None, float]] = {}
        self.rest_fitted: dict[str, float] = {}  # channel -> newest time its latest fit saw
        self.rest_tau: dict[str, float] = {}  # series -> its latest resolved relaxation time
        self.rest_stop: float | None = None
        self.maps: dict[str, MapAccumulator] = {}
        self.series: dict[tuple[str, str], tuple[np.ndarray, list[np.ndarray]]] = {}
        self.missing_refs: set[str] = set()
        self.counts: dict[str, int] = {
            "fits": 0,
            "damage_suspicions": 0,
            "damage_checks": 0,
            "damage_verdicts": 0,
            "relaxation_fits": 0,
        }
        self.latest_valence: dict[str, dict[str, Any]] = {}
        # what the damage tests find, for the orchestrator: suspicions and verdicts
        self.on_finding: list[Callable[[DamageSuspicion | DamageVerdict], None]] = []

    # -- entry -------------------------------------------------------------------------------
    def on_spectrum(
        self,
        s: SpectrumInput,
        arrays: Mapping[str, np.ndarray],
        al: Alignment,
        rest_ewe: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """``rest_ewe``: the cell voltage since the current stopped (``rest_voltage``), read
        by the caller, which owns the potentiostat record."""
        if not self.cfg.enabled:
            return
        if s.kind == "rixs_rows":
            self._rixs(s, arrays, al)
            return
        fits = self._fits(s, arrays)
        # the relaxation first: whether the rest has settled is the damage tests' question
        self._relaxation(fits, al, rest_ewe, s.edge)
        if "TEY" in fits and s.spot is not None:
            self._damage(s, arrays, fits["TEY"], al)
        if fits:
            self.publish("analysis", {"spectrum_id": s.spectrum_id, "channels": sorted(fits)})

    # -- valence -----------------------------------------------------------------------------
    def _fits(self, s: SpectrumInput, arrays: Mapping[str, np.ndarray]) -> dict[str, FitResult]:
        refs = self.refs.get(s.edge)
        if refs is None:
            if s.edge not in self.missing_refs:
                self.missing_refs.add(s.edge)
                self.event(
                    EventKind.ANALYSIS_SKIPPED,
                    None,
                    None,
                    edge=s.edge,
                    reason=f"no references configured for {s.edge} "
                    "([analysis.references] in the experiment file): "
                    "series analysis (SVD, MCR-ALS) only",
                )
            self._series(s, arrays)
            return {}
        out = {}
        for channel in self.cfg.channels:
            if channel not in arrays:
                continue
            try:
                fit = fit_scan(
                    arrays,
                    channel,
                    refs,
                    fit_range=self.cfg.fit_ranges.get(s.edge),
                    self_absorption=channel in self.cfg.self_absorption,
                )
            except (FitError, ValueError, np.linalg.LinAlgError) as err:
                self.event(
                    EventKind.FIT_FAILED,
                    None,
                    None,
                    spectrum_id=s.spectrum_id,
                    channel=channel,
                    error=str(err),
                )
                continue
            out[channel] = fit
            self.counts["fits"] += 1
            # the newest valence of each edge and channel, for status lines (a dict replaced
            # whole: read from the event loop while this thread writes)
            self.latest_valence = {
                **self.latest_valence,
                f"{s.edge} {channel}": {
                    "spectrum_id": s.spectrum_id,
                    "valence": fit.average_valence,
                    "valence_unc": fit.valence_uncertainty,
                    "quality": fit.quality,
                },
            }
            self.put(
                AnalysisRow(
                    s.spectrum_id,
                    channel,
                    fit.method,
                    fit.average_valence,
                    fit.valence_uncertainty,
                    fit.chi2_red,
                    fit.shift_eV,
                    fit.self_absorption_beta,
                    _json.encode(fit.fractions).decode(),
                    _json.encode(fit.uncertainties).decode(),
                    _json.encode(fit).decode(),
                    fit.quality,
                    _json.encode(fit.notes).decode(),
                )
            )
        return out

    # -- series without references ------------------------------------------------------------
    def _series(self, s: SpectrumInput, arrays: Mapping[str, np.ndarray]) -> None:
        """Normalised spectra of an edge accumulate; every few, SVD rank and MCR-ALS."""
        if s.edge not in EDGE_WINDOWS:
            return
        e = np.asarray(arrays["energy"], float)
        for channel in self.cfg.channels:
            if channel not in arrays:
                continue
            y = signal(arrays, channel)[0]
            key = (s.edge, channel)
            try:
                norm = normalize(e, y, s.edge)
            except NormalizationError as err:
                self.event(
                    EventKind.SERIES_SKIPPED,
                    None,
                    None,
                    spectrum_id=s.spectrum_id,
                    channel=channel,
                    error=str(err),
                )
                continue
            grid, rows = self.series.setdefault(key, (e, []))
            rows.append(np.interp(grid, e, norm.mu))
            if len(rows) < 6 or len(rows) % 3:
                continue
            d = np.asarray(rows)
            rank, sv = svd_rank(d)
            k = min(max(rank, 2), 4)
            try:
                mcr = mcr_als(d, k)
            except Exception as err:  # pyMCR can fail on degenerate series; say so
                self.event(
                    EventKind.SERIES_FAILED,
                    None,
                    None,
                    edge=s.edge,
                    channel=channel,
                    error=f"{type(err).__name__}: {err}",
                )
                continue
            body = {
                "edge": s.edge,
                "channel": channel,
                "spectra": len(rows),
                "rank": rank,
                "singular_values": sv[:8].tolist(),
                "components": k,
                "residual": mcr.residual,
                "warning": mcr.warning,
                "latest_concentrations": mcr.concentrations[-1].tolist(),
            }
            self.put(
                SeriesRow(
                    s.edge, channel, len(rows), rank, k, mcr.residual, _json.encode(body).decode()
                )
            )
            self.publish("series", {"edge": s.edge, "channel": channel})

    # -- damage ------------------------------------------------------------------------------
    def _damage(
        self,
        s: SpectrumInput,
        arrays: Mapping[str, np.ndarray],
        fit: FitResult,
        al: Alignment,
    ) -> None:
        if not math.isfinite(s.dose_before_Gy):
            return
        refs = self.refs[s.edge]
        lowest = (
            refs.names[int(np.nanargmin(refs.oxidation))]
            if np.any(np.isfinite(refs.oxidation))
            else refs.names[0]
        )
        e = np.asarray(arrays["energy"], float)
        y, raw, i0 = signal(arrays, "TEY")
        sigma = poisson_sigma(raw, i0)
        if sigma is None:
            sigma = np.full_like(y, np.std(np.diff(y)) / math.sqrt(2))
        m = (e >= fit.fit_range[0]) & (e <= fit.fit_range[1])
        at_rest = self.rest_criterion.spectrum(al)
        since = al.t_since_current_change_s
        taus = [
            tau
            for series, tau in self.rest_tau.items()
            if series == "Ewe" or series.startswith(f"{s.edge} ")
        ]
        is_settled, _why = settled(at_rest, since, taus, self.damage.s)
        step_start = 0.5 * (al.t_start + al.t_end) - since  # nan when no change was seen
        summary = ScanSummary(
            spectrum_id=s.spectrum_id,
            spot=s.spot or "",
            edge=s.edge,
            dose_before_Gy=s.dose_before_Gy,
            dose_after_Gy=s.dose_after_Gy,
            soc=al.soc,
            i_mean_mA=al.i_mean_mA,
            mode=al.mode,
            lowest=lowest,
            lowest_fraction=fit.fractions[lowest],
            lowest_uncertainty=fit.uncertainties[lowest],
            energy=e[m],
            y=y[m],
            sigma=sigma[m],
            t=al.t_end,
            rest_start=step_start if at_rest else math.nan,
            settled=is_settled,
            since_change_s=since,
            step_start=step_start,
        )
        for found in self.damage.add(summary):
            if not isinstance(found, DamageSuspicion):
                kind = EventKind.DAMAGE_VERDICT
            elif found.test == DOSE_CHECK:
                kind = EventKind.DAMAGE_CHECK
            else:
                kind = EventKind.DAMAGE_SUSPICION
            self.counts[f"{kind}s"] += 1
            for listener in self.on_finding:
                listener(found)
            self.event(kind, None, al.t_end, **msgspec.to_builtins(found, enc_hook=plain))

    # -- relaxation --------------------------------------------------------------------------
    def _relaxation(
        self,
        fits: dict[str, FitResult],
        al: Alignment,
        rest_ewe: tuple[np.ndarray, np.ndarray] | None,
        edge: str = "",
    ) -> None:
        """During a rest: fit each edge's and channel's valence ("Mn-L TEY"), and Ewe, against
        time since the stop. Each edge is a series of its own: Mn and Ni valences measured in
        turn are not one quantity. Ewe is fitted from its own rows whatever the spectra do
        (a rest too short for five scans still has hundreds of voltage rows).

        Refits follow the rest geometrically (once it has gone on a fifth longer than at the
        last fit), not every scan: three models on hundreds of voltage rows per scan kept the
        monitor busy for seconds at a time. Time, not the number of points, because the
        voltage is a fixed number of rows picked over the rest. Every point still counts: the
        rest's last fit, when it ends, sees all of them."""
        since = al.t_since_current_change_s
        if not self.rest_criterion.spectrum(al) or not math.isfinite(since):
            self._end_rest()
            return
        stop = 0.5 * (al.t_start + al.t_end) - since
        if self.rest_stop is None or abs(stop - self.rest_stop) > 1.0:
            self._end_rest()
            self.rest_stop = stop
        scan_s = al.t_end - al.t_start
        for channel, fit in fits.items():
            series = series_name(edge, channel)
            pts = self.rest.setdefault(series, [])
            pts.append((since, fit.average_valence, max(fit.valence_uncertainty, 1e-4)))
            if len(pts) >= self.cfg.relaxation_min_points:
                t, v, sig = (np.array(c) for c in zip(*pts, strict=True))
                self.rest_series[series] = (t, v, sig, scan_s)
        if rest_ewe is not None:  # the voltage, from the potentiostat
            self.rest_series["Ewe"] = (rest_ewe[0], rest_ewe[1], None, 0.0)
        for channel, series in self.rest_series.items():
            newest, fitted = float(series[0][-1]), self.rest_fitted.get(channel, -math.inf)
            if newest > fitted and newest >= 1.2 * fitted:
                self._fit_rest(channel, series)

    def _end_rest(self) -> None:
        """The rest is over: one last fit of each series with the points no fit has seen."""
        for channel, series in self.rest_series.items():
            if float(series[0][-1]) > self.rest_fitted.get(channel, -math.inf):
                self._fit_rest(channel, series)
        self.rest, self.rest_series, self.rest_fitted, self.rest_stop = {}, {}, {}, None
        self.rest_tau = {}

    def finish(self) -> None:
        """End of the run (or of a reprocess): a rest still going gets its last fit."""
        self._end_rest()

    def _fit_rest(
        self, channel: str, series: tuple[np.ndarray, np.ndarray, np.ndarray | None, float]
    ) -> None:
        t, v, sig, scan_s = series
        self.rest_fitted[channel] = float(t[-1])
        try:
            res = fit_relaxation(t, v, sig, scan_duration_s=scan_s)
        except ValueError:
            return
        quantity = "Ewe_V" if channel == "Ewe" else "average_valence"
        if res.determined and math.isfinite(res.tau_s):
            self.rest_tau[channel] = res.tau_s
        else:  # a newer fit that cannot tell: the rest is not known to settle yet
            self.rest_tau.pop(channel, None)
        self.counts["relaxation_fits"] += 1
        self.put(
            RelaxationRow(
                self.rest_stop,
                channel,
                quantity,
                res.best,
                res.tau_s,
                res.tau_err_s,
                int(res.resolved),
                res.n_points,
                _json.encode(res).decode(),
            )
        )
        self.publish("relaxation", {"rest_start": self.rest_stop, "series": channel})

    # -- RIXS --------------------------------------------------------------------------------
    def _rixs(self, s: SpectrumInput, arrays: Mapping[str, np.ndarray], al: Alignment) -> None:
        key = s.map_id or s.scan_id
        acc = self.maps.get(key)
        if acc is None:
            acc = MapAccumulator(s.rows_total, arrays["emission"])
            self.maps[key] = acc
        try:
            acc.add(s.row_offset, arrays["excitation"], arrays["counts"], arrays["emission"])
        except ValueError as err:
            self.event(EventKind.RIXS_ERROR, None, None, map_id=key, error=str(err))
            return
        red = acc.reduce()
        self.put(
            RixsRow(
                key,
                red.rows,
                s.rows_total,
                red.roi,
                red.reference,
                red.ratio,
                al.soc,
                # with the time of the row that made it: a map's reduction goes out on the
                # bus (``export.compose``) at its newest row's time, the same live and after
                _json.encode({**msgspec.structs.asdict(red), "t_end": al.t_end}).decode(),
            )
        )
        self.publish("rixs", {"map_id": key, "rows": red.rows})
        if acc.complete:
            del self.maps[key]
