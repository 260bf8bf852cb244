"""Fixtures of the tests that run jobs on a real Ray cluster: a local head started once for the
session, and a test's settings and executor pointing at it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import ray

from tests.helpers import closed_port
from tuneyard.config import reset_settings
from tuneyard.jobs.engines import new_executor
from tuneyard.jobs.ray_executor import NAMESPACE

ROOT = str(Path(__file__).resolve().parents[2])


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the head started in `temp_dir` (their command lines name it), and
    theirs."""
    found: list[psutil.Process] = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and any(
            temp_dir in part for part in process.info["cmdline"] or []
        ):
            found.append(process)
            found.extend(process.children(recursive=True))
    return found


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray head on free ports (6379 is Redis here), 2 CPUs and no GPU; stopped at the end,
    every process of it ended by its pid."""
    temp_dir = tempfile.mkdtemp(prefix="tyray-", dir="/tmp")
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNEYARD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    # Without it, a token in ~/.ray (left by any local ray.init on this machine) turns token
    # authentication on for the head, and this process is then refused.
    env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"] = "disabled"
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--port=0",  # a free port: other clusters may run on this machine
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={closed_port()}",
        f"--dashboard-agent-listen-port={closed_port()}",
        f"--temp-dir={temp_dir}",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield (Path(temp_dir) / "ray_current_cluster").read_text().strip()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        processes = _cluster_processes(temp_dir)
        for process in processes:
            process.kill()
        psutil.wait_procs(processes, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        del os.environ["RAY_AUTH_MODE"]


@pytest.fixture
def on_ray(ray_cluster, data_dir, monkeypatch):
    """This test's settings point at the cluster; no job actor outlives the test."""
    monkeypatch.setenv("TUNEYARD_EXECUTOR", "ray")
    monkeypatch.setenv("TUNEYARD_RAY_ADDRESS", ray_cluster)
    reset_settings()
    yield ray_cluster
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == NAMESPACE:
            ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE))


@pytest.fixture
def ray_worker(on_ray, admin_password):
    executor = new_executor()
    executor.start()
    yield executor
    executor.stop()
