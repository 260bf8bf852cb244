"""The knowledge benchmark runs end to end at small sizes and prints its comparisons."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.nodb
def test_quick_benchmark_prints_both_ratios():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "knowledge.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"Tuneyard \(LanceDB\)\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), out
    assert re.search(r"numpy \+ SQLite FTS5\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), out
    assert re.search(r"ratio \(baseline / Tuneyard\): build [\d.]+x, search p50 [\d.]+x", out)
    assert re.search(r"ratio \(Tuneyard / baseline\): [\d.]+x the encode\(text\) loop", out)
    # The two stores agree on the best chunk for most queries (the same data, the same RRF).
    agreed, asked = map(
        int, re.search(r"same first hit as the baseline for (\d+)/(\d+)", out).groups()
    )
    assert agreed >= asked // 2
