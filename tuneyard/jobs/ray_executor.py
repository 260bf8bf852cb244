"""The ray executor: claims queued jobs as the local executor does, and runs each on a Ray
cluster, with the resources its kind declares (TUNEYARD_EXECUTOR=ray).

Each running job has one detached, named actor on the cluster (`tuneyard-job-<id>` in the
namespace `tuneyard`), holding the resources the job asked for. The actor starts the job's
process (`python -m tuneyard.jobs.child JOB_ID`, the same entry the local executor runs) with
its output appended to the job's log in the shared data dir, and watches it. So progress,
heartbeat, events, fencing by attempt and the result writes are those of the local executor:
the job's process reports to the database itself. The process runs in a session of its own
(cancel signals its group: SIGTERM, then SIGKILL after the kind's grace period) and dies with
its actor (PR_SET_PDEATHSIG), so a crash kills only the job, and an actor that is gone means
its process is gone.

- The executor holds a pending call of the actor's `run`, which answers the process's exit
  code; an actor that died (its node was lost, or it was killed) answers ActorDiedError, and
  the job fails with that reason, its kind's on_failure and cleanup running as for a process
  that died. A finished job's actor is killed, which frees its resources.
- Actors outlive the executor that made them. A worker (or server) that starts finds the jobs
  left running by stopped executors, looks up their actors by name and adopts those alive;
  one whose actor is gone is failed. A job that went silent while its executor lives is failed
  as by the local executor, its actor killed, and its files removed once the actor is gone.
- A job is claimed only when a node of the cluster could hold it and the cluster has its
  resources free; until then it stays queued, its message saying what it waits for. One
  claimed whose resources others took before Ray placed its actor waits running, the executor
  keeping its heartbeat and saying so; a cancel then kills its actor at once.

The cluster needs the same Python environment (tuneyard and the job kinds' libraries), access
to the database, and the data dir at the same path, unless an artifact store is set:

With TUNEYARD_ARTIFACT_STORE the nodes share no disk with the API; the store carries the job's
folders (tuneyard.artifacts), and only kinds that declare `writes` run there: the others, and a
job that reads a folder the API's data dir does not hold (a model registered where it lies),
stay queued, saying so, for a local worker on the API's machine to take. Before starting a job,
the worker publishes the folders of its `uses`, the files its kind names (`files`: the uploaded
code it runs) and what else it `reads` (an image model in the data dir, adapters, a training
set), those unchanged in the store skipped; its actor fetches them into the node's data dir
(TUNEYARD_NODE_DATA_DIR), with the data dir's key that decrypts stored API keys, and runs the
process on that dir, publishing its log every few seconds. A process that succeeds there does
not mark the job succeeded (tuneyard.jobs.child): it leaves its result, the actor publishes the
artifact folders the job made or changed, and the worker fetches them into the API's data dir
(and removes there those of the resources it writes, and of what it reads besides, that the
job removed: a knowledge base's retired index version, an image training's used-up training
set), and only then records the job succeeded, so that no user sees a succeeded job whose
files are not there yet. A folder or file whose row the job is about to mark ready lands before
that (JobContext.land): the job asks, its actor publishes it, the worker fetches it and records
the job event `landed`, which the job waits for before it writes the row. A failed job
publishes its log alone; its kind's cleanup runs on both sides. A job waits (queued) while
another job on the cluster may still be changing a folder it uses (that job's kind `writes` its
resource), as a training waits for its dataset's parse to land.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fnmatch
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tuneyard import artifacts
from tuneyard.config import Settings
from tuneyard.db import rows_changed, session_scope
from tuneyard.errors import Unavailable
from tuneyard.jobs import service
from tuneyard.jobs.child import OUTCOME_FILE
from tuneyard.jobs.context import LAND_REQUESTS, LANDED
from tuneyard.jobs.executor import (
    CHILD_MODULE,
    HOST,
    Executor,
    child_environment,
    describe_exit,
    worker_alive,
    worker_host,
)
from tuneyard.jobs.keys import Resource
from tuneyard.jobs.registry import DEFAULT_RESOURCES, get_kind
from tuneyard.jobs.workers import live_workers
from tuneyard.models import (
    BaseModel,
    CompleteModel,
    CustomizedModel,
    Dataset,
    Job,
    JobEvent,
    KnowledgeDocument,
    KnowledgeIndex,
    Training,
    utcnow,
)
from tuneyard.storage import SECRET_KEY_FILE, atomic_file

log = logging.getLogger(__name__)

NAMESPACE = "tuneyard"
PR_SET_PDEATHSIG = 1
# Seconds to wait for the head's port to answer before saying it is unreachable.
CONNECT_SECONDS = 5.0
# With an artifact store: how often a running job's log goes to the store, and comes home.
LOG_SECONDS = 3.0
# How long an ended job waits for its actor's node to be named, if that answer is not in yet.
PLACEMENT_WAIT_SECONDS = 5.0
# With an artifact store: how often a worker withdraws what the store no longer needs (the
# artifacts of deleted rows, the logs of finished jobs), and how old such a thing must be. A
# job's new folder is published before the row that names it is written: the age keeps it.
WITHDRAW_EVERY_SECONDS = 600.0
# With a store: how many transfers (a job's inputs going, its outputs coming home) at once.
TRANSFER_THREADS = 4
WITHDRAW_AFTER_SECONDS = 3600.0
# The rows whose artifact folders the store carries: a folder goes with its row.
ROW_OF_FOLDER: dict[str, Any] = {
    artifacts.RESOURCE_FOLDERS[Resource.DATASET]: Dataset,
    artifacts.RESOURCE_FOLDERS[Resource.BASE_MODEL]: BaseModel,
    artifacts.RESOURCE_FOLDERS[Resource.TRAINING]: Training,
    artifacts.RESOURCE_FOLDERS[Resource.CUSTOMIZED_MODEL]: CustomizedModel,
    artifacts.RESOURCE_FOLDERS[Resource.COMPLETE_MODEL]: CompleteModel,
    "knowledge/*/documents": KnowledgeDocument,  # each a folder of a knowledge base's
    "knowledge/*/indexes": KnowledgeIndex,  # a retired version's row is deleted
}
# Settings a job's process on a node with an artifact store must not have: the store is the
# actor's business, and its options hold credentials.
STORE_SETTINGS = (
    "TUNEYARD_ARTIFACT_STORE",
    "TUNEYARD_ARTIFACT_STORE_OPTIONS",
    "TUNEYARD_NODE_DATA_DIR",
)


def actor_name(job_id: str) -> str:
    return f"tuneyard-job-{job_id}"


def connect(address: str) -> None:
    """Join the cluster at `address` as a driver (once per process)."""
    if ray.is_initialized():
        return
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unavailable(
            f"Cannot reach the Ray cluster at '{address}': {exc}. Start one (`ray start "
            "--head`) or set TUNEYARD_RAY_ADDRESS to its head's address."
        ) from exc


def check_reachable(address: str) -> None:
    """Fail at once on a head that does not answer (ray.init would wait minutes for it)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise Unavailable(
            f"TUNEYARD_RAY_ADDRESS '{address}' is not a Ray address: give 'auto', the head's "
            "'host:port' (6379 by default) or 'ray://host:10001'."
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise Unavailable(
            f"Cannot reach the Ray cluster at '{address}': {exc}. Start one (`ray start "
            "--head`) or set TUNEYARD_RAY_ADDRESS to its head's address."
        ) from exc


def _die_with_parent() -> None:
    """Runs in the job's process before it starts: SIGKILL it when its actor dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class Transfer:
    """What the actor of a job on a node with an artifact store moves: the store (its options
    hold credentials, so it has no repr), the node's data dir, the keys of the inputs (those
    of resources the job's kind writes, and what it `reads` besides, in `changeable`: one the
    job removes is removed from the API's data dir too; the single files in `files`), and the
    data dir's key that decrypts stored API keys (the job may call a model whose key is
    stored), None when the API's data dir has none yet."""

    url: str
    options: dict
    node_dir: str
    inputs: tuple[str, ...]
    changeable: tuple[str, ...] = ()
    secret_key: bytes | None = None
    files: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Transfer({self.url!r}, node_dir={self.node_dir!r}, inputs={self.inputs!r}, "
            f"files={self.files!r})"
        )


class JobRunner:
    """The actor of one job: starts the job's process on its node and reports its end.

    Its methods are coroutines (an async actor): `run` waits on the process while `signal`
    and `placement` answer. The process is started from the actor's event loop thread, which
    lives as long as the actor (PR_SET_PDEATHSIG fires when the starting thread ends).

    `run` answers {"code": the exit code, or None when the process never started; "error":
    why, if something around the process failed; with an artifact store, "outputs": the keys
    of the artifact folders published for the worker to fetch, "outcome": the result a
    succeeded process left}.
    """

    def __init__(
        self,
        job_id: str,
        log_path: str,
        environment: dict[str, str],
        transfer: Transfer | None = None,
    ):
        self.job_id = job_id
        self.log_path = log_path
        self.environment = environment
        self.transfer = transfer
        self.process: subprocess.Popen | None = None
        self.ended: dict[str, Any] | None = None
        self.lock = asyncio.Lock()  # `run` asked again (an adopting worker) waits for the first
        self.before: dict = {}  # with a store: the node's artifact folders before the job
        self.store: artifacts.Store | None = None
        # With a store: the folders the job asked to land (JobContext.land), by token, once
        # published: {"key", and "error" if publishing failed}.
        self.published: dict[str, dict[str, str]] = {}

    def _start(self) -> subprocess.Popen:
        # The worker's settings, not whatever TUNEYARD_ variables the node was started with.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TUNEYARD_")}
        env = {**inherited, **self.environment}
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, self.job_id],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    async def run(self) -> dict[str, Any]:
        """Start the job's process (once) and answer how it ended (see the class)."""
        async with self.lock:
            if self.ended is not None:
                return self.ended
            if self.process is None and self.transfer is not None:
                try:
                    await asyncio.to_thread(self._bring_inputs)
                except Exception as exc:
                    self.ended = {
                        "code": None,
                        "error": "Could not fetch the job's files from the artifact store to "
                        f"node {socket.gethostname()}: {type(exc).__name__}: {exc}",
                    }
                    return self.ended
            if self.process is None:
                self.process = self._start()
            sent_log = time.monotonic()
            while (code := self.process.poll()) is None:
                await asyncio.sleep(0.2)
                if self.transfer is not None:
                    await asyncio.to_thread(self._publish_landings)
                if self.transfer is not None and time.monotonic() - sent_log > LOG_SECONDS:
                    sent_log = time.monotonic()
                    with contextlib.suppress(Exception):  # the next one may get through
                        await asyncio.to_thread(self._send_log)
            ended: dict[str, Any] = {"code": code}
            if self.transfer is not None:
                try:
                    ended.update(await asyncio.to_thread(self._send_outputs, code))
                except Exception as exc:
                    ended["error"] = (
                        "Could not publish the job's files to the artifact store from node "
                        f"{socket.gethostname()}: {type(exc).__name__}: {exc}"
                    )
            self.ended = ended
            return ended

    # -- with an artifact store ------------------------------------------------------------

    def _log_key(self) -> str:
        """The job's log as the store keys it: its path under the node's data dir."""
        assert self.transfer is not None
        return Path(self.log_path).relative_to(self.transfer.node_dir).as_posix()

    def _bring_inputs(self) -> None:
        """Fetch the job's inputs (and its log so far) into the node's data dir, and note
        what its artifact folders hold before the job runs."""
        assert self.transfer is not None
        self.store = artifacts.open_store(self.transfer.url, self.transfer.options)
        node_dir = Path(self.transfer.node_dir)
        node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            artifacts.drop_withdrawn(self.store, node_dir)  # the node's cache of deleted ones
        except Exception:
            log.warning("could not drop withdrawn artifacts from %s", node_dir, exc_info=True)
        for key in self.transfer.inputs:
            artifacts.fetch(self.store, node_dir, key)
        for key in self.transfer.files:
            artifacts.fetch_single(self.store, node_dir, key)
        key_file = node_dir / SECRET_KEY_FILE
        if self.transfer.secret_key is not None and (
            not key_file.is_file() or key_file.read_bytes() != self.transfer.secret_key
        ):
            with atomic_file(key_file) as handle:  # readable by its owner only (mkstemp)
                handle.write(self.transfer.secret_key)
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        artifacts.fetch_file(self.store, node_dir, self._log_key())  # earlier attempts'
        (node_dir / "jobs" / self.job_id / OUTCOME_FILE).unlink(missing_ok=True)
        self.before = artifacts.snapshot(node_dir)

    def _publish_landings(self) -> None:
        """Publish each folder the job asked to land that is not yet published."""
        assert self.transfer is not None
        requests = Path(self.transfer.node_dir) / "jobs" / self.job_id / LAND_REQUESTS
        if self.store is None or not requests.is_dir():
            return
        for request in sorted(requests.glob("*.json")):
            token = request.stem
            if token in self.published:
                continue
            key = json.loads(request.read_text())["key"]
            try:
                artifacts.publish(self.store, Path(self.transfer.node_dir), key)
                self.published[token] = {"key": key}
            except Exception as exc:
                self.published[token] = {
                    "key": key,
                    "error": f"Could not publish {key} to the artifact store from node "
                    f"{socket.gethostname()}: {type(exc).__name__}: {exc}",
                }

    async def landings(self, known: list[str]) -> dict[str, dict[str, str]]:
        """The published landings the worker does not know yet (by token), once there are
        some or after a few seconds (the worker asks again)."""
        deadline = time.monotonic() + LOG_SECONDS
        while time.monotonic() < deadline:
            new = {t: item for t, item in self.published.items() if t not in known}
            if new:
                return new
            await asyncio.sleep(0.2)
        return {}

    def _send_log(self) -> None:
        if self.store is None or self.transfer is None or not Path(self.log_path).is_file():
            return
        artifacts.publish_file(self.store, Path(self.transfer.node_dir), self._log_key())

    def _send_outputs(self, code: int) -> dict[str, Any]:
        """Publish the log; after a success, the artifact folders the job made or changed."""
        assert self.transfer is not None and self.store is not None
        self._send_log()
        node_dir = Path(self.transfer.node_dir)
        outcome_file = node_dir / "jobs" / self.job_id / OUTCOME_FILE
        if code != 0 or not outcome_file.is_file():
            return {"outputs": [], "outcome": None}  # failed, cancelled or handed over
        outputs = artifacts.changed_since(node_dir, self.before)
        for key in outputs:
            artifacts.publish(self.store, node_dir, key)
        removed = [key for key in self.transfer.changeable if not (node_dir / key).exists()]
        for key in removed:
            artifacts.remove_copy(node_dir, key)  # and what this node recorded of it
        return {
            "outputs": outputs,
            "removed": removed,
            "outcome": json.loads(outcome_file.read_text()),
        }

    async def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    async def placement(self) -> str:
        """The node this actor runs on, as shown with the job."""
        node_id = ray.get_runtime_context().get_node_id()
        return f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {node_id[:12]})"


RemoteJobRunner = ray.remote(max_restarts=0, max_task_retries=0)(JobRunner)


@dataclass
class _OnCluster:
    job_id: str
    actor: Any
    done: Any  # the pending `run` call: its result says how the process ended
    grace_seconds: float
    placement: Any = None  # the pending `placement` call, until the node is recorded
    term_sent_at: float | None = None
    attempt: int | None = None  # the attempt it runs: the job is ended only while it runs
    wanted: dict[str, float] | None = None  # the resources it asked for
    beaten_at: float = 0.0  # when the executor last spoke for it while it waited for a node
    landing: Any = None  # with a store: the pending `landings` call
    landed: set[str] = field(default_factory=set)  # the tokens of the landings brought home
    ended: dict[str, Any] | None = None  # how its run ended, while its files come home
    homecoming: Future | None = None  # with a store: the fetch of what a succeeded job made
    log_pulled_at: float = 0.0  # with a store: when its log last came home


@dataclass
class _Sending:
    """A claimed job whose inputs go to the artifact store before its actor starts."""

    attempt: int
    kind: str
    wanted: dict[str, float]
    future: Future  # -> the Transfer its actor gets


def _reads_of(session: Session, job: Job) -> list[Path]:
    """What a job reads besides its uses' folders (its kind's `reads`), as the API's paths."""
    reads = get_kind(job.kind).reads
    return list(reads(session, job)) if reads is not None else []


def in_environment(path: Path) -> bool:
    """Whether a path lies in the Python environment (a model shipped as a package), which the
    cluster's nodes share with the workers, at the same path."""
    return path.resolve().is_relative_to(Path(sys.prefix).resolve())


class ArtifactRefused(Exception):
    """A job that cannot run on a cluster with an artifact store; the message says why."""


def _find_actor(job_id: str) -> Any | None:
    try:
        return ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return None


def _kill(actor: Any) -> None:
    with contextlib.suppress(RayActorError, ValueError):
        ray.kill(actor, no_restart=True)


def _requirements(wanted: dict[str, float]) -> dict[str, float]:
    """Ray's resource names for what a job asks."""
    return {
        "CPU": wanted.get("num_cpus", 0.0),
        "GPU": wanted.get("num_gpus", 0.0),
        "memory": wanted.get("memory", 0.0),
    }


def _describe(requirements: dict[str, float]) -> str:
    parts = []
    if requirements["GPU"]:
        parts.append(f"{requirements['GPU']:g} GPU")
    parts.append(f"{requirements['CPU']:g} CPU")
    if requirements["memory"]:
        parts.append(f"{requirements['memory'] / 2**30:.1f} GiB of memory")
    return ", ".join(parts)


def why_waiting(wanted: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node of the cluster (each given by its total resources) could ever run a job
    asking `wanted`; None when one could."""
    needed = _requirements(wanted)
    if any(all(node.get(name, 0.0) >= amount for name, amount in needed.items()) for node in nodes):
        return None
    for name, amount in needed.items():
        if all(node.get(name, 0.0) < amount for node in nodes):
            has = sum(node.get(name, 0.0) for node in nodes)
            if name == "memory":
                what, has_text = f"{amount / 2**30:.1f} GiB of memory", f"{has / 2**30:.1f} GiB"
            else:
                what, has_text = f"{amount:g} {name}", f"{has:g}"
            return (
                f"Waiting for a node with {what}: the cluster has {has_text}. Add such a node "
                "to the Ray cluster, or cancel the job."
            )
    return (
        f"Waiting for a node with {_describe(needed)} at once: no node of the Ray cluster has "
        "all of them. Add such a node, or cancel the job."
    )


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def withdraw_unneeded(
    store: artifacts.Store, settings: Settings, older_than: float = WITHDRAW_AFTER_SECONDS
) -> list[str]:
    """Withdraw from the artifact store the artifacts whose rows were deleted, the uploaded
    code files the API's data dir no longer has (their method or reward file was deleted), what
    jobs read or landed elsewhere (images, adapters, an image model in the import folder) that
    no queued or running job reads, and the logs of finished (or deleted) jobs, once published
    at least `older_than` seconds ago; the keys withdrawn. Nodes drop their copies at their next
    job (artifacts.drop_withdrawn)."""
    cutoff = time.time() - older_than
    by_folder: dict[str, list[str]] = {}
    orphans = []
    elsewhere = set()
    for key in artifacts.published(store):
        folder = key.rpartition("/")[0]
        pattern = next((p for p in ROW_OF_FOLDER if fnmatch.fnmatchcase(folder, p)), None)
        if pattern is not None:
            by_folder.setdefault(pattern, []).append(key)
        elif artifacts.is_file_key(key):
            if not (settings.data_dir / key).exists():
                orphans.append(key)
        else:
            elsewhere.add(key)
    with session_scope(settings) as session:
        for pattern, keys in by_folder.items():
            table = ROW_OF_FOLDER[pattern]
            ids = [key.rpartition("/")[2] for key in keys]
            kept = set(session.scalars(select(table.id).where(table.id.in_(ids))))
            orphans += [key for key in keys if key.rpartition("/")[2] not in kept]
        if elsewhere:
            orphans += sorted(elsewhere - _read_by_active_jobs(session, settings))
    withdrawn = []
    for key in sorted(orphans):
        if artifacts.published_at(store, key) < cutoff:
            artifacts.withdraw(store, key)
            withdrawn.append(key)
    return withdrawn + _withdraw_finished_logs(store, settings, datetime.fromtimestamp(cutoff, UTC))


def _read_by_active_jobs(session: Session, settings: Settings) -> set[str]:
    """The keys of what queued and running jobs read besides their uses' folders (their
    kinds' `reads`) in the API's data dir."""
    root = settings.data_dir
    keys = set()
    for job in session.scalars(select(Job).where(Job.status.in_(service.ACTIVE))):
        reads = get_kind(job.kind).reads
        for path in reads(session, job) if reads is not None else []:
            if path.is_relative_to(root):
                keys.add(path.relative_to(root).as_posix())
    return keys


def _withdraw_finished_logs(
    store: artifacts.Store, settings: Settings, before: datetime
) -> list[str]:
    """The store's copies of the logs of jobs finished before `before`, or deleted: their
    worker brought each home when its job ended."""
    store.fs.invalidate_cache(store.path("jobs"))
    try:
        entries = store.fs.ls(store.path("jobs"), detail=False)
    except FileNotFoundError:
        return []
    ids = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries]
    with session_scope(settings) as session:
        unfinished = set(
            session.scalars(
                select(Job.id).where(
                    Job.id.in_(ids), or_(Job.finished_at.is_(None), Job.finished_at >= before)
                )
            )
        )
    withdrawn = []
    for job_id in ids:
        if job_id not in unfinished:
            with contextlib.suppress(FileNotFoundError):
                store.fs.rm(store.path(f"jobs/{job_id}"), recursive=True)
            withdrawn.append(f"jobs/{job_id}")
    return withdrawn


class RayExecutor(Executor):
    """The executor's loop (tick, sweep, stop, concurrency), with each job on the cluster."""

    def __init__(self, settings: Settings | None = None, concurrency: int | None = None):
        super().__init__(settings, concurrency)
        # Checked first: a store that cannot be used refuses the worker, saying why.
        self.store = artifacts.store_of(self.settings)
        connect(self.settings.ray_address)
        self.on_cluster: dict[str, _OnCluster] = {}
        self.withdrawn_at = 0.0  # when this worker last withdrew from the store
        # With a store, files move on these threads, so that a model's gigabytes going to or
        # from the store hold up no other job's start, cancel or end.
        self.transfers = (
            ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="tuneyard-store")
            if self.store is not None
            else None
        )
        self.sending: dict[str, _Sending] = {}  # claimed jobs whose inputs go to the store

    def busy(self) -> int:
        return len(self.on_cluster) + len(self.sending)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; the jobs whose inputs were still going to the store go back to the
        queue (their actors never started), and those on the cluster go on there."""
        super().stop(timeout)
        if self.transfers is None:
            return
        self.transfers.shutdown(wait=False, cancel_futures=True)
        for job_id, sending in self.sending.items():
            with contextlib.suppress(Exception), session_scope(self.settings) as session:
                job = session.get(Job, job_id)
                if job is not None:
                    service.requeue(
                        session,
                        job,
                        attempt=sending.attempt,
                        reason="its worker stopped before the job started",
                        worker_id=self.worker_id,
                    )
        self.sending.clear()

    # -- claiming --------------------------------------------------------------------------

    def claim_and_start(self) -> None:
        free = self.concurrency - self.busy()
        if free <= 0:
            return
        with session_scope(self.settings) as session:
            jobs = session.scalars(
                select(Job)
                .where(Job.status == "queued")
                .order_by(Job.priority.desc(), Job.created_at, Job.id)
                .limit(free + 200)
            ).all()
            # With a store, what each reads besides its uses' folders, in this one session.
            queued = [
                (
                    job.id,
                    job.kind,
                    job.params,
                    job.message,
                    list(job.uses or []),
                    _reads_of(session, job) if self.store is not None else [],
                )
                for job in jobs
            ]
        if not queued:
            return
        nodes = alive_nodes()
        available = dict(ray.available_resources())
        for job_id, kind, params, message, uses, reads in queued:
            if free <= 0:
                return
            wanted = get_kind(kind).resources_for(params or {})
            reason = why_waiting(wanted, nodes)
            if self.store is not None:
                reason = self._needs_data_dir(kind, uses, reads) or reason
            needed = _requirements(wanted)
            if reason is None and any(
                available.get(name, 0.0) < amount for name, amount in needed.items() if amount
            ):
                reason = (
                    f"Waiting for {_describe(needed)} to be free on the Ray cluster "
                    "(other jobs hold them)."
                )
            if reason is not None:
                if message != reason:
                    self._say_waiting(job_id, reason)
                continue
            if self.start_job(job_id):
                free -= 1
                for name, amount in needed.items():
                    available[name] = available.get(name, 0.0) - amount

    def _say_waiting(self, job_id: str, reason: str) -> None:
        with session_scope(self.settings) as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.status == "queued").values(message=reason)
            )

    def start_job(self, job_id: str) -> bool:
        """Claim a queued job and start its actor on the cluster; False if another worker
        took it."""
        with session_scope(self.settings) as session:
            queued = session.get(Job, job_id)
            if queued is None or queued.status != "queued":
                return False
            kind = get_kind(queued.kind)
            wanted = kind.resources_for(queued.params or {})
            message = queued.message
            uses = list(queued.uses or [])
            files = kind.files(session, queued) if self.store and kind.files else []
        # A job no node can hold would wait as running for ever: it stays queued instead.
        reason = why_waiting(wanted, alive_nodes())
        if reason is None and self.store is not None:
            reason = self._busy_inputs(job_id, uses)
        if reason is not None:
            if message != reason:
                self._say_waiting(job_id, reason)
            return False
        claimed = self.claim(job_id)
        if claimed is None:
            return False
        attempt = claimed[1]
        with session_scope(self.settings) as session:
            session.execute(update(Job).where(Job.id == job_id).values(resources=wanted, node=None))
        if self.transfers is None:
            return self._launch(job_id, attempt, kind.name, wanted, None)

        def send() -> Transfer:
            with self._beating(job_id, attempt, "Sending its files to the artifact store"):
                return self._send_inputs(job_id, kind.name, uses, files)

        self.sending[job_id] = _Sending(attempt, kind.name, wanted, self.transfers.submit(send))
        return True

    def _launch_sent(self) -> None:
        """Start the actors of the claimed jobs whose inputs reached the store (or fail those
        whose inputs could not be sent)."""
        for job_id, sending in list(self.sending.items()):
            if not sending.future.done():
                continue
            del self.sending[job_id]
            try:
                transfer = sending.future.result()
            except Exception as exc:
                self._fail_unstarted(job_id, sending.attempt, str(exc))
                continue
            self._launch(job_id, sending.attempt, sending.kind, sending.wanted, transfer)

    def _launch(
        self,
        job_id: str,
        attempt: int,
        kind: str,
        wanted: dict[str, float],
        transfer: Transfer | None,
    ) -> bool:
        """Start the actor of a claimed job; False (the job failed, saying why) if the cluster
        refused it."""
        log_path = self.layout.job_log(job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = {
            name: value
            for name, value in child_environment(self.settings).items()
            if name.startswith("TUNEYARD_") or name in ("PYTHONUNBUFFERED", "GOMP_SPINCOUNT")
        }
        if transfer is not None:
            node_dir = Path(transfer.node_dir)
            for name in STORE_SETTINGS:
                environment.pop(name, None)
            environment["TUNEYARD_DATA_DIR"] = str(node_dir)
            environment["TUNEYARD_API_DATA_DIR"] = str(self.layout.root)
            environment["TUNEYARD_DATABASE_URL"] = self.settings.db_url
            log_path = node_dir / self._log_key(job_id)
        stale = _find_actor(job_id)  # an earlier attempt's, left by a stopped worker
        if stale is not None:
            _kill(stale)
        try:
            actor: Any = RemoteJobRunner.options(
                name=actor_name(job_id),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=wanted["num_cpus"],
                num_gpus=wanted["num_gpus"],
                memory=int(wanted["memory"]) or None,
            ).remote(job_id, str(log_path), environment, transfer)
            done = actor.run.remote()
            placement = actor.placement.remote()
        except Exception as exc:  # the cluster refused it: a bad request, or gone
            self._fail_unstarted(
                job_id, attempt, f"Could not start the job on the Ray cluster: {exc}"
            )
            return False
        grace = get_kind(kind).cancel_grace_seconds or self.settings.job_cancel_grace_seconds
        self.on_cluster[job_id] = _OnCluster(
            job_id, actor, done, grace, placement, None, attempt, wanted, time.monotonic()
        )
        log.info("started job %s on the Ray cluster (actor %s)", job_id, actor_name(job_id))
        return True

    def _fail_unstarted(self, job_id: str, attempt: int, error: str) -> None:
        with session_scope(self.settings) as session:
            service.finish(
                session,
                session.get_one(Job, job_id),
                "failed",
                message="Failed",
                error=error,
                attempt=attempt,
            )

    # -- with an artifact store ------------------------------------------------------------

    def _busy_inputs(self, job_id: str, uses: list[str]) -> str | None:
        """Why the job waits: another job on the cluster may still be changing one of the
        folders it uses (its kind writes that resource), and they reach the API's data dir,
        whence this job's copy is published, only when it ends; None when none is."""
        if not uses:
            return None
        with session_scope(self.settings) as session:
            others = session.execute(
                select(Job.id, Job.kind, Job.uses).where(
                    Job.status == "running", Job.resources.is_not(None), Job.id != job_id
                )
            ).all()
        for other_id, other_kind, other_uses in others:
            writes = get_kind(other_kind).writes or ()
            for use in other_uses or []:
                if use in uses and use.partition(":")[0] in writes:
                    return (
                        f"Waiting for job {other_id} ({other_kind}) to finish: it changes "
                        f"{use}, whose files this job needs."
                    )
        return None

    def _needs_data_dir(self, kind: str, uses: list[str], reads: Sequence[Path] = ()) -> str | None:
        """Why the job cannot run on this cluster's nodes, which share no disk with the API
        (its kind does not say what it writes, it uses something no artifact folder carries,
        or it reads a folder the API's data dir does not hold: a model registered where it
        lies); None when it can. Such a job is left in the queue for a local worker."""
        job_kind = get_kind(kind)
        why = (
            f"job kind '{kind}' needs the API's data dir"
            if job_kind.writes is None
            else self._not_carried(
                uses, job_kind.writes, job_kind.files is not None, job_kind.reads is not None
            )
            or self._not_read_here(reads)
        )
        if why is None:
            return None
        return (
            f"Waiting for a local worker (TUNEYARD_EXECUTOR=local, on the API's machine): {why}, "
            "and the Ray cluster's nodes share no disk with the API (TUNEYARD_ARTIFACT_STORE)."
        )

    def _not_carried(
        self, uses: list[str], writes: tuple[str, ...], names_files: bool, reads: bool = False
    ) -> str | None:
        """Why a use of a job whose kind writes `writes` cannot travel through the store, if
        one cannot: it has no artifact folder (nor is it one file its kind names, when
        `names_files`, nor among what it `reads`, when `reads`), or the job only reads it and
        its folder is not in the API's data dir (its files lie where it was registered, which
        nodes lack)."""
        for use in uses:
            if names_files and artifacts.is_file_resource(use):
                continue  # its one file travels among the kind's `files`
            if reads and not artifacts.carried(use):
                continue  # its files are among what the kind reads
            if not artifacts.carried(use):
                return f"this job uses {use}, whose files an artifact store does not carry"
            key = artifacts.key_of(use)
            read_only = use.partition(":")[0] not in writes
            if key is not None and read_only and not (self.layout.root / key).is_dir():
                if self._in_environment(use):
                    continue  # every node holds it, at the same path
                return (
                    f"this job reads {use}, whose folder is not {key} of the API's data dir (a "
                    "model registered where it lies stays there), so an artifact store cannot "
                    "carry it"
                )
        return None

    def _in_environment(self, use: str) -> bool:
        """Whether a use is a base model registered in place inside the Python environment (a
        model shipped as a package, as the demo embedding model is), which the cluster's nodes
        share with the workers."""
        resource, _, model_id = use.partition(":")
        if resource != Resource.BASE_MODEL:
            return False
        with session_scope(self.settings) as session:
            path = session.scalar(select(BaseModel.path).where(BaseModel.id == model_id))
        return path is not None and in_environment(Path(path))

    def _not_read_here(self, reads: Sequence[Path]) -> str | None:
        """Why a path the job's kind reads cannot reach a node: it lies outside the API's data
        dir (a model registered where it lies) and outside the Python environment."""
        for path in reads:
            if not path.is_relative_to(self.layout.root) and not in_environment(path):
                return (
                    f"this job reads {path}, which is not in the API's data dir (a model "
                    "registered where it lies stays there), so an artifact store cannot carry it"
                )
        return None

    def _send_inputs(
        self, job_id: str, kind: str, uses: list[str], files: list[Path] | None = None
    ) -> Transfer:
        """Publish the folders the job uses that the API's data dir holds, the files its kind
        names and what else it reads there (unchanged ones are skipped): what its actor
        fetches. A job that needs the API's data dir is refused."""
        assert self.store is not None
        reads: list[Path] = []
        if get_kind(kind).reads is not None:
            with session_scope(self.settings) as session:
                reads = _reads_of(session, session.get_one(Job, job_id))
        reason = self._needs_data_dir(kind, uses, reads)
        if reason is not None:
            raise ArtifactRefused(reason.replace("Waiting for", "Run it with", 1))
        writes = get_kind(kind).writes or ()
        inputs, changeable = [], []
        for use in uses:
            for key in artifacts.keys_in(self.layout.root, use):
                self._publish(key, artifacts.publish)
                inputs.append(key)
                if use.partition(":")[0] in writes:
                    changeable.append(key)
        for path in reads:
            # What lies in the Python environment is read at the same path on the node.
            if path.is_relative_to(self.layout.root) and path.exists():
                key = path.relative_to(self.layout.root).as_posix()
                self._publish(key, artifacts.publish)
                inputs.append(key)
                changeable.append(key)  # one the job uses up goes at home too
        singles = []
        for path in files or []:
            try:
                key = artifacts.file_key(self.layout.root, path)
            except artifacts.ArtifactError as exc:
                raise ArtifactRefused(str(exc)) from None
            self._publish(key, artifacts.publish_single)
            singles.append(key)
        log.info(
            "job %s: inputs in the artifact store: %s",
            job_id,
            ", ".join(inputs + singles) or "none",
        )
        key_file = self.layout.secret_key_file
        return Transfer(
            self.settings.artifact_store,
            self.settings.store_options,
            str(self.settings.node_data_path),
            tuple(inputs),
            tuple(changeable),
            key_file.read_bytes() if key_file.is_file() else None,
            tuple(singles),
        )

    def _publish(self, key: str, publish: Any) -> None:
        """Publish `key` of the API's data dir with `publish`, saying which failed and why."""
        try:
            publish(self.store, self.layout.root, key)
        except Exception as exc:
            raise ArtifactRefused(
                f"Could not publish {key} to the artifact store: {type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.contextmanager
    def _beating(self, job_id: str, attempt: int | None, message: str) -> Iterator[None]:
        """Keep a claimed job's heartbeat fresh while this worker moves its files (a model may
        take minutes), so no worker takes it for dead meanwhile."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                with contextlib.suppress(Exception), session_scope(self.settings) as session:
                    session.execute(
                        update(Job)
                        .where(
                            Job.id == job_id,
                            Job.status == "running",
                            Job.worker_id == self.worker_id,
                            Job.attempt == attempt,
                        )
                        .values(heartbeat_at=utcnow(), message=message)
                    )
                if stop.wait(self.settings.job_heartbeat_seconds):
                    return

        beating = threading.Thread(target=beat, name=f"tuneyard-beat-{job_id}", daemon=True)
        beating.start()
        try:
            yield
        finally:
            stop.set()
            beating.join()

    def _log_key(self, job_id: str) -> str:
        """A job's log as the store keys it: its path under a data dir."""
        return self.layout.job_log(job_id).relative_to(self.layout.root).as_posix()

    def _pull_log(self, entry: _OnCluster, every: float = LOG_SECONDS) -> None:
        """Bring the job's log from the store to the API's data dir (at most every `every`
        seconds), so the job page shows it."""
        if self.store is None:
            return
        moment = time.monotonic()
        if moment - entry.log_pulled_at < every:
            return
        entry.log_pulled_at = moment
        try:
            artifacts.fetch_file(self.store, self.layout.root, self._log_key(entry.job_id))
        except Exception:
            log.warning("could not bring the log of job %s from the artifact store", entry.job_id)

    def _bring_landings(self, entry: _OnCluster) -> None:
        """Fetch the folders the job published to land (JobContext.land) into the API's data
        dir, and record for each the job event `landed` (with the error, if it failed) that
        the job waits for before it writes the rows saying they are ready."""
        assert self.store is not None
        if entry.landing is None:
            entry.landing = entry.actor.landings.remote(sorted(entry.landed))
            return
        ready, _ = ray.wait([entry.landing], timeout=0)
        if not ready:
            return
        try:
            published = ray.get(entry.landing)
        except RayActorError:
            published = {}  # the actor is gone: how the run ended says why
        entry.landing = None
        assert self.transfers is not None
        for token, item in published.items():
            entry.landed.add(token)
            self.transfers.submit(self._bring_landing, entry, token, item)

    def _bring_landing(self, entry: _OnCluster, token: str, item: dict[str, str]) -> None:
        """Fetch one published landing into the API's data dir and record the job event
        `landed` for it, with the error if it failed (on a transfer thread)."""
        assert self.store is not None
        error = item.get("error")
        if error is None:
            try:
                with self._beating(entry.job_id, entry.attempt, "Bringing its files home"):
                    artifacts.fetch(self.store, self.layout.root, item["key"])
            except Exception as exc:
                error = (
                    f"Could not bring {item['key']} from the artifact store into the API's "
                    f"data dir: {type(exc).__name__}: {exc}"
                )
        try:
            with session_scope(self.settings) as session:
                session.add(
                    JobEvent(
                        job_id=entry.job_id,
                        kind=LANDED,
                        data={"token": token, "key": item["key"], "error": error},
                    )
                )
        except Exception:
            log.exception("could not record that %s of job %s landed", item["key"], entry.job_id)

    def _land(self, entry: _OnCluster, ended: dict[str, Any]) -> str | None:
        """Fetch what a succeeded job published into the API's data dir; the error, if any."""
        assert self.store is not None
        try:
            with self._beating(entry.job_id, entry.attempt, "Bringing its files home"):
                for key in ended.get("outputs") or []:
                    artifacts.fetch(self.store, self.layout.root, key)
                for key in ended.get("removed") or []:
                    artifacts.remove_copy(self.layout.root, key)
        except Exception as exc:
            return (
                "The job succeeded on its node, but its files could not be brought from the "
                f"artifact store: {type(exc).__name__}: {exc}. Start the job again."
            )
        return None

    # -- running ---------------------------------------------------------------------------

    def _record_placement(self, entry: _OnCluster, timeout: float = 0.0) -> None:
        """Record the node the job's actor runs on, once its `placement` call answers (waiting
        up to `timeout` seconds). A short job may have ended by then: its node is still kept."""
        if entry.placement is None:
            return
        ready, _ = ray.wait([entry.placement], timeout=timeout)
        if not ready:
            return
        try:
            node = ray.get(entry.placement)
        except RayActorError:
            node = None
        entry.placement = None
        if node is not None:
            with session_scope(self.settings) as session:
                session.execute(
                    update(Job)
                    .where(Job.id == entry.job_id, Job.attempt == entry.attempt)
                    .values(node=node)
                )

    def _speak_for_unplaced(self, entry: _OnCluster) -> None:
        """A job claimed but not yet placed (Ray could not give its actor the resources: the
        cluster's other users took them since the claim) has no process to report for it: the
        executor keeps its heartbeat fresh, so no worker takes it for dead, and says why it
        waits. With an artifact store, so it does while the actor fetches the job's files."""
        moment = time.monotonic()
        if moment - entry.beaten_at < self.settings.job_heartbeat_seconds:
            return
        entry.beaten_at = moment
        needed = _describe(_requirements(entry.wanted or DEFAULT_RESOURCES))
        if entry.placement is None:
            message = "Bringing its files to its node from the artifact store"
        else:
            message = (
                f"Waiting for the Ray cluster to place it ({needed}): other users of the "
                "cluster hold them"
            )
        with session_scope(self.settings) as session:
            session.execute(
                update(Job)
                .where(
                    Job.id == entry.job_id,
                    Job.status == "running",
                    Job.worker_id == self.worker_id,
                    Job.attempt == entry.attempt,
                    Job.pid.is_(None),  # its process has not started
                )
                .values(heartbeat_at=utcnow(), message=message)
            )

    def reap(self) -> None:
        self._launch_sent()
        for job_id, entry in list(self.on_cluster.items()):
            if entry.homecoming is not None:  # ended on its node; its files are coming home
                if entry.homecoming.done():
                    del self.on_cluster[job_id]
                    self._conclude(entry, entry.ended or {}, None, entry.homecoming.result())
                continue
            self._record_placement(entry)
            if entry.placement is not None or self.store is not None:
                self._speak_for_unplaced(entry)
            ready, _ = ray.wait([entry.done], timeout=0)
            if not ready:
                if entry.placement is None:
                    self._pull_log(entry)
                    if self.store is not None:
                        self._bring_landings(entry)
                continue
            ended: dict[str, Any] = {}
            died: str | None = None
            try:
                ended = ray.get(entry.done)
                if isinstance(ended, int):  # an actor of an earlier version: the exit code
                    ended = {"code": ended}
            except ActorUnavailableError:
                entry.done = entry.actor.run.remote()  # a passing fault: ask again
                continue
            except RayActorError as exc:
                died = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # Its process ran, so its actor was placed: the answer is on its way.
            self._record_placement(entry, timeout=PLACEMENT_WAIT_SECONDS)
            _kill(entry.actor)
            if self.transfers is not None:
                self._pull_log(entry, every=0.0)
                if ended.get("outcome") is not None:  # succeeded: its files come home first
                    entry.ended = ended
                    entry.homecoming = self.transfers.submit(self._land, entry, ended)
                    continue
            del self.on_cluster[job_id]
            self._conclude(entry, ended, died, None)

    def _conclude(
        self, entry: _OnCluster, ended: dict[str, Any], died: str | None, landing_error: str | None
    ) -> None:
        """Record how a job's run on the cluster ended: `ended` is its actor's answer (the exit
        code, the outcome of a job that succeeded, an error), `died` why its actor was lost,
        `landing_error` why its files could not come home."""
        job_id = entry.job_id
        code: int | None = ended.get("code")
        outcome = ended.get("outcome")
        with session_scope(self.settings) as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            if job.status == "queued" or (
                job.status == "running" and job.worker_id != self.worker_id
            ):
                return  # put back in the queue (to resume), or claimed again since
            if job.status not in service.ACTIVE:
                # Failed elsewhere while it ran: clean up now. With a store, the job
                # cleaned up its node; this side (the API's data dir) too.
                if job.pid is not None or self.store is not None:
                    service.clean_up(session, job)
            elif outcome is not None and landing_error is None:
                service.finish(
                    session,
                    job,
                    "succeeded",
                    message=outcome["message"],
                    result=outcome["result"],
                    attempt=entry.attempt,
                )
            elif landing_error is not None or ended.get("error"):
                service.finish(
                    session,
                    job,
                    "failed",
                    message="Failed",
                    error=landing_error or ended["error"],
                    attempt=entry.attempt,
                )
            elif job.cancel_requested:
                service.finish(
                    session, job, "cancelled", message="Cancelled", attempt=entry.attempt
                )
            elif code is not None:
                service.finish(
                    session,
                    job,
                    "failed",
                    message="Failed",
                    error=describe_exit(code),
                    attempt=entry.attempt,
                )
            else:
                service.finish(
                    session,
                    job,
                    "failed",
                    message="Failed",
                    error=f"The Ray actor running this job died (its node was lost, or it "
                    f"was killed) before the job finished: {died}. Start the job again.",
                    attempt=entry.attempt,
                )

    def forward_cancels(self) -> None:
        if not self.on_cluster:
            return
        with session_scope(self.settings) as session:
            wanted = service.cancels_asked(session, self.on_cluster)
        moment = time.monotonic()
        for job_id in wanted:
            entry = self.on_cluster[job_id]
            if entry.homecoming is not None:
                continue  # it ended: its files are coming home
            if entry.placement is not None:
                _kill(entry.actor)  # never placed: no process to stop, the actor waits for a node
            elif entry.term_sent_at is None:
                entry.actor.signal.remote(signal.SIGTERM)
                entry.term_sent_at = moment
            elif moment - entry.term_sent_at > entry.grace_seconds:
                entry.actor.signal.remote(signal.SIGKILL)

    # -- jobs other workers left -----------------------------------------------------------

    def sweep(self) -> None:
        """Adopt the cluster's jobs of stopped workers, fail those whose actor is gone or that
        went silent, and remove what failed jobs left once their actor is gone; now and then,
        withdraw from the artifact store what it no longer needs."""
        self._sweep_jobs()
        if self.store is not None and time.monotonic() - self.withdrawn_at > WITHDRAW_EVERY_SECONDS:
            self.withdrawn_at = time.monotonic()
            try:
                withdraw_unneeded(self.store, self.settings)
            except Exception:
                log.warning("could not withdraw unneeded artifacts from the store", exc_info=True)

    def _sweep_jobs(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.settings.job_stale_after_seconds)
        with session_scope(self.settings) as session:
            jobs = session.scalars(
                select(Job).where(
                    Job.worker_id != self.worker_id,
                    Job.resources.is_not(None),
                    or_(
                        Job.status == "running",
                        (Job.status.in_(service.FINISHED)) & Job.pid.is_not(None),
                    ),
                )
            ).all()
            live = {worker.id for worker in live_workers(session, self.settings)}
            session.expunge_all()
        for job in jobs:
            worker_id = job.worker_id or ""
            # A worker of this machine is checked by its process; another's by its heartbeat.
            here = worker_host(worker_id) == HOST
            alive = worker_alive(worker_id) if here else worker_id in live
            if job.status != "running":
                actor = _find_actor(job.id)
                if actor is None:
                    self._clean_up(job)
                else:
                    _kill(actor)  # the job was failed while its process lived: stop it
            elif job.heartbeat_at is not None and job.heartbeat_at < cutoff:
                self._fail_silent(job, cutoff)
            elif alive:
                continue  # its worker reaps it
            else:
                actor = _find_actor(job.id)
                if actor is None:
                    self._fail_orphan(job)
                else:
                    self._adopt_actor(job, actor)

    def _adopt_actor(self, job: Job, actor: Any) -> None:
        with session_scope(self.settings) as session:
            taken = rows_changed(
                session,
                update(Job)
                .where(Job.id == job.id, Job.status == "running", Job.worker_id == job.worker_id)
                .values(worker_id=self.worker_id),
            )
        if not taken:
            return
        grace = get_kind(job.kind).cancel_grace_seconds or self.settings.job_cancel_grace_seconds
        self.on_cluster[job.id] = _OnCluster(
            job.id, actor, actor.run.remote(), grace, attempt=job.attempt
        )
        log.warning(
            "adopted job %s on the Ray cluster from stopped worker %s", job.id, job.worker_id
        )
