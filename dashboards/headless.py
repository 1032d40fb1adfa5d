"""How operando drives a headless browser (the dashboard's tests and benchmark).

Debian's Chromium with Playwright: no browser download, and no connection attempts beyond the
page itself (the machines here have a closed network: without these flags Chromium keeps
trying Google's hosts).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def http_ready(url: str) -> bool:
    """Whether ``url`` answers 200 now (probe the dashboard's ``/liveness``: a GET of ``/``
    builds a whole page session)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def launch(playwright: Any) -> Any:
    """A headless Chromium from a started ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))


# The newest time any plot in the page holds: the largest value of a ``time`` column over the
# page's Bokeh data sources (Bokeh keeps datetimes as ms since the epoch). What the plots show
# lives in canvases; this reads what they were given.
_PLOTTED_UNTIL_JS = """() => {
  let best = null;
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
    for (const m of doc.all_models) {
      const t = m.data && m.data.time;
      if (!t || !t.length) continue;
      for (const v of t) if (best === null || v > best) best = v;
    }
  }
  return best;
}"""


def plotted_until(page: Any) -> float | None:
    """Seconds since the epoch of the newest point plotted in ``page`` (None: nothing yet)."""
    ms = page.evaluate(_PLOTTED_UNTIL_JS)
    return None if ms is None else float(ms) / 1e3


_DISTINCT_JS = """columns => {
  const seen = new Set();
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
    for (const m of doc.all_models) {
      if (!m.data || !columns.every(c => m.data[c])) continue;
      const n = m.data[columns[0]].length;
      for (let i = 0; i < n; i++) seen.add(JSON.stringify(columns.map(c => m.data[c][i])));
    }
  }
  return seen.size;
}"""


def plotted_rows(page: Any, *columns: str) -> int:
    """How many distinct rows of ``columns`` the page's data sources hold (what the plots
    were given, read in the browser: a patch the page could not apply shows here). Distinct,
    because a figure made again may leave its old sources in the page's models."""
    return int(page.evaluate(_DISTINCT_JS, list(columns)))


# the titles of the plots the page draws, found from its root views down (a figure made again,
# another edge's fractions, may stay among the document's models without being drawn)
_TITLES_JS = """() => {
  const out = [], seen = new Set();
  const walk = view => {
    if (!view || seen.has(view)) return;
    seen.add(view);
    if (view.model && view.model.title && view.model.renderers) out.push(view.model.title.text);
    for (const child of (view.child_views || [])) walk(child);
  };
  for (const root of (window.Bokeh ? Bokeh.index.roots : [])) walk(root);
  return out;
}"""


def drawn_titles(page: Any) -> list[str]:
    """The titles of the plots ``page`` draws now (Bokeh draws them into canvases)."""
    return [str(t) for t in page.evaluate(_TITLES_JS)]


# every tab of the dashboard, in the order the page shows them
TABS = (
    "Electrochemistry & valence",
    "Cycling",
    "Spectra",
    "Relaxation",
    "Dose & damage",
    "RIXS",
    "Events",
)


def watch_errors(page: Any, errors: list[str]) -> None:
    """Collect every uncaught page error and console error of ``page`` into ``errors``."""
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on(
        "console",
        lambda m: errors.append(f"console error: {m.text}") if m.type == "error" else None,
    )


def tour(page: Any, per_tab_s: float, shoot: Any = None) -> None:
    """Open every tab in turn and stay ``per_tab_s`` on each while the page updates;
    ``shoot(tab)`` (e.g. a screenshot) on each before leaving it."""
    for tab in TABS:
        page.get_by_text(tab, exact=True).click()
        page.wait_for_timeout(1e3 * per_tab_s)
        if shoot is not None:
            shoot(tab)
