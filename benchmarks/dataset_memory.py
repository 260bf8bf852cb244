"""Parsing a large dataset file: Tuneyard's bounded-memory readers against reading it whole.

Two files of the same records (short prompt/completion pairs of random text): a JSON array
and a Parquet file written as one row group. Each is read in a process of its own, twice:
by `parse_file` (the code the parse job runs: the JSON array a chunk at a time, Parquet
through a small read buffer), and by the baseline the parser used before (`json.loads` of
the whole text; `ParquetFile.iter_batches` with pyarrow's default whole-row-group reads;
neither validates nor writes records, which parse_file does). Each process reports its peak
RSS (getrusage) above what it had after its imports, and its time; the files are written by
another process, so the parent stays small.

    python benchmarks/dataset_memory.py [--records 200000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from tuneyard.datasets.parsing import parse_file

kind, reader, source, target = sys.argv[1:5]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
count = 0
if reader == "tuneyard":
    count = parse_file(
        Path(source), kind, Path(target), column_mapping={}, max_errors=20,
        max_line_chars=4000, max_records=10**9,
    ).record_count
elif kind == "json":
    for record in json.loads(Path(source).read_text(encoding="utf-8-sig")):
        count += 1
else:
    for batch in pq.ParquetFile(source).iter_batches(batch_size=1024):
        count += len(batch.to_pylist())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"records": count, "seconds": time.perf_counter() - started,
                  "peak_mib": (peak - before) / 1024}))
"""


def write_files(folder: Path, records: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    letters = string.ascii_letters + " "
    rows = [
        {
            "prompt": "".join(rng.choices(letters, k=200)),
            "completion": "".join(rng.choices(letters, k=300)),
        }
        for _ in range(records)
    ]
    json_file = folder / "records.json"
    json_file.write_text(json.dumps(rows, indent=1))
    parquet_file = folder / "records.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_file, row_group_size=records)


def measure(kind: str, reader: str, source: Path, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, reader, str(source), str(folder / "out.jsonl")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        # In a process of its own: a child's peak RSS starts at its parent's.
        writer = multiprocessing.get_context("spawn").Process(
            target=write_files, args=(folder, args.records)
        )
        writer.start()
        writer.join()
        json_file, parquet_file = folder / "records.json", folder / "records.parquet"
        print(
            f"{args.records:,} records: JSON {json_file.stat().st_size / 2**20:.0f} MiB, "
            f"Parquet {parquet_file.stat().st_size / 2**20:.0f} MiB "
            f"(written in {time.perf_counter() - started:.0f} s)"
        )
        for kind, source in (("json", json_file), ("parquet", parquet_file)):
            ours = measure(kind, "tuneyard", source, folder)
            whole = measure(kind, "baseline", source, folder)
            assert ours["records"] == whole["records"] == args.records
            ratio = whole["peak_mib"] / max(ours["peak_mib"], 0.1)
            print(
                f"{kind:8} peak RSS above imports: tuneyard {ours['peak_mib']:7.1f} MiB "
                f"({ours['seconds']:.1f} s), read whole {whole['peak_mib']:7.1f} MiB "
                f"({whole['seconds']:.1f} s); {ratio:.1f}x"
            )


if __name__ == "__main__":
    main()
