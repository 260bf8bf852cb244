"""The assessment job's body: every pending row's candidate and judge calls, run concurrently
within each backend's limit, their results written a batch at a time.

Each backend (the local inference process, each live server, each third-party endpoint) has a
pool of its own, as large as its limit (TUNEYARD_ASSESSMENT_*_CONCURRENCY): no backend gets more
calls at once than it allows, and a busy one does not hold up the others. Rows are worked by a
pool of their own that hands each call to its model's backend pool. A call answered 429 or 5xx
is retried with exponential backoff (or after the Retry-After it asked for), holding its slot.

The database is never written while a model is asked: the threads only compute; the job's main
thread writes the finished rows, in short units of work, every half second.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from tuneyard.assessment import prompts
from tuneyard.assessment.metrics import agreement, score_answer
from tuneyard.assessment.service import (
    FIDELITY,
    candidate_messages,
    judge_messages,
    judge_values,
    sample_indices,
)
from tuneyard.assessment.summary import summarize
from tuneyard.assessment.verdicts import combine_pairwise, parse_score, parse_winner
from tuneyard.auth.service import Principal
from tuneyard.chat.backends import ChatModel, EndpointFailed, complete_chat, resolve_model
from tuneyard.config import Settings
from tuneyard.datasets.service import iter_records
from tuneyard.db import session_scope
from tuneyard.errors import AppError, Conflict
from tuneyard.jobs.context import JobCancelled
from tuneyard.models import Assessment, AssessmentRow, Dataset, Job, utcnow

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
BACKOFF_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
MAX_ROW_WORKERS = 64
CALL_TIMEOUT_SECONDS = 600.0


class Stopped(Exception):
    """The run was asked to stop: the row is left pending."""


@dataclass(frozen=True)
class Backend:
    """Where a model's calls go, and how many may run there at once."""

    key: str
    limit: int


# A llama.cpp server started by Tuneyard (llama-cpp-python's) answers one request at a time,
# and a second request interrupts the stream of the first: its answer ends early, empty.
ONE_AT_A_TIME_TOOLS = ("llama.cpp",)


def backend_of(model: ChatModel, settings: Settings, tool: str | None = None) -> Backend:
    """Where `model` answers and its limit; `tool` is a live model's serving tool."""
    if model.local is not None:
        return Backend("local", settings.assessment_local_concurrency)
    if model.kind == "live":
        limit = 1 if tool in ONE_AT_A_TIME_TOOLS else settings.assessment_live_concurrency
        return Backend(f"live {model.base_url}", limit)
    return Backend(f"remote {model.base_url}", settings.assessment_remote_concurrency)


def serving_tool(session, principal: Principal, model: ChatModel) -> str | None:
    """The kind of environment a live model is served by (None for other models)."""
    if model.kind != "live":
        return None
    from tuneyard.deploy.service import get_environment, get_live

    live = get_live(session, principal, model.id)
    return get_environment(session, principal, live.environment_id).kind


class Caller:
    """Model calls through per-backend pools, with retries and a stop switch."""

    def __init__(self, backends: dict[str, Backend], settings: Settings):
        self.settings = settings
        self.stop = threading.Event()
        self._backends = backends
        limits: dict[str, int] = {}
        for backend in self._backends.values():
            limits[backend.key] = backend.limit
        self._pools = {
            key: ThreadPoolExecutor(limit, thread_name_prefix=f"assess-{key.split()[0]}")
            for key, limit in limits.items()
        }
        # One HTTP client a backend, its connections kept between calls.
        self._clients = {key: _http_client(limit) for key, limit in limits.items()}
        self.capacity = sum(limits.values())

    def submit(self, model: ChatModel, messages: list[dict], params: dict) -> Future:
        if self.stop.is_set():
            raise Stopped()
        key = self._backends[model.ref].key
        return self._pools[key].submit(self.call, model, messages, params, self._clients[key])

    def call(self, model: ChatModel, messages: list[dict], params: dict, client) -> dict[str, Any]:
        """One answer: text, latency, tokens; or the error that ended the last attempt."""
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Stopped()
            started = time.monotonic()
            try:
                text, finish, usage, first = complete_chat(model, messages, params, client)
            except EndpointFailed as exc:
                if attempt >= self.settings.assessment_retries:
                    return _failed(exc.message, started, attempt)
                delay = exc.retry_after
                if delay is None:
                    delay = BACKOFF_SECONDS * 2**attempt * (1 + random.random() / 2)
                attempt += 1
                if self.stop.wait(min(delay, BACKOFF_MAX_SECONDS)):
                    raise Stopped() from None
                continue
            except AppError as exc:
                return _failed(exc.message, started, attempt)
            return {
                "text": text,
                "error": None,
                "finish_reason": finish,
                "seconds": round(time.monotonic() - started, 4),
                "first_token_seconds": round(first, 4),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "retries": attempt,
            }

    def shutdown(self) -> None:
        self.stop.set()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()


def _http_client(limit: int):
    import httpx

    return httpx.Client(
        timeout=httpx.Timeout(CALL_TIMEOUT_SECONDS, connect=10.0),
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
    )


def _failed(message: str, started: float, attempt: int) -> dict[str, Any]:
    return {
        "text": "",
        "error": message,
        "seconds": round(time.monotonic() - started, 4),
        "prompt_tokens": None,
        "completion_tokens": None,
        "retries": attempt,
    }


def _result(future: Future) -> dict[str, Any]:
    try:
        return future.result()
    except Stopped:
        raise
    except Exception as exc:  # a bug in a call must not pass for an answer
        log.exception("a model call failed unexpectedly")
        return _failed(f"{type(exc).__name__}: {exc}", time.monotonic(), 0)


class RowWork:
    """What one row needs: its candidates' calls, then its judge's, then its figures."""

    def __init__(
        self,
        config: dict[str, Any],
        models: list[ChatModel],
        judge,
        caller: Caller,
        principal: Principal | None = None,
    ):
        self.config = config
        self.models = models
        self.judge_model = judge
        self.caller = caller
        self.principal = principal

    def __call__(self, row_id: int, record: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        asked = [candidate_messages(c, record) for c in config["candidates"]]
        sources: list[list[dict] | None] = []
        failures: list[str | None] = []
        for candidate, messages in zip(config["candidates"], asked, strict=True):
            try:
                sources.append(self._ground(candidate, messages))
                failures.append(None)
            except AppError as exc:
                sources.append(None)
                failures.append(f"Retrieval failed: {exc.message}")
        futures = [
            None if failed else self.caller.submit(model, messages, candidate["params"])
            for model, messages, candidate, failed in zip(
                self.models, asked, config["candidates"], failures, strict=True
            )
        ]
        answers = []
        for messages, future, cited, why in zip(asked, futures, sources, failures, strict=True):
            answer = (
                _result(future) if future is not None else _failed(str(why), time.monotonic(), 0)
            )
            if cited is not None:
                answer["citations"] = cited
            answers.append({"prompt": messages[-1]["content"], **answer})
        texts = [answer["text"] if answer["error"] is None else None for answer in answers]
        metrics = [self._metrics(record, text) for text in texts]
        both: dict[str, Any] | None = None
        if config.get("kind") == FIDELITY:
            source = texts[0]
            both = {
                "stages": [
                    None
                    if index == 0 or source is None or text is None
                    else agreement(source, text)
                    for index, text in enumerate(texts)
                ]
            }
        elif len(texts) == 2 and texts[0] is not None and texts[1] is not None:
            both = agreement(texts[0], texts[1])
        judgments, verdict = [], None
        if config.get("judge") is not None:
            judgments, verdict = self._judge(record, asked[0][-1]["content"], texts)
        failed = any(a["error"] for a in answers) or any(j["error"] for j in judgments)
        return {
            "id": row_id,
            "status": "error" if failed else "done",
            "answers": answers,
            "judgments": judgments,
            "verdict": verdict,
            "metrics": metrics,
            "agreement": both,
        }

    def _ground(self, candidate: dict[str, Any], messages: list[dict]) -> list[dict] | None:
        """For a retrieval-augmented candidate, put the sources retrieved for its question into
        the system message (in place); where each source came from, for the row."""
        if not candidate.get("knowledge_bases") or self.principal is None:
            return None
        from tuneyard.knowledge.grounding import ground

        options = candidate.get("grounding") or {}
        with session_scope() as session:
            grounding = ground(
                session,
                self.principal,
                candidate["knowledge_bases"],
                messages[-1]["content"][-2000:],
                messages,
                max_tokens=candidate["params"]["max_tokens"],
                top_k=options.get("top_k", 5),
                mode=options.get("mode", "hybrid"),
            )
        if messages and messages[0]["role"] == "system":
            messages[0] = {
                **messages[0],
                "content": f"{messages[0]['content']}\n\n{grounding.system}",
            }
        else:
            messages.insert(0, {"role": "system", "content": grounding.system})
        return [
            {key: source[key] for key in ("n", "filename", "page_label", "chunk_id", "score")}
            for source in grounding.citations
        ]

    def _metrics(self, record: dict[str, Any], text: str | None) -> dict[str, Any]:
        names = self.config.get("metrics") or []
        reference = self.config.get("reference_column")
        if not names or text is None or reference is None:
            return {}
        return score_answer(names, text, prompts.reference_text(record, reference))

    def _ask_judge(self, record, question, answers: list[str]) -> Future:
        judge = self.config["judge"]
        values = judge_values(self.config, record, question, answers)
        return self.caller.submit(self.judge_model, judge_messages(judge, values), judge["params"])

    def _judge(self, record, question: str, texts: list[str | None]):
        judge = self.config["judge"]
        if judge["kind"] == prompts.PAIRWISE:
            first, second = texts
            if first is None or second is None:
                return [], {"winner": None, "consistent": None, "flip": None}
            orders = {"AB": [first, second], "BA": [second, first]}
            futures = {
                order: self._ask_judge(record, question, pair) for order, pair in orders.items()
            }
            judgments, read = [], {}
            for order, future in futures.items():
                answer = _result(future)
                parsed = parse_winner(answer["text"]) if answer["error"] is None else None
                read[order] = parsed
                judgments.append(_judgment(answer, parsed, order=order))
            if read["AB"] is None or read["BA"] is None:
                return judgments, {"winner": None, "consistent": None, "flip": None}
            return judgments, combine_pairwise(read["AB"], read["BA"])
        by_candidate = {
            index: self._ask_judge(record, question, [text])
            for index, text in enumerate(texts)
            if text is not None
        }
        judgments = []
        scores: list[float | str | None] = [None] * len(texts)
        for index, future in by_candidate.items():
            answer = _result(future)
            parsed = parse_score(answer["text"]) if answer["error"] is None else None
            if parsed is not None and parsed.parsed:
                scores[index] = parsed.value
            judgments.append(_judgment(answer, parsed, candidate=index))
        return judgments, {"scores": scores}


def _judgment(answer: dict[str, Any], parsed, **where) -> dict[str, Any]:
    return {
        **where,
        "raw": answer["text"],
        "verdict": parsed.as_dict() if parsed is not None else None,
        "error": answer["error"],
        "seconds": answer["seconds"],
        "prompt_tokens": answer.get("prompt_tokens"),
        "completion_tokens": answer.get("completion_tokens"),
        "retries": answer.get("retries", 0),
    }


# -- the job ----------------------------------------------------------------------------------


def job_principal(job: Job) -> Principal:
    """The run acts inside its project, as the user who started it (whose private third-party
    entries it may use); the request's role was checked when it was queued."""
    return Principal(job.created_by or "", "assessment", job.project_id, "", "admin")


def _draw_sample(ctx, assessment_id: str) -> None:
    """The sample's rows, written once (the first run): a resumed run finds them there."""
    with session_scope(ctx.settings) as session:
        assessment = session.get_one(Assessment, assessment_id)
        if session.scalar(
            select(AssessmentRow.id).where(AssessmentRow.assessment_id == assessment_id).limit(1)
        ):
            return
        dataset = session.get(Dataset, assessment.dataset_id) if assessment.dataset_id else None
        if dataset is None:
            raise Conflict(f"The dataset of assessment {assessment.name} was deleted.")
        if assessment.dataset_digest and dataset.digest != assessment.dataset_digest:
            raise Conflict(
                f"Dataset '{dataset.name}' changed since assessment {assessment.name} was "
                "created; create the assessment again."
            )
        sample = assessment.config["sample"]
        indices = sample_indices(dataset.record_count, sample["size"], sample["seed"])
        session.expunge_all()
    ctx.progress(0, f"Drawing {len(indices):,} records from {dataset.name}")
    wanted = dict.fromkeys(indices)
    last = indices[-1]
    records = iter_records(dataset)
    try:
        for index, record in enumerate(records):
            if index in wanted:
                wanted[index] = record
            if index >= last:
                break
    finally:
        records.close()
    rows = [
        AssessmentRow(
            assessment_id=assessment_id, position=position, record_index=index, record=record
        )
        for position, (index, record) in enumerate(wanted.items())
        if record is not None
    ]
    with ctx.session() as session:
        session.add_all(rows)
        session.get_one(Assessment, assessment_id).row_count = len(rows)


def _prepare(ctx, assessment_id: str):
    with ctx.session() as session:
        assessment = session.get_one(Assessment, assessment_id)
        assessment.status = "running"
        job = session.get(Job, ctx.job_id)
        principal = job_principal(job)
        config = assessment.config
        name = assessment.name
    with session_scope(ctx.settings) as session:
        models = [resolve_model(session, principal, c["model"]) for c in config["candidates"]]
        judge = None
        if config.get("judge") is not None:
            judge = resolve_model(session, principal, config["judge"]["model"])
        backends = {
            model.ref: backend_of(model, ctx.settings, serving_tool(session, principal, model))
            for model in [*models, *([judge] if judge else [])]
        }
        pending = [
            (row_id, record)
            for row_id, record in session.execute(
                select(AssessmentRow.id, AssessmentRow.record)
                .where(
                    AssessmentRow.assessment_id == assessment_id,
                    AssessmentRow.status != "done",
                )
                .order_by(AssessmentRow.position)
            )
        ]
        total = session.get_one(Assessment, assessment_id).row_count
    return name, config, models, judge, backends, pending, total, principal


def _write(ctx, results: list[dict[str, Any]]) -> None:
    if not results:
        return
    with ctx.session() as session:
        for result in results:
            row = session.get(AssessmentRow, result["id"])
            for key in ("status", "answers", "judgments", "verdict", "metrics", "agreement"):
                setattr(row, key, result[key])
            row.finished_at = utcnow()


def run_assessment(ctx) -> dict[str, Any]:
    assessment_id = ctx.params["assessment_id"]
    _draw_sample(ctx, assessment_id)
    name, config, models, judge, backends, pending, total, principal = _prepare(ctx, assessment_id)
    done = total - len(pending)
    ctx.progress(
        100 * done / max(total, 1), f"Assessing {len(pending):,} rows ({done:,} already done)"
    )
    caller = Caller(backends, ctx.settings)
    work = RowWork(config, models, judge, caller, principal)
    workers = max(1, min(MAX_ROW_WORKERS, 2 * caller.capacity, len(pending) or 1))
    rows_pool = ThreadPoolExecutor(workers, thread_name_prefix="assess-row")
    started = time.monotonic()
    try:
        _run_rows(ctx, rows_pool, work, pending, done, total)
    finally:
        rows_pool.shutdown(wait=False, cancel_futures=True)
        caller.shutdown()
    seconds = time.monotonic() - started
    with ctx.session() as session:
        assessment = session.get_one(Assessment, assessment_id)
        rows = list(
            session.scalars(
                select(AssessmentRow).where(AssessmentRow.assessment_id == assessment_id)
            )
        )
        summary = summarize(config, rows)
        if rows and all(row.status == "error" for row in rows):
            first = next(a["error"] for a in rows[0].answers + rows[0].judgments if a["error"])
            raise Conflict(
                f"Every row of assessment {name} failed; the first error: {first}. Fix it and "
                "resume the assessment."
            )
        assessment.summary = summary
        assessment.status = "succeeded"
        assessment.finished_at = utcnow()
    judged = summary.get("judge", {}).get("lines", [])
    ctx.progress(100, "; ".join([f"Assessed {len(rows):,} rows", *judged[:1]]))
    return {"rows": summary["rows"], "lines": summary["lines"], "seconds": round(seconds, 3)}


def _run_rows(ctx, pool, work: RowWork, pending, done: int, total: int) -> None:
    futures = {pool.submit(work, row_id, record) for row_id, record in pending}
    finished: list[dict[str, Any]] = []
    last_flush = time.monotonic()
    while futures:
        ready, futures = wait(futures, timeout=FLUSH_SECONDS, return_when=FIRST_COMPLETED)
        for future in ready:
            try:
                finished.append(future.result())
            except Stopped:
                continue
        if ctx.cancel_requested:
            work.caller.stop.set()
            _write(ctx, finished)
            raise JobCancelled()
        if time.monotonic() - last_flush >= FLUSH_SECONDS or not futures:
            _write(ctx, finished)
            done += len(finished)
            finished = []
            last_flush = time.monotonic()
            ctx.progress(100 * done / max(total, 1), f"Assessed {done:,} of {total:,} rows")


def settle(session, job: Job) -> None:
    """Keep the assessment in step with a job that failed or was cancelled: its status, the
    reason, and the summary of the rows it finished."""
    assessment = session.get(Assessment, (job.params or {}).get("assessment_id"))
    if assessment is None or assessment.job_id != job.id or assessment.status == "succeeded":
        return
    assessment.status = job.status
    assessment.error = job.error
    assessment.finished_at = utcnow()
    rows = list(
        session.scalars(select(AssessmentRow).where(AssessmentRow.assessment_id == assessment.id))
    )
    assessment.summary = summarize(assessment.config, rows) if rows else None
