"""Rebuild a run's derived tables from its raw messages (``operando reprocess``).

The same ``Ingest`` the live monitor uses runs over the raw table in the order received, so the
derived tables are what live ingest would have produced with every message on time (spectra
that timed out live may now be fully aligned: nothing waits on a clock here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from operando.config import ExperimentConfig
from operando.ingest import Ingest
from operando.run import load_run_config
from operando.store import RunStore, connect, iter_raw


def reprocess(
    run_dir: str | Path, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cfg: ExperimentConfig = load_run_config(run_dir)
    store = RunStore(run_dir)
    try:
        store.clear_derived()
        reader = connect(store.path, readonly=True)
        (total,) = reader.execute("SELECT count(*) FROM raw").fetchone()
        ingest = Ingest(store, cfg.sources, cfg.alignment)
        for n, (rid, recv_ns, link, frames, _refill) in enumerate(iter_raw(reader), 1):
            ingest.process(rid, recv_ns, link, frames)
            if progress is not None and (n % 1000 == 0 or n == total):
                progress(n, total)
        ingest.finish()
        reader.close()
        store.flush()
        return ingest.status()
    finally:
        store.close()
