"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a live demo.

Screenshots go to ``test-artifacts/`` (or $OPERANDO_ARTIFACTS): look at them when a test fails.
Skipped, with the reason, where Chromium or Playwright is missing (.ci/run installs both).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import REPO, TiledServer, cli, recorded_events, wait_for
from operando.dashboards.headless import (
    CHROMIUM,
    drawn_titles,
    http_ready,
    launch,
    plotted_rows,
    plotted_until,
    tour,
    watch_errors,
)
from operando.dashboards.view import RunView

from operando.config import demo_presets
from operando.demo import free_ports
from operando.store import open_readonly

ARTIFACTS = Path(os.environ.get("OPERANDO_ARTIFACTS", REPO / "test-artifacts"))

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _spectra(page) -> int:
    return int(page.locator(".op-spectra").get_attribute("data-count"))


@pytest.mark.slow
def test_live_dashboard_updates_alarms_and_reloads_with_history(tmp_path, processes, browser):
    run = tmp_path / "run"
    port = free_ports(1)[0]
    demo = processes(
        "demo",
        "--preset",
        "lnmo-surface",  # damages the sample: suspected, then confirmed on a control spot
        "--headless",
        "--duration",
        "150",
        "--speed",
        "120",
        "--run-dir",
        str(run),
        "--dashboard-port",
        str(port),
        log=tmp_path / "demo.log",
    )
    url = f"http://127.0.0.1:{port}/"
    # generous: the demo starts four processes at once on two cores
    # on /liveness: a probe of / builds a whole page each time
    wait_for(lambda: http_ready(url + "liveness"), 120, 0.5, what=f"dashboard at {url}")
    assert json.loads((run / "demo.json").read_text())["dashboard"] == url

    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(url)
    page.wait_for_selector(".op-spectra", timeout=30_000)
    # plots appear: Bokeh draws each figure into canvases
    wait_for(lambda: page.locator("canvas").count() >= 6, 30, 0.5, what="plots drawn")
    first = _spectra(page)
    # ... and update as spectra arrive
    wait_for(lambda: _spectra(page) >= first + 3, 60, 0.5, what="the spectrum count to grow")
    # ... and the plots follow: what they were given reaches further in time, close to the
    # newest row in the store (at 120x, 10 min of experiment are 5 s of wall time)
    t_plot = wait_for(lambda: plotted_until(page), 30, 0.5, what="plotted data")
    wait_for(
        lambda: (plotted_until(page) or 0) > t_plot + 300, 30, 0.5, what="the plots to move on"
    )
    conn = open_readonly(run)
    (newest,) = conn.execute("SELECT max(t) FROM potentiostat").fetchone()
    conn.close()
    assert newest - plotted_until(page) < 600
    # every fit reaches the valence plot in the browser, the newest appended to what it holds
    # (a patch the page could not apply once left it at the first fits while the header
    # counted on)
    view = RunView(run)
    view.refresh()
    fits = len(view.snapshot.fits)
    view.close()
    assert fits > 0
    wait_for(
        lambda: plotted_rows(page, "spectrum", "group", "valence") >= fits,
        30,
        0.5,
        what=f"{fits} fits plotted",
    )
    _shot(page, "dashboard-live")

    # a second browser at the same time sees the same run
    other = browser.new_page(viewport={"width": 1000, "height": 800})
    other.goto(url)
    other.wait_for_selector(".op-spectra", timeout=30_000)
    wait_for(lambda: _spectra(other) >= first + 3, 30, 0.5, what="second browser's count")

    # the simulator damages the sample: once a control spot confirms it, an alarm appears
    # and stays until acknowledged
    damage = page.locator('.op-alarm[data-category="damage"]').first
    damage.wait_for(timeout=120_000)
    text = damage.inner_text()
    assert "beam damage confirmed on spot" in text and "control spot" in text
    alarm_id = int(text.split("#")[1].split()[0])
    _shot(page, "dashboard-damage-alarm")
    page.get_by_text("Dose & damage", exact=True).click()
    # as long as the other page waits: a loaded CI machine once drew the tab in just over 10 s
    page.wait_for_selector(".op-damage", timeout=30_000)
    _shot(page, "dashboard-dose")

    # a reload shows the whole history, not just what came after it
    seen = _spectra(page)
    page.reload()
    page.wait_for_selector(".op-spectra", timeout=30_000)
    assert _spectra(page) >= seen
    wait_for(lambda: page.locator("canvas").count() >= 6, 30, 0.5, what="plots after reload")

    # acknowledging from the page (the demo starts the dashboard with command rights)
    label = f"#{alarm_id} damage"
    page.locator("select", has=page.locator("option", has_text=label)).select_option(label=label)
    page.get_by_role("button", name="Acknowledge alarm").click()
    wait_for(
        lambda: page.locator(f'.op-alarm:has-text("ALARM #{alarm_id} ")').count() == 0,
        90,  # the monitor acks at once (its events say so); a busy page redraws late
        0.5,
        what=f"alarm {alarm_id} to go after acknowledging",
    )
    assert "acknowledge: done" in page.locator(".op-message").inner_text()
    _shot(page, "dashboard-after-acknowledge")

    demo.p.send_signal(signal.SIGINT)
    assert demo.p.wait(90) == 0, demo.output()
    acks = [a["id"] for a in recorded_events(run, "alarm_acknowledged")]
    commands = recorded_events(run, "command")
    assert alarm_id in acks
    assert any(c["action"] == "acknowledge" and c["ok"] for c in commands)  # audited


@pytest.mark.slow
def test_finished_run_opens_in_a_dashboard_and_basic_auth_guards_it(
    tmp_path, processes, browser, lfp_run
):
    password = tmp_path / "password"
    password.write_text("beamtime-secret\n")
    port = free_ports(1)[0]
    processes(
        "dashboard",
        "--run-dir",
        str(lfp_run),
        "--port",
        str(port),
        "--password-file",
        str(password),
        log=tmp_path / "dashboard.log",
    )
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: http_ready(url + "login"), 60, 0.5, what="dashboard login page")
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(url)
    assert "login" in page.url  # not the app: it asks for the password first
    page.fill("input[name=password]", "wrong")
    page.fill("input[name=username]", "beamline")
    page.click("button, input[type=submit]")
    assert page.locator(".op-spectra").count() == 0
    page.goto(url + "login")
    page.fill("input[name=username]", "beamline")
    page.fill("input[name=password]", "beamtime-secret")
    page.click("button, input[type=submit]")
    page.wait_for_selector(".op-spectra", timeout=30_000)
    (n,) = open_readonly(lfp_run).execute("SELECT count(*) FROM alignment").fetchone()
    wait_for(lambda: _spectra(page) == n, 30, 0.5, what="the full history")
    assert "monitor not connected" in page.locator(".op-header").inner_text()
    # the newest spectrum's fits, each channel with its verdict as the store has it
    page.get_by_text("Spectra", exact=True).click()
    verdicts = page.locator(".op-fit-quality li")
    verdicts.first.wait_for(timeout=30_000)
    conn = open_readonly(lfp_run)
    newest = conn.execute("SELECT max(spectrum_id) FROM analysis").fetchone()[0]
    stored = dict(
        conn.execute("SELECT channel, quality FROM analysis WHERE spectrum_id = ?", (newest,))
    )
    shown = {
        verdicts.nth(i).get_attribute("data-channel"): verdicts.nth(i).get_attribute("data-quality")
        for i in range(verdicts.count())
    }
    assert shown == stored
    _shot(page, "dashboard-finished-lfp-spectra")
    page.get_by_text("Relaxation", exact=True).click()
    page.wait_for_timeout(2000)  # Bokeh draws titles into its canvas: look at the screenshot
    _shot(page, "dashboard-finished-lfp-relaxation")


@pytest.mark.slow
@pytest.mark.parametrize("preset", demo_presets())
def test_every_tab_of_every_preset_without_a_page_error(tmp_path, processes, browser, preset):
    """Each preset's live dashboard, every tab opened in turn while the run grows: not one
    uncaught page error or console error (a plot that gained its first legend or error bars
    on an update logged 'cannot find a view for ...' hundreds of times a minute)."""
    port = free_ports(1)[0]
    processes(
        "demo", "--preset", preset, "--headless", "--duration", "150", "--speed", "120",
        "--run-dir", str(tmp_path / "run"), "--dashboard-port", str(port),
        log=tmp_path / "demo.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: http_ready(url + "liveness"), 120, 0.5, what=f"dashboard at {url}")
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    watch_errors(page, errors)
    page.goto(url)
    page.wait_for_selector(".op-spectra", timeout=60_000)
    # the run builds up (first spectra, fits, a rest) before and while the tabs are opened
    wait_for(lambda: _spectra(page) >= 5, 90, 0.5, what="five spectra on the page")
    # each edge chosen for the fractions is drawn (made apart from the patch they refer to,
    # the new figures were refused by the page, which kept the old edge)
    edges = page.locator(".op-edge select")
    second = time.monotonic() + 30  # lirich-rixs scans Ni L after Mn L: a switch to test
    while edges.locator("option").count() < 2 and time.monotonic() < second:
        page.wait_for_timeout(500)
    for edge in reversed(edges.locator("option").all_inner_texts()):
        edges.select_option(label=edge)
        wait_for(
            lambda edge=edge: _fraction_titles(page) == [f"{edge} fractions"] * 2,
            15,
            0.2,
            what=f"the {edge} fractions drawn",
        )
    tour(page, per_tab_s=5.0)
    tour(page, per_tab_s=2.0)  # and back again: a tab left and reopened redraws what it missed
    _shot(page, f"every-tab-{preset}")
    assert errors == []
    # the tour ends on the Events tab: a table with rows (kind, source, time, text)
    assert page.locator(".op-events .tabulator-row").count() > 0


def _fraction_titles(page) -> list[str]:
    """The edges of the fraction plots the page draws, as 'EDGE fractions'."""
    return [t.split(",")[0] for t in drawn_titles(page) if " fractions," in t]


@pytest.mark.slow
def test_a_run_in_tiled_opens_in_a_dashboard_elsewhere(tmp_path, processes, browser, lirich_run):
    """operando dashboard --tiled URI --run ID: the page a run directory gives, read from
    what operando publish wrote into Tiled (the run store is not used: it could be on
    another machine), with every tab opened and not one page error."""
    tiled = TiledServer(tmp_path / "tiled")
    tiled.start()
    try:
        cli("publish", str(lirich_run), "--tiled", tiled.url, "--api-key", "secret", "--once")
        port = free_ports(1)[0]
        wrong = cli(
            "dashboard", "--tiled", tiled.url, "--run", "no-such-run", "--api-key", "secret",
            check=False,
        )  # fmt: skip
        assert wrong.returncode == 2 and "no run 'no-such-run'" in wrong.stderr, wrong.stderr
        assert "Traceback" not in wrong.stderr
        processes(
            "dashboard", "--tiled", tiled.url, "--run", lirich_run.name, "--api-key", "secret",
            "--port", str(port), log=tmp_path / "dashboard.log",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: http_ready(url + "liveness"), 60, 0.5, what="dashboard")
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        watch_errors(page, errors)
        page.goto(url)
        page.wait_for_selector(".op-spectra", timeout=60_000)
        conn = open_readonly(lirich_run)
        (n,) = conn.execute("SELECT count(*) FROM alignment").fetchone()
        wait_for(lambda: _spectra(page) == n, 60, 0.5, what="every spectrum from Tiled")
        header = page.locator(".op-header").inner_text()
        assert "read from Tiled" in header and lirich_run.name in header, header
        # the newest fitted spectrum's verdicts, each channel as the run store has it
        page.get_by_text("Spectra", exact=True).click()
        verdicts = page.locator(".op-fit-quality li")
        verdicts.first.wait_for(timeout=30_000)
        newest = conn.execute("SELECT max(spectrum_id) FROM analysis").fetchone()[0]
        stored = dict(
            conn.execute("SELECT channel, quality FROM analysis WHERE spectrum_id = ?", (newest,))
        )
        wait_for(
            lambda: page.locator("#op-latest").get_attribute("data-spectrum-id") is not None,
            30, 0.5, what="the newest spectrum",
        )  # fmt: skip
        shown = {
            verdicts.nth(i).get_attribute("data-channel"): verdicts.nth(i).get_attribute(
                "data-quality"
            )
            for i in range(verdicts.count())
        }
        assert shown == stored
        tour(page, per_tab_s=2.0)
        _shot(page, "dashboard-from-tiled-lirich")
        assert errors == []
        assert page.locator(".op-events .tabulator-row").count() > 0
    finally:
        tiled.kill()
