"""``operando publish RUN --tiled URI``: the run live in a Tiled server, as a bluesky run.

The same documents as on NATS (``operando.export.compose``), written the way bluesky's own
``TiledWriter`` lays a run out, so Tiled's and databroker's clients read it as any bluesky
run: a container keyed by the run's uid (spec ``BlueskyRun``, the start and, at the end, the
stop in its metadata); in it a container per stream (spec ``BlueskyEventStream``, the
descriptor in its metadata) holding an appendable table ``internal``: a row an event, with
``seq_num``, ``time``, every scalar data key and ``ts_<key>``; and an array per array key
(a spectrum's energy and channels, a RIXS row's counts), event ``seq_num`` at row
``seq_num - 1`` (bluesky's TiledWriter puts small arrays in the table; Tiled 0.2.20's tabular
storage gave them back as text, so they are arrays here). Read a stream's table sorted by
``seq_num``: with PostgreSQL as Tiled's tabular storage, rows come in no set order.

Written at least once, never twice: before a write that may have landed (after an error, or
on starting again from a saved cursor) the stream's ``seq_num`` column is read back, and rows
already there are not appended again. A server that is away is waited for; the publisher's
cursor says where to go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from operando.export.compose import Document
from operando.publish import BusUnavailable, PublishError

TILED_MISSING = "publishing to Tiled needs the tiled client: pip install 'operando[tiled]'"
_ARROW = {"number": "float64", "integer": "int64", "boolean": "bool_", "string": "string"}


def server_config(catalog: str, storage: list[str], cache: str | None) -> dict[str, Any]:
    """A Tiled server's configuration (``tiled serve config``; JSON is YAML) for these runs:
    a writable ``catalog`` (database URI), ``storage`` (a directory for arrays and a database
    URI for tables: SQLite or PostgreSQL, not DuckDB, whose one shared connection lost a table
    when a read met its creation in tiled 0.2.20) and a streaming ``cache`` (``memory`` or a
    Redis URI; None: none, and clients poll). From a file: tiled 0.2.20's ``serve catalog
    --cache`` fails to start."""
    config: dict[str, Any] = {
        "catalog": {"uri": catalog, "writable_storage": storage, "init_if_not_exists": True}
    }
    return config | ({"streaming_cache": {"uri": cache}} if cache else {})


class TiledRun:
    """A ``Bus`` (``operando.publish``) that writes one run into a Tiled server."""

    name = "tiled"

    def __init__(self, uri: str, run_uid: str, *, api_key: str | None = None) -> None:
        self.uri, self.run_uid = uri, run_uid
        self.api_key = api_key or os.environ.get("TILED_API_KEY")
        self.client: Any = None
        self.root: Any = None
        self.streams: dict[str, Any] = {}  # descriptor uid -> stream container
        self.tables: dict[str, Any] = {}  # descriptor uid -> its internal table
        self.keys: dict[str, dict[str, Any]] = {}  # descriptor uid -> data keys
        self.written: dict[str, set[int]] = {}  # descriptor uid -> seq_nums in Tiled
        self.arrays: dict[str, dict[str, Any]] = {}  # descriptor uid -> key -> its array
        # streams a failed write may have reached unseen: read back before writing to them
        self.stale: set[str] = set()

    @property
    def target(self) -> dict[str, str]:
        return {"url": self.uri, "stream": self.run_uid}

    async def connect(self) -> None:
        await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        try:
            from tiled.client import from_uri
            from tiled.client.utils import ClientError
        except ImportError:
            raise PublishError(TILED_MISSING) from None
        try:
            self.client = from_uri(self.uri, api_key=self.api_key)
        except ClientError as e:  # refused (a key, a permission): waiting will not help
            if e.response.status_code in (401, 403):
                raise PublishError(f"{self.uri}: {e} (--api-key or $TILED_API_KEY)") from None
            raise

    async def send(self, batch: list[Document]) -> int:
        import httpx

        try:
            return await asyncio.to_thread(self._write, batch)
        except (httpx.HTTPError, OSError) as e:
            self.stale = set(self.streams)
            raise BusUnavailable(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.context.close()

    # -- the writes ---------------------------------------------------------------------------
    def _write(self, batch: list[Document]) -> int:
        """Each document in order; the events of a stream that come one after another in one
        write (a page a second at 240x is a write a second, not 25)."""
        had = 0
        i = 0
        while i < len(batch):
            name, doc = batch[i]
            if name in ("event", "event_page"):
                j = i
                while j < len(batch) and batch[j][0] in ("event", "event_page"):
                    if batch[j][1]["descriptor"] != doc["descriptor"]:
                        break
                    j += 1
                had += self._events(doc["descriptor"], [d for _, d in batch[i:j]])
                i = j
                continue
            if name == "start":
                had += self._start(doc)
            elif name == "descriptor":
                had += self._descriptor(doc)
            elif name == "stop":
                root = self._root()
                had += "stop" in root.metadata
                root.update_metadata(metadata={"stop": doc}, drop_revision=True)
            i += 1
        return had

    def _start(self, doc: dict[str, Any]) -> bool:
        from tiled.structures.core import Spec

        uid = doc["uid"]
        if uid in self.client:
            self.root = self.client[uid]
            return True
        self.root = self.client.create_container(
            key=uid, metadata={"start": doc}, specs=[Spec("BlueskyRun", version="3.0")]
        )
        return False

    def _descriptor(self, doc: dict[str, Any]) -> bool:
        from tiled.structures.core import Spec

        uid, stream = doc["uid"], doc["name"]
        root = self._root()
        if stream in root:  # written before this cursor was saved
            self._adopt(uid, root[stream])
            return True
        meta = {k: v for k, v in doc.items() if k not in ("name", "object_keys", "run_start")}
        node = root.create_container(
            key=stream,
            metadata=meta,
            specs=[Spec("BlueskyEventStream", version="3.0"), Spec("composite")],
        )
        self._adopt(uid, node)
        return False

    def _root(self) -> Any:
        if self.root is None:  # started again from a cursor: the run is there already
            self.root = self.client[self.run_uid]
        return self.root

    def _adopt(self, uid: str, node: Any) -> None:
        """A stream container, and which events its table holds already."""
        node = getattr(node, "base", node)  # a composite stream: its plain container
        self.streams[uid] = node
        self.keys[uid] = node.metadata["data_keys"]
        self.written[uid] = set()
        self.tables.pop(uid, None)
        contents = set(node)
        self.arrays[uid] = {k: node[k] for k in contents if k != "internal"}
        if "internal" in contents:
            self.tables[uid] = node["internal"]
            self.written[uid] = {int(n) for n in self.tables[uid].read(["seq_num"])["seq_num"]}

    def _events(self, uid: str, docs: list[dict[str, Any]]) -> int:
        """Events and event pages of one stream: how many were there already."""
        import event_model
        import numpy as np
        import pyarrow as pa

        events = [
            e
            for doc in docs
            for e in (
                event_model.unpack_event_page(doc)  # type: ignore[arg-type]
                if isinstance(doc["seq_num"], list)
                else [doc]
            )
        ]
        if uid not in self.streams:  # started again from a cursor: find its stream
            self._stream_of(uid)
        elif uid in self.stale:  # a failed write may have landed: what is there now
            self._adopt(uid, self.streams[uid])
        self.stale.discard(uid)
        done = self.written[uid]
        new = [e for e in events if e["seq_num"] not in done]
        if not new:
            return len(docs)
        node, keys = self.streams[uid], self.keys[uid]
        # the arrays first, each event at row seq_num - 1 (a spectrum that waited for a refill
        # fills its row later): a write cut between arrays and table is written again whole,
        # and a reader finds an event's arrays by its seq_num, whatever order the table gives
        # its rows in (PostgreSQL's has none)
        arrays = self.arrays.setdefault(uid, {})
        for k, key in keys.items():
            if key["dtype"] != "array":
                continue
            for first, run in _consecutive(new):
                values = np.array([e["data"][k] for e in run], dtype=float)
                if k in arrays:
                    offset = (first - 1,) + (0,) * (values.ndim - 1)
                    arrays[k].patch(values, offset=offset, extend=True)
                else:  # rows before the first event out are NaN until theirs come
                    head = np.full((first - 1, *values.shape[1:]), np.nan)
                    arrays[k] = node.write_array(np.concatenate([head, values]), key=k)
        rows = [self._row(e, keys) for e in new]
        table = pa.Table.from_pylist(rows, schema=self._schema(uid))
        if uid not in self.tables:
            self.tables[uid] = node.create_appendable_table(schema=table.schema, key="internal")
        self.tables[uid].append_partition(0, table)
        done.update(r["seq_num"] for r in rows)
        return len(docs) if len(new) < len(events) else 0

    def _stream_of(self, uid: str) -> None:
        root = self._root()
        for key in root:
            node = root[key]
            if node.metadata.get("uid") == uid:
                self._adopt(uid, node)
                return
        raise PublishError(f"{self.uri}: the run {self.run_uid} has no stream of descriptor {uid}")

    def _row(self, event: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
        """The event's table row: its scalars (its arrays are arrays of their own)."""
        row = {"seq_num": event["seq_num"], "time": event["time"]}
        row.update({k: v for k, v in event["data"].items() if keys[k]["dtype"] != "array"})
        row.update({f"ts_{k}": v for k, v in event["timestamps"].items()})
        return row

    def _schema(self, uid: str) -> Any:
        """From the descriptor's data keys, not the first rows (a fit missing in them would
        make its column a string column, and a later number would not fit)."""
        import pyarrow as pa

        fields = [pa.field("seq_num", pa.int64()), pa.field("time", pa.float64())]
        keys = self.keys[uid]
        fields += [
            pa.field(k, getattr(pa, _ARROW[key["dtype"]])())
            for k, key in keys.items()
            if key["dtype"] != "array"
        ]
        fields += [pa.field(f"ts_{k}", pa.float64()) for k in keys]
        return pa.schema(fields)


def _consecutive(events: list[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Events in runs of consecutive seq_num: (the first seq_num, the run)."""
    runs: list[tuple[int, list[dict[str, Any]]]] = []
    for e in sorted(events, key=lambda e: e["seq_num"]):
        if runs and e["seq_num"] == runs[-1][0] + len(runs[-1][1]):
            runs[-1][1].append(e)
        else:
            runs.append((e["seq_num"], [e]))
    return runs
