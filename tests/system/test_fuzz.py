"""The fuzzing of bench/fuzz.py, small enough for every test run (the bench runs 10^5 inputs a
target, 10^4 files).

Each target must take every mutated input without crashing; the frame decoder must record
every input, each malformed one with its error.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

BENCH = REPO / "bench" / "fuzz.py"


def _fuzz():
    spec = importlib.util.spec_from_file_location("fuzz", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("target", "n"),
    [
        ("fuzz_frames", 3000),
        ("fuzz_eclab", 3000),
        ("fuzz_methodscript", 3000),
        ("fuzz_bluesky", 3000),
        ("fuzz_files", 700),
        ("fuzz_sparse_batches", 300),
        ("fuzz_follow_chunks", 60),
    ],
)
def test_mutated_input_is_refused_or_recorded_never_a_crash(target, n):
    result = getattr(_fuzz(), target)(n, seed=7)
    assert result["ok"], result
    if target == "fuzz_frames":
        assert result["recorded"] == 3000 and result["malformed"] > 1000
        assert result["fits"] > 0  # mutated spectra reached the analysis
    elif target == "fuzz_bluesky":
        assert result["refused"] > 100 and result["scans_sent"] > 10  # both paths exercised
    elif target in ("fuzz_sparse_batches", "fuzz_follow_chunks"):
        assert result.get("rows_sent", 1) > 0  # every row derived, every chunking the same
    elif "skipped" not in result:
        assert result["refused"] > 100 and result["parsed"] > 100  # both paths exercised
