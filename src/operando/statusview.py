"""``operando status`` for people: the running monitor's state as a few readable lines.

The monitor answers with one JSON object (``--json`` prints it as it is); this turns it into
what an operator reads at 3 a.m.: the cell (mode named, time as UTC, SOC), each source's
health, the spot and what the orchestrator holds, and the open alarms.
"""

from __future__ import annotations

from typing import Any

from operando.clock import utc_text
from operando.protocol import MODE_NAMES


def _utc(t: float | None) -> str:
    return "-" if t is None else utc_text(t)


def _num(v: Any, fmt: str, unit: str = "") -> str:
    return "-" if not isinstance(v, int | float) else f"{format(v, fmt)}{unit}"


def format_status(st: dict[str, Any]) -> str:
    lines = [f"monitor of {st.get('run_dir', '?')}"]
    cell = st.get("cell") or {}
    if cell:
        mode = MODE_NAMES.get(int(cell.get("mode") or 0), str(cell.get("mode")))
        lines.append(
            f"  cell: {mode}, step {cell.get('step')}, cycle {cell.get('cycle')}  "
            f"Ewe {_num(cell.get('Ewe_V'), '.4f', ' V')}  I {_num(cell.get('I_mA'), '.4f', ' mA')}"
            f"  SOC {_num(cell.get('soc'), '.3f')}  at {_utc(cell.get('t'))}"
        )
    else:
        lines.append("  cell: no potentiostat row yet")
    sp = st.get("spectra") or {}
    lines.append(
        f"  spectra: {sp.get('total', 0)} ({sp.get('aligned', 0)} aligned, "
        f"{sp.get('partial', 0)} partial, {sp.get('pending', 0)} waiting for the potentiostat)"
        f"  potentiostat rows: {st.get('potentiostat_rows', 0)}"
    )
    for key, v in sorted((st.get("valence") or {}).items()):
        lines.append(
            f"  valence {key}: {_num(v.get('valence'), '.3f')} ± "
            f"{_num(v.get('valence_unc'), '.3f')} (spectrum {v.get('spectrum_id')}, fit "
            f"{v.get('quality')})"
        )
    lines.append(
        "  source          role          messages  gaps (lost)  malformed  not derived  "
        "refused  strangers  silent"
    )
    for name, s in (st.get("sources") or {}).items():
        silent = s.get("silent_s")
        lines.append(
            f"  {name:<15} {s.get('role', ''):<13} {s.get('messages', 0):>8}  "
            f"{s.get('gaps', 0):>4} ({s.get('lost', 0)}){'':<5} {s.get('malformed', 0):>9}  "
            f"{s.get('not_derived', 0):>11}  {s.get('refused', 0):>7}  "
            f"{s.get('stranger_messages', 0):>9}  {_num(silent, '.1f', ' s')}"
        )
    orch = st.get("orchestration") or {}
    holding = orch.get("holding") or []
    lines.append(
        f"  spot: {orch.get('spot') or '-'}  spent: {', '.join(orch.get('spent') or []) or 'none'}"
        f"  triggers fired: {orch.get('fired', 0)}  "
        + (f"HOLDING the cell for {', '.join(holding)}" if holding else "not holding the cell")
        + ("  SCANS PAUSED (no fresh spot)" if orch.get("scans_paused") else "")
    )
    alarms = orch.get("alarms") or []
    if alarms:
        lines.append(f"  OPEN ALARMS ({len(alarms)}):")
        for a in alarms:
            times = f" (x{a['count']})" if a.get("count", 1) > 1 else ""
            lines.append(f"    #{a.get('id')} [{a.get('category')}]{times} {a.get('message')}")
    else:
        lines.append("  no open alarms")
    lines.append(f"  source time: {_utc(st.get('source_time'))}")
    return "\n".join(lines)
