"""Assessment throughput: the same run made one model call at a time and with Tuneyard's
per-backend concurrency, in one run.

64 records, two candidates and a pairwise judge (asked twice a row, the answers swapped): four
calls a row, 256 in all, to one OpenAI-compatible double (tests/openai_double.py) that answers
each call after 200 ms, as a remote model would. Both sides are Tuneyard's own assessment job,
run in its job process by the executor; the baseline sets the endpoint's limit to one call at a
time (TUNEYARD_ASSESSMENT_REMOTE_CONCURRENCY=1), Tuneyard's side keeps the default (8). The time
compared is the job's time on the rows (its model calls and writes); the whole job's, from its
claim to its end (process start and summary included), is printed beside it. Each side's
summary is checked to have read every verdict.

With --live, the same records are then answered by a live model: SmolLM2-135M-Instruct (the
demo GGUF, dequantized once) deployed at q8_0 to a llama.cpp environment that Tuneyard starts,
with reference metrics and no judge; it prints rows/s.

    python benchmarks/assessment.py [--rows 64] [--latency 0.2] [--live]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))

LIVE_MAX_TOKENS = 32


def records(count: int) -> list[dict[str, str]]:
    return [
        {"prompt": f"What is {i} plus {i}?", "completion": str(2 * i)} for i in range(1, count + 1)
    ]


def scripted(messages) -> str:
    """Candidates answer by their system prompt; the judge always prefers answer A."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    if system == "judge":
        return json.dumps({"winner": "A", "reason": "it came first"})
    return f"{system} says {len(messages[-1]['content'])}"


def run_job(settings, job_id: str):
    from tuneyard.jobs.executor import Executor

    executor = Executor(settings)
    try:
        job = executor.run_until_finished(job_id, poll_seconds=0.05)
    finally:
        executor.stop()
    if job.status != "succeeded":
        sys.exit(f"job {job_id} {job.status}: {job.error}")
    return job


def upload(principal, name: str, rows: list[dict]) -> str:
    import io

    from tuneyard.config import get_settings
    from tuneyard.datasets.service import create_dataset
    from tuneyard.db import session_scope

    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with session_scope() as session:
        dataset, job = create_dataset(
            session, principal, name=name, filename=f"{name}.jsonl", content=io.BytesIO(content)
        )
        dataset_id, job_id = dataset.id, job.id
    run_job(get_settings(), job_id)
    return dataset_id


def assess(principal, settings, request: dict) -> tuple[float, float, dict]:
    """(seconds the job took, seconds of it spent on the rows, its summary)."""
    from tuneyard.assessment.schemas import AssessmentCreate
    from tuneyard.assessment.service import create_assessment
    from tuneyard.db import session_scope
    from tuneyard.models import Assessment

    with session_scope() as session:
        assessment = create_assessment(session, principal, AssessmentCreate(**request))
        assessment_id, job_id = assessment.id, assessment.job_id
    job = run_job(settings, job_id)
    with session_scope() as session:
        summary = session.get(Assessment, assessment_id).summary
    job_seconds = (job.finished_at - job.started_at).total_seconds()
    return job_seconds, job.result["seconds"], summary


def third_party(principal, name: str, url: str) -> str:
    from tuneyard.db import session_scope
    from tuneyard.thirdparty.service import create_third_party

    with session_scope() as session:
        row = create_third_party(
            session, principal, name, "openai-compatible", "scripted", base_url=url
        )
        return f"third-party:{row.id}"


def concurrency_side_by_side(principal, dataset_id: str, rows: int, latency: float) -> None:
    from tests.openai_double import OpenAIDouble
    from tuneyard.config import Settings

    with OpenAIDouble(scripted, latency=latency) as double:
        a = third_party(principal, "candidate-a", double.url)
        b = third_party(principal, "candidate-b", double.url)
        judge = third_party(principal, "judge", double.url)
        sides = (("one call at a time", 1), ("Tuneyard", Settings().assessment_remote_concurrency))
        timings = {}
        for label, concurrency in sides:
            request = {
                "name": f"limit {concurrency}",
                "dataset_id": dataset_id,
                "sample": {"size": rows},
                "candidates": [
                    {"model": a, "system": "A", "prompt": "{{prompt}}"},
                    {"model": b, "system": "B", "prompt": "{{prompt}}"},
                ],
                "judge": {
                    "model": judge,
                    "system": "judge",
                    "kind": "pairwise",
                    "prompt": "[A] {{ResponseA}} [B] {{ResponseB}}",
                },
            }
            settings = Settings(assessment_remote_concurrency=concurrency)
            double.max_in_flight = 0
            job_seconds, seconds, summary = assess(principal, settings, request)
            verdicts = summary["judge"]
            if verdicts["verdicts_parsed"] != rows or summary["rows"]["done"] != rows:
                sys.exit(f"{label}: not every row was answered and judged: {summary['lines']}")
            timings[label] = (job_seconds, seconds)
            print(
                f"  {label:<20} limit {concurrency}: rows {seconds:5.1f} s "
                f"({rows / seconds:5.1f} rows/s, {4 * rows / seconds:5.1f} calls/s, at most "
                f"{double.max_in_flight} at once); whole job {job_seconds:5.1f} s"
            )
    (baseline_job, baseline), (ours_job, ours) = timings["one call at a time"], timings["Tuneyard"]
    print(
        f"  ratio: {baseline / ours:.1f}x faster with Tuneyard's concurrency (target >= 4x); "
        f"{baseline_job / ours_job:.1f}x for the whole job, process start included"
    )


def live_rows_per_second(principal, dataset_id: str, rows: int) -> None:
    from _models import smollm2_folder

    from tuneyard.basemodels.service import register_path
    from tuneyard.config import get_settings
    from tuneyard.db import session_scope
    from tuneyard.deploy.llamacpp import ManagedServer
    from tuneyard.deploy.service import create_environment, start_deploy
    from tuneyard.storage import Layout

    folder = smollm2_folder()
    with session_scope() as session:
        base = register_path(session, principal, "smollm2", str(folder))
        environment = create_environment(session, principal, "local", "llama.cpp")
        live = start_deploy(session, principal, "base", base.id, environment.id, "q8_0")
        environment_id, live_id, job_id = environment.id, live.id, live.job_id
    settings = get_settings()
    started = time.monotonic()
    run_job(settings, job_id)
    print(
        f"  deployed SmolLM2-135M-Instruct q8_0 to llama.cpp in {time.monotonic() - started:.0f} s"
    )
    try:
        request = {
            "name": "live",
            "dataset_id": dataset_id,
            "sample": {"size": rows},
            "candidates": [
                {
                    "model": f"live:{live_id}",
                    "prompt": "{{prompt}} Answer with the number only.",
                    "params": {"max_tokens": LIVE_MAX_TOKENS},
                }
            ],
            "reference_column": "completion",
            "metrics": ["exact", "numeric"],
        }
        _job_seconds, seconds, summary = assess(principal, settings, request)
        candidate = summary["candidates"][0]
        if candidate["errors"]:
            sys.exit(f"  {candidate['errors']} calls to the live model failed: {summary['lines']}")
        # The llama.cpp server Tuneyard starts takes one request at a time (see runner.py).
        print(
            f"  live llama.cpp model (q8_0, one call at a time), up to {LIVE_MAX_TOKENS} tokens:"
            f" {rows} rows in {seconds:.1f} s, {rows / seconds:.2f} rows/s; "
            f"{candidate['answered']} answered, numeric match "
            f"{candidate['metrics']['numeric']['mean']:.2f}"
        )
    finally:
        ManagedServer(Layout().environment_dir(environment_id)).stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per call")
    parser.add_argument("--live", action="store_true", help="also a live llama.cpp model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["TUNEYARD_DATA_DIR"] = scratch
        os.environ.pop("TUNEYARD_DATABASE_URL", None)
        os.environ.pop("TUNEYARD_ASSESSMENT_REMOTE_CONCURRENCY", None)
        if args.live:
            from _models import CACHE

            os.environ["TUNEYARD_MODEL_ROOTS"] = str(CACHE)
        from tuneyard.api import prepare
        from tuneyard.auth.service import local_principal
        from tuneyard.config import reset_settings
        from tuneyard.db import session_scope

        reset_settings()
        prepare(announce=lambda _text: None)
        with session_scope() as session:
            principal = local_principal(session)
        dataset_id = upload(principal, "sums", records(args.rows))
        print(
            f"{args.rows} rows, two candidates and a pairwise judge (4 calls a row), "
            f"{args.latency * 1000:.0f} ms a call:"
        )
        concurrency_side_by_side(principal, dataset_id, args.rows, args.latency)
        if args.live:
            live_rows_per_second(principal, dataset_id, args.rows)


if __name__ == "__main__":
    main()
