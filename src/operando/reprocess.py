"""Rebuild a run's derived tables from its raw messages (``operando reprocess``).

The same ``Ingest`` the live monitor uses runs over the raw table in the order received, so the
derived tables are what live ingest would have produced with every message on time (spectra
that timed out live may now be fully aligned: nothing waits on a clock here). Run-time facts
the messages do not carry are read back from the run: the clock offsets the monitor measured.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from operando.config import ExperimentConfig
from operando.ingest import Ingest
from operando.store.reader import Run, iter_raw, load_run_config
from operando.store.writer import RunStore


def reprocess(
    run_dir: str | Path, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cfg: ExperimentConfig = load_run_config(run_dir)
    store = RunStore(run_dir)
    try:
        with Run(run_dir) as run:
            total, offsets = run.raw_count() + len(store.unindexed), run.clock_offsets()
        store.clear_derived()
        ingest = Ingest(
            store,
            cfg.sources,
            cfg.alignment,
            analysis=cfg.analysis,
            base_dir=run_dir,
            experiment=cfg.name,
            electrochemistry=cfg.electrochemistry,
        )
        for link, offset in offsets.items():  # measured live (ping): the same source times
            ingest.set_clock_offset(link, offset)
        for n, rec in enumerate(iter_raw(run_dir), 1):
            ingest.process_record(rec)
            if n % 500 == 0:  # as the monitor does after each received batch
                ingest.align_due()
            if progress is not None and (n % 1000 == 0 or n == total):
                progress(n, total)
        ingest.finish()
        store.flush()
        return ingest.status()
    finally:
        store.close()
