"""``operando export RUN --format tiled --uri URI``: the run written into a Tiled server.

Optional (``pip install 'operando[tiled]'``). The same layout a live run gets from ``operando
publish --tiled`` (``operando.tiledbus``): a bluesky run named by the run's uid, its documents
(``export.compose``) written once over the finished run. So a run published live and a run
exported afterwards read the same, and exporting a run already there writes nothing twice
(each stream's ``seq_num`` is read back). The normalised ``mu`` stacks and the cycle summaries
are in the NeXus export; Tiled holds what the documents carry (decision 0015).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from operando.export import Progress
from operando.export.compose import Document, run_documents
from operando.store.reader import Run

if TYPE_CHECKING:
    from operando.tiledbus import TiledRun

BATCH = 200  # documents a write


class TiledExportError(RuntimeError):
    pass


def export_tiled(
    run_dir: str | Path, uri: str, *, api_key: str | None = None, progress: Progress | None = None
) -> str:
    """Write the run; return where it now lives on the server."""
    import httpx

    from operando.publish import BusUnavailable, PublishError
    from operando.tiledbus import TiledRun

    with Run(run_dir) as run:
        uid, total = run.uid, run.count_spectra()
        bus = TiledRun(uri, uid, api_key=api_key)
        try:
            asyncio.run(_write(bus, run_documents(run), total, progress))
        except PublishError as e:  # it names the server
            raise TiledExportError(str(e)) from None
        except BusUnavailable as e:
            raise TiledExportError(f"{uri}: {e}") from None
        except (httpx.HTTPError, OSError) as e:
            raise TiledExportError(f"{uri}: cannot reach the Tiled server ({e})") from None
    return f"{uri.rstrip('/')}/{uid}"


async def _write(
    bus: TiledRun, docs: Iterator[Document], total: int, progress: Progress | None
) -> None:
    await bus.connect()
    try:
        batch: list[Document] = []
        spectra = 0
        for doc in docs:
            batch.append(doc)
            if doc[0] == "event" and "spectrum_id" in doc[1]["data"]:
                spectra += 1
            if len(batch) == BATCH:
                await bus.send(batch)
                batch = []
                if progress is not None:
                    progress(spectra, total)
        if batch:
            await bus.send(batch)
    finally:
        await bus.close()
