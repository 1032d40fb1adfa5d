"""The live analysis beside the monitor's event loop, not on it.

Fits, damage tests and relaxation fits take milliseconds to seconds per spectrum. Run on the
event loop they held up everything else the monitor does: reading sockets, acking commands,
the orchestrator's spot moves (a move acked seconds late put several more scans on a spent
spot). Here one thread analyses spectra in the order they were aligned; everything the
analyzer says (events, state updates, damage findings for the orchestrator) is handed
back to the event loop, which alone touches sockets and the orchestrator. Store rows go
straight to the store's queue, which is thread-safe.

The GIL is shared, but CPython hands it over every few milliseconds, so the loop answers in
milliseconds while a long fit runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from operando.align import Alignment
from operando.analyze import Analyzer, SpectrumInput
from operando.protocol import LazyArrays

log = logging.getLogger(__name__)

_FINISH = "finish"


class AnalysisThread:
    def __init__(
        self,
        analyzer: Analyzer,
        loop: asyncio.AbstractEventLoop,
        on_error: Callable[[SpectrumInput, Exception], None],
        max_bytes: int = 256 << 20,
    ) -> None:
        self.analyzer = analyzer
        self.loop = loop
        self.on_error = self._to_loop(on_error)
        analyzer.event = self._to_loop(analyzer.event)
        analyzer.publish = self._to_loop(analyzer.publish)
        analyzer.on_finding = [self._to_loop(f) for f in analyzer.on_finding]
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._queued = 0  # written by the loop only
        self._done = 0  # written by the thread only: no shared counter to race on
        self._queued_bytes = 0  # the same, for the bytes of the spectra's arrays
        self._done_bytes = 0
        self.max_bytes = max_bytes
        self._thread = threading.Thread(target=self._run, name="analysis", daemon=True)
        self._thread.start()

    def _to_loop(self, f: Callable[..., Any]) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            self.loop.call_soon_threadsafe(functools.partial(f, *args, **kwargs))

        return call

    @property
    def backlog(self) -> int:
        """Spectra aligned but not yet analysed."""
        return self._queued - self._done

    @property
    def backlog_bytes(self) -> int:
        return self._queued_bytes - self._done_bytes

    def put(
        self,
        s: SpectrumInput,
        arrays: LazyArrays,
        al: Alignment,
        rest_ewe: tuple[np.ndarray, np.ndarray] | None,
    ) -> bool:
        """Queue a spectrum; False (not queued) when the backlog would pass ``max_bytes``."""
        nbytes = arrays.nbytes
        if self.backlog and self.backlog_bytes + nbytes > self.max_bytes:
            return False
        self._queued += 1
        self._queued_bytes += nbytes
        self._jobs.put((s, arrays, al, rest_ewe, nbytes))
        return True

    def finish(self) -> None:
        self._jobs.put((_FINISH,))

    def close(self, timeout: float = 60.0) -> None:
        """Analyse what is queued, then stop (blocking: call it from a thread)."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job[0] == _FINISH:
                self.analyzer.finish()
                continue
            s, arrays, al, rest_ewe, nbytes = job
            try:
                self.analyzer.on_spectrum(s, arrays, al, rest_ewe)
            except Exception as e:  # analysis must never stop: say what failed, go on
                log.exception("analysing spectrum %d failed", s.spectrum_id)
                self.on_error(s, e)
            finally:
                self._done_bytes += nbytes
                self._done += 1
