"""What a run directory holds, in one JSON-able summary (``operando inspect``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from operando.clock import utc_text
from operando.rawlog import log_bytes
from operando.store.files import PUBLISH_DIR
from operando.store.reader import Run, lost_ranges, stranger_sessions


def summarize(run_dir: str | Path) -> dict[str, Any]:
    with Run(run_dir) as run:
        return run.summary()


def sources_not_closed(conn: Any) -> list[str]:
    """The links whose last series was not closed: a clean end closes every one (a killed
    driver or monitor leaves it open)."""
    return [
        link
        for (link,) in conn.execute(
            "SELECT link FROM events WHERE kind IN ('series_start', 'series_end') "
            "GROUP BY link HAVING max(CASE WHEN kind = 'series_start' THEN id END) > "
            "coalesce(max(CASE WHEN kind = 'series_end' THEN id END), 0)"
        )
    ]


def last_received(conn: Any) -> float | None:
    """When the newest message arrived (epoch s, this machine's clock)."""
    (ns,) = conn.execute("SELECT max(recv_ns) FROM raw").fetchone()
    return None if ns is None else ns * 1e-9


def published_to(run_dir: Path) -> list[dict[str, Any]]:
    """Where ``operando publish`` sends the run and how far it got (from each cursor it
    saved): target, events and streams given out, whether the stop went out, when saved."""
    out = []
    for path in sorted((run_dir / PUBLISH_DIR).glob("*.json")):
        try:
            saved = json.loads(path.read_bytes())
            cursor = saved["cursor"]
            out.append(
                {
                    "sink": path.stem,
                    **saved["target"],
                    "events": sum(cursor["events"].values()),
                    "streams": len(cursor["descriptors"]),
                    "stop_sent": bool(cursor["stopped"]),
                    "waiting_spectra": len(cursor["waiting"]),
                    "saved": path.stat().st_mtime,
                }
            )
        except (OSError, ValueError, KeyError, TypeError) as e:  # a cursor being replaced
            out.append({"sink": path.stem, "error": f"{path.name}: {e}"})
    return out


def summary_of(conn: Any, run_dir: Path) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for link, n, malformed, refilled in conn.execute(
        "SELECT link, count(*), sum(status = 'malformed'), sum(refill) FROM raw GROUP BY link"
    ):
        sources[link] = {
            "messages": n,
            "malformed": malformed,
            "refilled": refilled,
            "gaps": 0,
            "lost": 0,
            "duplicates": 0,
            "out_of_order": 0,
            "late": 0,
            "restarts": 0,
            "not_derived": 0,
            "refused": 0,
            "stranger_messages": 0,
        }
    per_link_events = {
        "gap": "gaps",
        "out_of_order": "out_of_order",
        "late": "late",
        "source_restarted": "restarts",
        "duplicate": "duplicates",
        "derive_error": "not_derived",
        "driver_refused": "refused",
    }
    for link, kind, n in conn.execute(
        "SELECT link, kind, count(*) FROM events GROUP BY link, kind"
    ):
        if link in sources and kind in per_link_events:
            sources[link][per_link_events[kind]] = n
    # another source's stream on a link: its messages are recorded, never derived
    for link, sessions in stranger_sessions(conn).items():
        if link in sources:
            sources[link]["stranger_messages"] = sum(sessions.values())
    for link, src in sources.items():
        # what the run does not hold at the end: gaps refilled since no longer count
        lost = lost_ranges(conn, link)
        src["lost"] = sum(b - a + 1 for ranges in lost.values() for a, b in ranges)
        src["lost_ranges"] = {session: ranges for session, ranges in lost.items() if ranges}
    events = dict(conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    unclosed = sources_not_closed(conn)
    alarms: dict[int, dict[str, Any]] = {}
    for kind, detail in conn.execute(
        "SELECT kind, detail FROM events WHERE kind IN ('alarm', 'alarm_acknowledged') ORDER BY id"
    ):
        d = json.loads(detail)
        if kind == "alarm":
            alarms[int(d["id"])] = d
        elif int(d.get("id", -1)) in alarms:
            alarms.pop(int(d["id"]))
    (total,) = conn.execute("SELECT count(*) FROM spectra").fetchone()
    aligned, partial, soc_min, soc_max = conn.execute(
        "SELECT count(*), coalesce(sum(partial), 0), min(soc), max(soc) FROM alignment"
    ).fetchone()
    by_kind = dict(conn.execute("SELECT kind, count(*) FROM spectra GROUP BY kind").fetchall())
    (rows,) = conn.execute("SELECT count(*) FROM potentiostat").fetchone()
    t_first, t_last = conn.execute(
        "SELECT min(t_ns), max(t_ns) FROM raw WHERE status = 'ok' AND kind NOT IN "
        "('command', 'ack')"
    ).fetchone()
    ewe_min, ewe_max = conn.execute("SELECT min(ewe), max(ewe) FROM potentiostat").fetchone()
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    fits = dict(conn.execute("SELECT channel, count(*) FROM analysis GROUP BY channel"))
    fit_quality = dict(conn.execute("SELECT quality, count(*) FROM analysis GROUP BY quality"))
    (analysed,) = conn.execute("SELECT count(DISTINCT spectrum_id) FROM analysis").fetchone()
    doses = dict(conn.execute("SELECT spot, max(after_Gy) FROM dose GROUP BY spot"))
    # suspicions by test (damage_flag: runs recorded before suspicions), verdicts by outcome
    suspicions = dict(
        conn.execute(
            "SELECT json_extract(detail, '$.test'), count(*) FROM events "
            "WHERE kind IN ('damage_suspicion', 'damage_flag') GROUP BY 1"
        )
    )
    verdicts = dict(
        conn.execute(
            "SELECT json_extract(detail, '$.verdict'), count(*) FROM events "
            "WHERE kind = 'damage_verdict' GROUP BY 1"
        )
    )
    (checks,) = conn.execute("SELECT count(*) FROM events WHERE kind = 'damage_check'").fetchone()
    relax = conn.execute(
        "SELECT channel, model, tau_s, tau_err_s, resolved, n_points FROM "
        "relaxation ORDER BY rest_start, channel"
    ).fetchall()
    (maps,) = conn.execute("SELECT count(*) FROM rixs").fetchone()
    series = [
        dict(zip(("edge", "channel", "spectra", "rank", "components", "residual"), r, strict=True))
        for r in conn.execute(
            "SELECT edge, channel, spectra, rank, components, residual "
            "FROM series ORDER BY edge, channel"
        )
    ]
    return {
        "run_dir": str(run_dir),
        "sources": sources,
        "spectra": {
            "total": total,
            "aligned": aligned,
            "partial": partial,
            "unaligned": total - aligned,
            "by_kind": by_kind,
        },
        "potentiostat_rows": rows,
        "events": events,
        "t_first": None if t_first is None else t_first * 1e-9,
        "t_last": None if t_last is None else t_last * 1e-9,
        "sources_not_closed": unclosed,
        "published": published_to(Path(run_dir)),
        "open_alarms": [
            {k: a.get(k) for k in ("id", "category", "message", "count")} for a in alarms.values()
        ],
        # wall clock of this machine when the newest message arrived
        "last_received": last_received(conn),
        "soc": {"min": soc_min, "max": soc_max},
        "ewe_V": {"min": ewe_min, "max": ewe_max},
        "raw_log_bytes": log_bytes(run_dir),
        "analysis": {
            "spectra_analysed": analysed,
            "fits": fits,
            "fit_quality": fit_quality,
            "damage_suspicions": suspicions,
            "damage_suspicions_total": sum(suspicions.values()),
            "damage_checks": checks,
            "damage_verdicts": verdicts,
            "dose_Gy_by_spot": doses,
            "relaxation": [
                dict(
                    zip(
                        ("channel", "model", "tau_s", "tau_err_s", "resolved", "n_points"),
                        r,
                        strict=True,
                    )
                )
                for r in relax
            ],
            "rixs_maps": maps,
            "series": series,
        },
        "meta": meta,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"run {s['run_dir']}" + (f" (uid {s['uid']})" if s.get("uid") else "")]
    for name, src in s["sources"].items():
        lines.append(
            f"  {name:<14} {src['messages']:>8} messages  {src['gaps']} gaps "
            f"({src['refilled'] or 0} refilled, {src['lost']} lost)"
            f"  {src['malformed']} malformed  {src['duplicates']} duplicates  {src['late']} late"
            f"  {src['not_derived']} not derived  {src['refused']} refused by the driver"
        )
        if src["stranger_messages"]:
            lines.append(
                f"    {src['stranger_messages']} messages from another source on this link were "
                "refused (recorded, not derived): see the stranger_refused events"
            )
        if src["not_derived"]:
            lines.append(
                f"    {src['not_derived']} recorded messages gave no derived rows (kept in the raw "
                "log; the derive_error events say why; operando reprocess derives them again)"
            )
        for session, ranges in src.get("lost_ranges", {}).items():
            shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ranges[:20])
            more = f" and {len(ranges) - 20} more ranges" if len(ranges) > 20 else ""
            lines.append(f"    lost from session {session}: seq {shown}{more}")
    if s["t_first"] is not None:
        span = s["t_last"] - s["t_first"]
        ending = (
            "ended cleanly (every source closed its series)"
            if not s["sources_not_closed"]
            else "ended UNCLEANLY: no series end from "
            + ", ".join(s["sources_not_closed"])
            + " (stopped without closing it, or still recording)"
        )
        lines.append(
            f"  recorded {utc_text(s['t_first'])} to {utc_text(s['t_last'])} "
            f"({int(span // 3600)}:{int(span % 3600 // 60):02d}:{int(span % 60):02d} of source "
            f"time); {ending}"
        )
    sp = s["spectra"]
    lines.append(f"  spectra: {sp['total']} ({sp['aligned']} aligned, {sp['partial']} partial)")
    lines.append(f"  potentiostat rows: {s['potentiostat_rows']}")
    if s["soc"]["min"] is not None:
        lines.append(f"  SOC at spectra: {s['soc']['min']:.3f} .. {s['soc']['max']:.3f}")
    a = s["analysis"]
    lines.append(
        f"  analysed spectra: {a['spectra_analysed']}  fits {a['fits']}  RIXS maps {a['rixs_maps']}"
    )
    verdicts = a["damage_verdicts"]
    lines.append(
        f"  damage: {verdicts.get('damage', 0)} confirmed by a control spot; "
        f"{a['damage_suspicions_total']} suspicions, {a['damage_checks']} checks by dose"
        + (
            " (verdicts: " + ", ".join(f"{n} {k}" for k, n in sorted(verdicts.items())) + ")"
            if verdicts
            else ""
        )
    )
    if a["fit_quality"]:
        q = a["fit_quality"]
        lines.append(
            "  fit quality: "
            + ", ".join(f"{n} {k}" for k, n in sorted(q.items(), key=lambda kv: -kv[1]))
            + ("  (poor: do not act on these; see Run.fits() notes)" if q.get("poor") else "")
        )
    if a["dose_Gy_by_spot"]:
        lines.append(
            "  dose by spot (MGy): "
            + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sorted(a["dose_Gy_by_spot"].items()))
        )
    lines += _electrochemistry_lines(s.get("electrochemistry") or {})
    lines += [f"  {published_text(p)}" for p in s.get("published", [])]
    if s["open_alarms"]:
        lines.append(f"  OPEN ALARMS ({len(s['open_alarms'])}):")
        lines += [f"    #{a['id']} [{a['category']}] {a['message']}" for a in s["open_alarms"]]
    else:
        lines.append("  no open alarms")
    lines.append("  events: " + json.dumps(s["events"]))
    return "\n".join(lines)


def published_text(p: dict[str, Any]) -> str:
    """One line: where the run's documents go and how far they got."""
    if "error" in p:
        return f"published ({p['sink']}): cursor unreadable: {p['error']}"
    state = (
        "the stop sent"
        if p["stop_sent"]
        else "no stop yet (the run has not ended, or the publisher was stopped: "
        f"operando publish RUN --{p['sink']} {p['url']} sends the rest)"
    )
    waiting = (
        f", {p['waiting_spectra']} spectra waiting to be final" if p["waiting_spectra"] else ""
    )
    return (
        f"published to {p['url']} ({p['stream']}): {p['events']} events in {p['streams']} "
        f"streams{waiting}, {state}; last acknowledged {utc_text(p['saved'])}"
    )


def _electrochemistry_lines(e: dict[str, Any]) -> list[str]:
    if not e.get("derived"):
        return ["  cycles: not derived (recorded before they were; operando reprocess adds them)"]
    cycles = e["cycles"]
    complete = [c for c in cycles if c["complete"]]
    out = [
        f"  cycles (from the charge passed): {len(complete)} complete of {len(cycles)}, "
        f"{e['half_cycles']} half-cycles"
    ]
    for c in complete[-3:]:
        out.append(
            f"    cycle {c['cycle']}: charge {c['charge_mAh']:.4g} mAh, discharge "
            f"{c['discharge_mAh']:.4g} mAh, CE {c['coulombic_efficiency']:.4f}, "
            f"retention {100 * c['retention']:.1f} %"
        )
    if e["current_steps"]:
        r0 = e["r_0_ohm_median"]
        said = (
            f"R0 (extrapolated to the step) median {r0:.4g} ohm from {e['r_0_steps']}, "
            f"1-sigma {e['r_0_unc_ohm_median']:.2g} ohm a step"
            if r0 is not None
            else "rows too sparse to extrapolate R0"
        )
        out.append(f"  current steps: {e['current_steps']}; {said}")
    if e.get("gitt_pulses"):
        d = e["d_cm2_s_range"]
        out.append(
            f"  titration pulses (GITT): {e['gitt_pulses']}, {e['gitt_trusted']} with every "
            "assumption met; " + (f"D {d[0]:.2g} .. {d[1]:.2g} cm^2/s" if d else NO_D)
        )
    if e.get("interruptions"):
        d, r = e["ici_d_cm2_s_range"], e["ici_r_ohm_median"]
        out.append(
            f"  current interruptions (ICI): {e['interruptions']}, "
            f"{e['interruptions_trusted']} with every assumption met"
            + (f"; R median {r:.4g} ohm" if r is not None else "")
            + "; "
            + (f"D {d[0]:.2g} .. {d[1]:.2g} cm^2/s" if d else NO_D)
        )
    return out


NO_D = (
    "D not computed (set [electrochemistry.gitt] molar_mass_g_mol, molar_volume_cm3_mol, "
    "electrode_area_cm2 and cycling.active_mass_mg)"
)
