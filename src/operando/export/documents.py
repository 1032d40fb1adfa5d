"""``operando export RUN --format documents``: the run as event-model documents.

The documents ``operando.export.compose`` gives out (the same a live ``operando publish``
sends), each made and validated by event-model, so the run goes into databroker or Tiled like
any bluesky run:

- ``electrochemistry``: the potentiostat rows (Ewe, I, Q, soc, mode, step, cycle) as event pages,
  each row's time its event time;
- ``half_cycles``, ``current_steps``, ``gitt``, ``interruptions``: an event a row;
- one stream per edge and scan shape, e.g. ``Mn_L`` (and ``Mn_L_2`` should a scan of another
  length or channel set come): energy and every channel as arrays, the aligned electrochemistry
  (Ewe_mean, I_mean, soc, Q, cycle, mode, partial), spot, dose and per fitted channel the
  valence with its uncertainty, quality and fractions;
- ``rixs_<map>``: one event per RIXS row (excitation, emission axis, counts).

Written as JSON lines (``[name, doc]`` per line, as suitcase-jsonl) or a MessagePack stream of
``[name, doc]`` pairs (as suitcase-msgpack). NaN goes out as null.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from operando.export import Progress
from operando.export.compose import Composer, Document
from operando.store.reader import Run

SERIALIZERS = ("jsonl", "msgpack")


def write_documents(
    run_dir: str | Path, out: str | Path, serializer: str, progress: Progress | None = None
) -> tuple[Path, dict[str, int]]:
    """Write the run's documents; return the file and how many documents of each kind."""
    if serializer not in SERIALIZERS:
        raise ValueError(f"serializer {serializer!r}: one of {', '.join(SERIALIZERS)}")
    out = Path(out)
    counts: dict[str, int] = {}
    enc = msgspec.json.Encoder() if serializer == "jsonl" else msgspec.msgpack.Encoder()
    with Run(run_dir) as run, open(out, "wb") as f:
        composer, total = Composer(run), run.count_spectra()
        for name, doc in composer.documents(ended=True):
            counts[name] = counts.get(name, 0) + 1
            if progress is not None and total:
                progress(composer.cursor.spectrum_id, total)
            f.write(enc.encode([name, doc]))
            if serializer == "jsonl":
                f.write(b"\n")
    return out, counts


def read_documents(path: str | Path) -> Iterator[Document]:
    """The documents of a file ``write_documents`` wrote (either serializer)."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        for line in data.splitlines():
            if line.strip():
                name, doc = msgspec.json.decode(line)
                yield name, doc
        return
    import msgpack  # a stream of concatenated objects: msgspec decodes one object only

    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    for name, doc in unpacker:
        yield name, doc
