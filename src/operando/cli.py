"""The operando command line: record, align, analyse and show an operando battery experiment
at a soft X-ray beamline, and look at recorded runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from operando.dashboards.live import DashboardOptions

from operando.argtypes import fraction, non_negative, positive
from operando.config import ConfigError
from operando.scanfile import ScanFileError
from operando.store import StoreError
from operando.transport import CommandError, EndpointInUse


def _monitor(a: argparse.Namespace) -> int:
    from operando.config import load_config
    from operando.monitor import resolve_run_dir, run_monitor

    cfg = load_config(a.config)

    def recording(run_dir: Path) -> None:
        print(f"operando monitor: recording to {run_dir}", flush=True)

    asyncio.run(run_monitor(cfg, resolve_run_dir(cfg, a.run_dir), a.duration, recording))
    return 0


def _driver(a: argparse.Namespace) -> int:
    from operando.drivers.base import DriverOptions
    from operando.drivers.registry import load_driver

    module = load_driver(a.driver_name)
    driver = module.from_args(a, DriverOptions.from_args(a))
    return asyncio.run(driver.run())


def _inspect(a: argparse.Namespace) -> int:
    from operando.store.summary import format_summary, summarize

    s = summarize(a.run_dir)
    print(json.dumps(s, indent=None if a.json else 2) if a.json else format_summary(s))
    return 0


def _reprocess(a: argparse.Namespace) -> int:
    from operando.reprocess import reprocess

    bar, progress = _progress_bar("reprocessing raw messages")
    with bar:
        status = reprocess(a.run_dir, progress)
    sp = status["spectra"]
    print(
        f"reprocessed {a.run_dir}: {status['potentiostat_rows']} potentiostat rows, "
        f"{sp['total']} spectra ({sp['aligned']} aligned, {sp['partial']} partial)"
    )
    return 0


def _progress_bar(what: str):  # type: ignore[no-untyped-def]
    """A rich progress bar on stderr for long work, and the callback that moves it."""
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task(what, total=None)
    return bar, lambda n, total: bar.update(task, completed=n, total=total)


def _export(a: argparse.Namespace) -> int:
    from operando.store.files import STORE_FILE, is_run_dir, nexus_path

    run_dir = Path(a.run_dir)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no run store ({STORE_FILE}): is this a run directory?")
    bar, progress = _progress_bar(f"exporting {run_dir.name} ({a.format})")
    if a.format == "tiled":
        from operando.export.tiled import TiledExportError, export_tiled

        if not a.uri:
            raise KeyError("--format tiled needs --uri (the Tiled server, e.g. http://host:8000)")
        try:
            with bar:
                where = export_tiled(run_dir, a.uri, api_key=a.api_key, progress=progress)
        except TiledExportError as e:
            print(f"operando: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {run_dir.name} to {where}")
        return 0
    out = Path(a.out) if a.out else None
    if a.format == "nexus":
        from operando.export.nexus import export_nexus

        out = out or nexus_path(run_dir)
        with bar:
            export_nexus(run_dir, out, progress)
        print(f"wrote {out}")
        return 0
    from operando.export.documents import write_documents

    suffix = ".jsonl" if a.serializer == "jsonl" else ".msgpack"
    out = out or run_dir / f"{run_dir.name}.documents{suffix}"
    with bar:
        path, counts = write_documents(run_dir, out, a.serializer, progress)
    print(f"wrote {path}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


def _replay(a: argparse.Namespace) -> int:
    from operando.config import load_config
    from operando.replay import Replay

    replay = Replay(
        Path(a.run_dir),
        load_config(a.config) if a.config else None,
        speed=a.speed,
        wait_subscriber_s=a.wait_subscriber,
    )
    bar, progress = _progress_bar(f"replaying {Path(a.run_dir).name} at {a.speed:g}x")
    with bar:
        sent = asyncio.run(replay.run(progress))
    print("replayed " + ", ".join(f"{link}: {n} messages" for link, n in sent.items()))
    return 0


def _instrument(a: argparse.Namespace) -> int:
    from operando.drivers.sim.cell import PRESETS
    from operando.drivers.sim.palmsens_sim import run_simulator

    _one_of("--cell", a.cell, PRESETS)
    host, _, port = a.listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {a.listen!r}: expected HOST:PORT, e.g. 127.0.0.1:4001")
    asyncio.run(run_simulator(host or "127.0.0.1", int(port), a.cell, a.speed, a.soc))
    return 0


def _one_of(option: str, value: str, known: Iterable[str]) -> None:
    """Refuse a name the program does not know, listing the ones it does."""
    if value not in known:
        raise ConfigError(f"{option} {value!r}: unknown; choose one of {', '.join(sorted(known))}")


def _monitor_endpoint(a: argparse.Namespace) -> str:
    """--monitor ENDPOINT, or the one the monitor wrote into --run-dir (demo: free ports)."""
    if a.run_dir:
        from operando.store.files import MONITOR_FILE, read_monitor_file

        info = read_monitor_file(Path(a.run_dir))
        if info is None:
            raise FileNotFoundError(f"{Path(a.run_dir) / MONITOR_FILE}: no monitor has run here")
        return str(info["command_endpoint"])
    return str(a.monitor)


def _status(a: argparse.Namespace) -> int:
    from operando.monitor import query_status

    endpoint = _monitor_endpoint(a)
    try:
        status = asyncio.run(query_status(endpoint, a.timeout))
    except CommandError:
        if not a.run_dir:
            raise
        print(f"operando status: {_no_monitor(Path(a.run_dir), endpoint)}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(status, indent=2))
    else:
        from operando.statusview import format_status

        print(format_status(status))
    return 0


def _no_monitor(run_dir: Path, endpoint: str) -> str:
    """What to say of a run whose monitor does not answer: when it last recorded."""
    from operando.clock import utc_text
    from operando.store import open_run

    try:
        with open_run(run_dir) as run:
            last = run.summary()["last_received"]
    except StoreError:
        last = None
    when = (
        f"its newest message arrived at {utc_text(last)}"
        if last is not None
        else "it holds no message"
    )
    return (
        f"no monitor is running for {run_dir} (nothing answers on {endpoint}); {when}; "
        f"'operando inspect {run_dir}' describes what it holds"
    )


def _demo(a: argparse.Namespace) -> int:
    from operando.config import load_config
    from operando.demo import demo_config, run_demo
    from operando.monitor import resolve_run_dir

    cfg = load_config(a.config) if a.config else demo_config(a.preset)
    run_dir = resolve_run_dir(cfg, a.run_dir)
    return asyncio.run(
        run_demo(
            cfg,
            run_dir,
            speed=a.speed,
            duration=a.duration,
            headless=a.headless,
            with_dashboard=not a.no_dashboard,
            dashboard_port=a.dashboard_port,
        )
    )


def _dashboard(a: argparse.Namespace) -> int:
    from operando.dashboards.live import DashboardOptions
    from operando.store import open_readonly
    from operando.store.files import read_monitor_file, store_path

    if a.tiled is not None or a.run is not None:
        if a.tiled is None or a.run is None or a.run_dir is not None:
            print(
                "operando dashboard: error: a run in Tiled needs --tiled URI and --run ID "
                "(and no --run-dir)",
                file=sys.stderr,
            )
            return 2
        opts = DashboardOptions(
            run_dir=None,
            tiled=a.tiled,
            run=a.run,
            api_key=a.api_key or os.environ.get("TILED_API_KEY"),
            address=a.address,
            port=a.port,
            password_file=Path(a.password_file) if a.password_file else None,
        )
        return _serve_dashboard(opts, a)
    if a.run_dir is None:
        print("operando dashboard: error: give --run-dir, or --tiled and --run", file=sys.stderr)
        return 2
    run_dir = Path(a.run_dir)
    if not run_dir.is_dir():
        print(f"operando dashboard: error: {run_dir}: no such run directory", file=sys.stderr)
        return 2
    if store_path(run_dir).exists():
        # a run store that cannot be read is refused now, not warned about every second; a
        # directory whose store the monitor has not created yet is served and waited for
        open_readonly(run_dir).close()
    state, command = a.monitor, a.command
    info = read_monitor_file(run_dir)
    if info is not None and (state is None or (a.controls and command is None)):
        state = state or info["state_endpoint"]
        command = command or (info["command_endpoint"] if a.controls else None)
    opts = DashboardOptions(
        run_dir=run_dir,
        monitor=state,
        command=command,
        address=a.address,
        port=a.port,
        password_file=Path(a.password_file) if a.password_file else None,
    )
    return _serve_dashboard(opts, a)


def _serve_dashboard(opts: DashboardOptions, a: argparse.Namespace) -> int:
    from operando.dashboards.live import DashboardError, serve

    if a.render_hz is not None:  # the default is DashboardOptions' (4 per second)
        opts.render_hz = a.render_hz
    try:
        return serve(opts)
    except DashboardError as e:
        print(f"operando: error: {e}", file=sys.stderr)
        return 2


def _fit(a: argparse.Namespace) -> int:
    from operando.analysis.valence import FLUORESCENCE
    from operando.fitcli import FitInputError, fit_files

    channels = a.channel or None
    sa: list[str]
    if a.self_absorption is None:  # default: the fluorescence channels, as the monitor does
        sa = list(FLUORESCENCE)
    elif a.self_absorption == "all":
        sa = list(channels or ()) or ["*"]
    else:
        sa = [c for c in a.self_absorption.split(",") if c and c != "none"]
    try:
        return fit_files(
            a.files,
            a.references,
            channels=channels,
            fit_range=tuple(a.fit_range) if a.fit_range else None,
            self_absorption=sa,
            energy_col=a.energy_col,
            i0_col=a.i0_col,
            as_json=a.json,
        )
    except FitInputError as e:
        print(f"operando fit: error: {e}", file=sys.stderr)
        return 2


def _publish(a: argparse.Namespace) -> int:
    from operando.publish import Bus, JetStream, Publisher, PublishError
    from operando.store.files import STORE_FILE, is_run_dir
    from operando.store.reader import Run

    run_dir = Path(a.run_dir)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no run store ({STORE_FILE}): is this a run directory?")
    with Run(run_dir) as run:
        run_uid = run.uid
    if a.tiled:
        from operando.tiledbus import TiledRun

        bus: Bus = TiledRun(a.tiled, run_uid, api_key=a.api_key)
        where = f"{a.tiled} ({run_uid})"
    else:
        bus = JetStream(a.nats, run_uid, prefix=a.prefix, stream=a.stream)
        where = f"{a.nats} ({a.stream}: {a.prefix}.*)"
    publisher = Publisher(run_dir, bus, end_grace_s=a.end_grace)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # at -v: not a line a request

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop between documents, cursor saved
            loop.add_signal_handler(sig, publisher.stopping.set)
        try:
            report = await publisher.run(follow=not a.once)
        except PublishError as e:
            print(f"operando publish: error: {e}", file=sys.stderr)
            return 2
        print(f"{run_dir.name} -> {where}: {report.line()}")
        return 0

    return asyncio.run(main())


def _references(a: argparse.Namespace) -> int:
    from operando.drivers.sim.spectra import EDGES, export_references

    if a.edge:
        _one_of("--edge", a.edge, EDGES)
    edges = [a.edge] if a.edge else list(EDGES)
    out = Path(a.out)
    for edge in edges:
        path = out if a.edge and out.suffix else out / f"{edge}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        print(export_references(edge, path))
    return 0


def _keys(a: argparse.Namespace) -> int:
    import zmq.auth

    folder = Path(a.dir)
    pair = (folder / f"{a.name}.key", folder / f"{a.name}.key_secret")
    existing = [p for p in pair if p.exists()]
    if existing and not a.force:
        print(
            f"operando keys: error: {existing[0]} exists: a new key pair would lock out every "
            "side that trusts the old one (--force to replace it)",
            file=sys.stderr,
        )
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(a.dir, a.name)
    Path(secret).chmod(0o600)  # the secret: readable by its owner alone
    print(f"public key (give to the other side): {public}\nsecret key (keep): {secret}")
    return 0


def _trigger(a: argparse.Namespace) -> int:
    from operando.monitor import command_monitor

    args = {
        k: v for k, v in (("edge", a.edge), ("spot", a.spot), ("alarm", a.alarm)) if v is not None
    }
    action = str(a.action)
    result = asyncio.run(command_monitor(_monitor_endpoint(a), action, args, a.timeout))
    print(json.dumps(result, indent=2))
    return 0


def _add_driver_parsers(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    requested: str | None,
) -> None:
    """``operando driver NAME``: only the requested driver's module is imported (its options
    need it); the others are listed by name, so every command starts without loading them all
    (a driver's imports cost up to 1.5 s here: scipy, h5py, bluesky's msgpack)."""
    from operando.drivers.base import DriverOptions
    from operando.drivers.registry import DRIVERS, load_driver

    p = sub.add_parser("driver", help="run one instrument driver as its own process")
    names = p.add_subparsers(dest="driver_name", required=True, metavar="NAME")
    for name, (_module, text) in DRIVERS.items():
        dp = names.add_parser(name, help=text, description=text)
        if name == requested:
            module = load_driver(name)
            module.add_arguments(dp)
            DriverOptions.add_arguments(dp, module.DEFAULT_NAME)
    p.set_defaults(func=_driver)


class _Help(argparse.HelpFormatter):
    """Each option's default in its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text.lower()
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _Help
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                _with_defaults(child)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="operando", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("monitor", help="record, align and analyse a live experiment")
    p.add_argument("--config", required=True, help="experiment TOML (see configs/)")
    p.add_argument("--run-dir", help="run directory (default: from [run] in the config)")
    p.add_argument("--duration", type=positive, default=None, help="stop after S wall seconds")
    p.set_defaults(func=_monitor)

    from operando.config import demo_presets

    p = sub.add_parser("demo", help="simulated operando experiment: instruments + monitor")
    p.add_argument(
        "--preset",
        default="peo-nmc",
        choices=demo_presets(),
        help="experiment preset from configs/ (default: peo-nmc)",
    )
    p.add_argument("--config", help="an experiment TOML instead of a preset")
    p.add_argument(
        "--duration",
        type=positive,
        default=None,
        help="stop after S wall seconds (default: run until Ctrl-C)",
    )
    p.add_argument(
        "--speed",
        type=positive,
        default=60.0,
        help="experiment seconds per wall second (default 60)",
    )
    p.add_argument("--run-dir", help="run directory (default: runs/<preset>-<time>)")
    p.add_argument("--headless", action="store_true", help="no live terminal display")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.add_argument("--dashboard-port", type=int, help="dashboard port (default: a free one)")
    p.set_defaults(func=_demo)

    args = list(sys.argv[1:] if argv is None else argv)
    requested = args[args.index("driver") + 1] if "driver" in args[:-1] else None
    _add_driver_parsers(sub, requested)

    p = sub.add_parser("instrument", help="a simulated instrument that speaks a vendor protocol")
    p.add_argument("kind", choices=["palmsens-sim"])
    p.add_argument("--listen", default="127.0.0.1:4001", help="HOST:PORT to listen on")
    p.add_argument("--cell", default="peo-nmc", help="cell model preset (drivers/sim/cell.py)")
    p.add_argument("--speed", type=positive, default=1.0, help="cell seconds per wall second")
    p.add_argument("--soc", type=fraction, default=0.1, help="state of charge at start")
    p.set_defaults(func=_instrument)

    p = sub.add_parser("dashboard", help="live Panel dashboard of a run (history + live)")
    p.add_argument("--run-dir", help="the run directory the monitor records to")
    p.add_argument(
        "--tiled", metavar="URI", help="or a run in this Tiled server (operando publish --tiled)"
    )
    p.add_argument("--run", metavar="ID", help="the run in Tiled: its uid or its directory's name")
    p.add_argument("--api-key", help="Tiled's API key (default: $TILED_API_KEY)")
    p.add_argument(
        "--monitor", help="the monitor's state endpoint (default: from RUN_DIR/monitor.json)"
    )
    p.add_argument("--command", help="the monitor's command endpoint: enables the controls")
    p.add_argument(
        "--controls", action="store_true", help="controls, via the command endpoint in monitor.json"
    )
    p.add_argument("--address", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument(
        "--render-hz",
        type=positive,
        help="how often a page looks for news, per second (default 4; a slow redraw waits longer)",
    )
    p.add_argument("--password-file", help="Panel basic auth (required off loopback)")
    p.set_defaults(func=_dashboard)

    p = sub.add_parser("inspect", help="summarise a run directory")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("reprocess", help="rebuild derived tables from the raw messages")
    p.add_argument("run_dir")
    p.set_defaults(func=_reprocess)

    p = sub.add_parser("export", help="write a run as NeXus/HDF5, event-model documents or Tiled")
    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=["nexus", "documents", "tiled"])
    p.add_argument("--out", help="output file (default: in the run directory)")
    p.add_argument(
        "--serializer",
        choices=["jsonl", "msgpack"],
        default="jsonl",
        help="documents: JSON lines or a MessagePack stream",
    )
    p.add_argument("--uri", help="tiled: the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", help="tiled: the server's API key (default: $TILED_API_KEY)")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "publish", help="a run's documents on NATS JetStream, live, as bluesky-nats lays them out"
    )
    p.add_argument("run_dir")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--nats", help="a NATS server, e.g. nats://127.0.0.1:4222 (JetStream)")
    to.add_argument("--tiled", help="a Tiled server, e.g. http://127.0.0.1:8000 (a bluesky run)")
    p.add_argument("--stream", default="bluesky", help="nats: the JetStream stream")
    p.add_argument(
        "--prefix", default="events.volatile", help="nats: subjects PREFIX.<document name>"
    )
    p.add_argument("--api-key", help="tiled: the server's API key (default: $TILED_API_KEY)")
    p.add_argument(
        "--once",
        action="store_true",
        help="publish what is final now and return (default: follow the run to its end)",
    )
    p.add_argument(
        "--end-grace",
        type=non_negative,
        default=30.0,
        help="a run left without a clean end has ended after this many seconds of silence",
    )
    p.set_defaults(func=_publish)

    p = sub.add_parser("replay", help="publish a recorded run again (for a monitor, dashboard)")
    p.add_argument("run_dir")
    p.add_argument(
        "--speed", type=non_negative, default=1.0, help="times real time (default 1; 0: at once)"
    )
    p.add_argument(
        "--config", help="experiment file whose source endpoints to publish on (default: the run's)"
    )
    p.add_argument(
        "--wait-subscriber",
        type=non_negative,
        default=10.0,
        help="seconds to wait for a recorder",
    )
    p.set_defaults(func=_replay)

    p = sub.add_parser("fit", help="valence fractions of scan files (the live analysis)")
    p.add_argument("files", nargs="+", help="column text files: energy, signal[, I0]")
    p.add_argument("--references", required=True, help="CSV or NPZ: energy + one column each")
    p.add_argument(
        "--channel",
        action="append",
        help="signal column to fit, name or number; repeat for more (default: every "
        "TEY/TFY/PFY/FY/iPFY column in the file)",
    )
    p.add_argument(
        "--fit-range",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="eV (default: all that the scan and the references both cover)",
    )
    p.add_argument(
        "--self-absorption",
        metavar="CHANNELS",
        help="channels fitted with thick-sample saturation, comma-separated, 'all' or 'none' "
        "(default: the fluorescence channels TFY,PFY,FY,iPFY; references must be "
        "edge-step normalised)",
    )
    p.add_argument("--energy-col", help="energy column name or number (default: first)")
    p.add_argument("--i0-col", help="I0 column name or number (default: one named I0)")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=_fit)

    p = sub.add_parser("references", help="export the simulator's model reference spectra")
    p.add_argument("action", choices=["export"])
    p.add_argument("--edge", help="one edge (Mn-L, Fe-L, Ni-L); default: all")
    p.add_argument("--out", default="references", help="file (with --edge) or directory")
    p.set_defaults(func=_references)

    p = sub.add_parser("keys", help="CURVE key pairs for the command sockets")
    p.add_argument("action", choices=["generate"])
    p.add_argument("dir", help="folder for NAME.key (public) and NAME.key_secret")
    p.add_argument("--name", default="operando")
    p.add_argument("--force", action="store_true", help="replace an existing pair of this name")
    p.set_defaults(func=_keys)

    p = sub.add_parser("trigger", help="manual actions on a running experiment (audited)")
    p.add_argument(
        "action",
        choices=[
            "acquire",
            "rixs_map",
            "hold",
            "resume",
            "pause",
            "move",
            "pause_scans",
            "resume_scans",
            "acknowledge",
        ],
        help="hold/resume/pause: the cell; pause_scans/resume_scans: the spectrometer's scans",
    )
    p.add_argument("--edge", help="edge to acquire, e.g. Mn-L")
    p.add_argument("--spot", help="spot id (acquire, move)")
    p.add_argument("--alarm", type=int, help="alarm id (acknowledge)")
    p.add_argument("--monitor", default="tcp://127.0.0.1:5601", help="monitor command endpoint")
    p.add_argument("--run-dir", help="find the monitor of this run (its monitor.json)")
    p.add_argument("--timeout", type=positive, default=10.0, help="seconds to wait for the ack")
    p.set_defaults(func=_trigger)

    p = sub.add_parser("status", help="ask a running monitor for its status")
    p.add_argument("--monitor", default="tcp://127.0.0.1:5601", help="monitor command endpoint")
    p.add_argument("--run-dir", help="find the monitor of this run (its monitor.json)")
    p.add_argument("--timeout", type=positive, default=2.0, help="seconds to wait for its answer")
    p.add_argument("--json", action="store_true", help="the monitor's answer as JSON")
    p.set_defaults(func=_status)

    _with_defaults(ap)
    return ap


def _addr_in(message: str) -> str | None:
    """The endpoint pyzmq names in a bind or connect error ("... (addr='x')")."""
    _, sep, tail = message.partition("(addr='")
    return tail.split("'", 1)[0] if sep else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser(argv)
    a = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return int(a.func(a) or 0)
    except (
        ConfigError,
        ScanFileError,
        StoreError,
        KeyError,
        FileNotFoundError,
        CommandError,
        EndpointInUse,
    ) as e:
        print(f"operando: error: {e}", file=sys.stderr)
        return 2
    except zmq.ZMQError as e:
        addr = getattr(e, "addr", None) or _addr_in(str(e))
        if addr is None:  # not an endpoint the user gave: a fault, with its traceback
            raise
        print(
            f"operando: error: endpoint {addr!r}: {str(e).split(' (addr=')[0]} "
            f"(an endpoint looks like tcp://127.0.0.1:5555 or ipc:///tmp/name)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head: the reader has gone, not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
