"""Helpers that several test modules share: API shortcuts, records to train on, waiting on
jobs. Fixtures live in conftest.py; the console's browser helpers in console_harness.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from tests.openai_double import last_user
from tuneyard.auth.service import create_project, create_user, get_project_by_code, local_principal
from tuneyard.cards import file_digest, folder_size
from tuneyard.db import session_scope
from tuneyard.errors import NotFound
from tuneyard.models import CustomizedModel, Job, new_id, utcnow
from tuneyard.storage import Layout

PG_URL = os.environ.get("TUNEYARD_TEST_DATABASE_URL")
DATASETS = "/api/v1/datasets"
CUSTOMIZED_MODELS = "/api/v1/customized-models"
COMPLETE_MODELS = "/api/v1/complete-models"
ENVIRONMENTS = "/api/v1/deploy-environments"
LIVE_MODELS = "/api/v1/live-models"


# -- accounts ----------------------------------------------------------------------------------


def login(client: TestClient, password: str, username: str = "admin", project: str = "1001"):
    response = client.post(
        "/api/v1/auth/login",
        json={"project_code": project, "username": username, "password": password},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def make_project_user(code: str, username: str, password: str):
    """A new project whose first admin is `username`."""
    with session_scope() as session:
        create_project(session, code, username, password)


def user_in(client, project_code: str, username: str, role: str = "member") -> dict:
    """Log in as a new user of the project (created if missing)."""
    with session_scope() as session:
        try:
            get_project_by_code(session, project_code)
        except NotFound:
            create_project(session, project_code, "admin", "password-123")
        create_user(session, local_principal(session, project_code), username, "password-123", role)
    return login(client, "password-123", username, project_code)


# -- jobs and ports ----------------------------------------------------------------------------


def wait_for_job(
    job_id: str, timeout: float = 120.0, statuses=("succeeded", "failed", "cancelled")
):
    """Poll the database until the job reaches one of `statuses`; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job.status in statuses:
                return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout} s: {job.status}")


def stop_executor(executor) -> None:
    """Stop the executor and kill the job processes it still runs (started or adopted)."""
    import psutil

    executor.stop()
    for entry in list(executor.running.values()):
        with contextlib.suppress(psutil.NoSuchProcess):
            entry.process.kill()
            entry.process.wait()


def closed_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- datasets ----------------------------------------------------------------------------------


QA = [
    {"prompt": "What is 2+2?", "completion": "4"},
    {"prompt": "Capital of France?", "completion": "Paris"},
    {"prompt": "Colour of the sky?", "completion": "Blue"},
]
CHAT_RECORD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
}
PAIR_RECORD = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}


def jsonl(*records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def parquet(records: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    return buffer.getvalue()


def post_dataset(client, auth, name, filename, content: bytes, mapping=None, description=None):
    """Send a dataset file; the response (its parse job is not waited for)."""
    data = {"name": name}
    if description is not None:
        data["description"] = description
    if mapping is not None:
        data["column_mapping"] = mapping if isinstance(mapping, str) else json.dumps(mapping)
    return client.post(DATASETS, headers=auth, data=data, files={"file": (filename, content)})


def add_and_parse(client, auth, name, filename, content: bytes, **kwargs) -> tuple[dict, Job]:
    """Upload, wait for the parse job (a worker must run), return the dataset and the job."""
    response = post_dataset(client, auth, name, filename, content, **kwargs)
    assert response.status_code == 202, response.text
    accepted = response.json()
    job = wait_for_job(accepted["job_id"])
    dataset = client.get(f"{DATASETS}/{accepted['id']}", headers=auth).json()
    return dataset, job


def stored_files(dataset_id: str) -> list[str]:
    folder = Layout().dataset_dir(dataset_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- training ----------------------------------------------------------------------------------


CHAT = [
    {
        "messages": [
            {"role": "user", "content": f"What is the code word number {i}?"},
            {"role": "assistant", "content": "The code word is pineapple."},
        ]
    }
    for i in range(16)
]
PREFERENCE = [
    {"prompt": f"Say the code word {i}.", "chosen": "pineapple", "rejected": "banana split"}
    for i in range(8)
]
FAST = {"max_steps": 6, "batch_size": 2, "grad_accum_steps": 1, "learning_rate": 2e-2}


def upload(client, auth, name: str, records: list[dict]) -> str:
    """`records` as a JSON Lines dataset, uploaded and parsed (a worker must run); its id."""
    body = "\n".join(json.dumps(r) for r in records).encode()
    response = client.post(
        DATASETS,
        data={"name": name},
        files={"file": (f"{name}.jsonl", body, "application/json")},
        headers=auth,
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(response.json()["job_id"])
    assert job.status == "succeeded", job.error
    return response.json()["id"]


def start(client, auth, base, dataset, method="sft", name="t1", **params):
    return client.post(
        "/api/v1/trainings",
        json={
            "name": name,
            "method": method,
            "base_model_id": base,
            "dataset_id": dataset,
            "params": params,
        },
        headers=auth,
    )


def finish(client, auth, response, timeout=300):
    assert response.status_code == 202, response.text
    job = wait_for_job(response.json()["job_id"], timeout=timeout)
    training = client.get(f"/api/v1/trainings/{response.json()['id']}", headers=auth).json()
    assert job.status == "succeeded", (job.error, training)
    return training


def lora_b_norm(folder: Path) -> float:
    from safetensors.torch import load_file

    tensors = load_file(folder / "adapter_model.safetensors")
    return sum(float(t.abs().sum()) for k, t in tensors.items() if "lora_B" in k)


LORA_SCRIPT = '''
"""LoRA on the q and v projections, trained with a plain PyTorch loop."""
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

DESCRIPTION = "LoRA with a hand-written loop."
FORMATS = ["chat", "prompt_completion"]
RESULT = "adapter"
PARAMETERS = {
    "rank": {"default": 4, "description": "LoRA rank r."},
    "greeting": {"default": "hello", "description": "Written to the log first."},
}


def texts(report, tokenizer, dataset_format):
    for record in report.records():
        if dataset_format == "chat":
            yield tokenizer.apply_chat_template(record["messages"], tokenize=False)
        else:
            yield record["prompt"] + " " + record["completion"]


def train(config, output_dir, report):
    params = config["params"]
    report.log.info("greeting: %s", params["greeting"])
    torch.manual_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["base_model_path"])
    model = AutoModelForCausalLM.from_pretrained(config["base_model_path"], dtype=torch.float32)
    lora = LoraConfig(
        r=params["rank"],
        lora_alpha=2 * params["rank"],
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    batches = [
        tokenizer(text, return_tensors="pt")
        for text in texts(report, tokenizer, config["dataset_format"])
    ]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params["learning_rate"])
    steps = params["max_steps"]
    for step in range(1, steps + 1):
        if report.should_stop():
            return
        batch = batches[(step - 1) % len(batches)]
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        report.metrics(step, loss=loss.item(), learning_rate=params["learning_rate"])
        report.progress(100 * step / steps, f"step {step} of {steps}")
    model.save_pretrained(output_dir)
'''


# -- customized and complete models ------------------------------------------------------------


def build_adapter(out: Path, tiny_model_dir: Path) -> Path:
    """A LoRA on every linear layer of the tiny model, B nonzero, with the tokenizer files."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    peft_model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(tiny_model_dir / name, out / name)
    return out


def make_customized(base_id: str, adapter_dir: Path, train_name: str = "made") -> dict:
    """A customized model from a prepared adapter folder, as a training would record it."""
    model_id = new_id()
    folder = Layout().customized_model_dir(model_id)
    shutil.copytree(adapter_dir, folder)
    name = f"tiny_{train_name}_{utcnow():%Y%m%d}_{model_id[:4]}"
    with session_scope() as session:
        row = CustomizedModel(
            id=model_id,
            project_id=get_project_by_code(session, "1001").id,
            name=name,
            base_model_id=base_id,
            train_name=train_name,
            path=str(folder),
            size_bytes=folder_size(folder),
            model_card={
                "name": name,
                "kind": "customized",
                "lineage": {
                    "base_model": "tiny",
                    "base_model_id": base_id,
                    "adapter_digest": file_digest(folder / "adapter_model.safetensors"),
                },
            },
        )
        session.add(row)
    return {"id": model_id, "name": name, "path": str(folder)}


def save(client, auth, customized_id: str, **body):
    return client.post(f"{CUSTOMIZED_MODELS}/{customized_id}/save", json=body or None, headers=auth)


def saved(client, auth, customized_id: str, **body) -> dict:
    """Save and wait for the job (a worker must run); the complete model it made."""
    response = save(client, auth, customized_id, **body)
    assert response.status_code == 202, response.text
    job = wait_for_job(response.json()["job_id"])
    assert job.status == "succeeded", job.error
    model = client.get(f"{COMPLETE_MODELS}/{response.json()['id']}", headers=auth).json()
    assert model["status"] == "ready", model
    return model


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# -- deploy ------------------------------------------------------------------------------------


def add_env(client, auth, **body):
    response = client.post(ENVIRONMENTS, json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


def deploy(client, auth, kind: str, model_id: str, env_id: str, **body) -> dict:
    response = client.post(
        f"/api/v1/{kind}-models/{model_id}/deploy",
        json={"environment_id": env_id, **body},
        headers=auth,
    )
    assert response.status_code == 202, response.text
    return response.json()


def deployed(client, auth, kind: str, model_id: str, env_id: str, **body) -> dict:
    accepted = deploy(client, auth, kind, model_id, env_id, **body)
    job = wait_for_job(accepted["job_id"], timeout=120)
    assert job.status == "succeeded", job.error
    live = client.get(f"{LIVE_MODELS}/{accepted['id']}", headers=auth).json()
    assert live["status"] == "live", live
    return live


def assert_fidelity_queued(client, auth, live: dict) -> dict:
    """The deploy queued a fidelity check of the live model as a job of its own."""
    check = live["model_card"]["fidelity_check"]
    job = client.get(f"/api/v1/jobs/{check['job_id']}", headers=auth).json()
    assert job["kind"] == "assessment.run" and job["id"] != live["job_id"]
    assessment = client.get(f"/api/v1/assessments/{check['assessment_id']}", headers=auth).json()
    assert assessment["config"]["kind"] == "fidelity"
    assert assessment["config"]["live_model_id"] == live["id"]
    return check


# -- the CLI -----------------------------------------------------------------------------------


def flat(text: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(text.split())


def pg_admin_engine():
    """An autocommit engine on the test PostgreSQL server, to create and drop databases."""
    from sqlalchemy import create_engine

    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


# -- assessments: sums to answer, and a judge double's scripted verdicts ------------------------

SUMS = [
    {"prompt": f"What is {i} plus {i}?", "completion": str(2 * i), "topic": f"t{i}"}
    for i in range(1, 9)
]
SUM_QUESTION = re.compile(r"What is (\d+) plus")


def number(text: str) -> int:
    """The number a sum's question is about."""
    return int(SUM_QUESTION.search(text).group(1))


def scripted_pairwise(messages) -> str:
    """Verdicts by question: 1 A wins, 2 B wins, 3 always the first position (a flip),
    4 unreadable, 5 A wins (JSON after other JSON, then MT-Bench's pattern), 6 a tie, 7 and
    8 A wins."""
    text = last_user(messages)
    n = number(text)
    a_first = re.search(r"\[A\] alpha", text) is not None
    candidate_a, candidate_b = ("A", "B") if a_first else ("B", "A")
    if n == 2:
        return json.dumps({"winner": candidate_b, "reason": "B is right"})
    if n == 3:
        return '{"winner": "A", "reason": "the first one"}'
    if n == 4:
        return "Both answers have merit; I prefer the first one."
    if n == 5:
        if a_first:
            return 'Draft: {"winner": "B"}\nFinal:\n```json\n{"winner": "A", "reason": "x"}\n```'
        return f"My verdict: [[{candidate_a}]]"
    if n == 6:
        return '{"winner": "tie", "reason": "same"}'
    return json.dumps({"winner": candidate_a, "reason": "A is right"})


def live_model_row(project_code: str = "1001", quantization: str = "q4_K_M") -> str:
    """A live model, as a deploy records it, on an environment nothing serves; its id."""
    from tuneyard.models import DeployEnvironment, LiveModel

    with session_scope() as session:
        project_id = get_project_by_code(session, project_code).id
        environment = DeployEnvironment(
            project_id=project_id, name=f"env-{new_id()[:8]}", kind="openai", url="http://x"
        )
        session.add(environment)
        session.flush()
        live = LiveModel(
            project_id=project_id,
            name=f"tiny_s_abcd_d_{new_id()[:4]}_{quantization}",
            tag="tiny",
            environment_id=environment.id,
            source_kind="complete",
            source_id=new_id(),
            source_name="tiny_s_abcd",
            quantization=quantization,
            status="live",
        )
        session.add(live)
        session.flush()
        return live.id


def finished_fidelity_check(
    live_ids: dict[str, list[bool]], project_code: str = "1001", status: str = "succeeded"
) -> str:
    """A fidelity check as its run leaves it: each live model's answers identical to the
    source's or not, one a prompt, and the summary the run computes from them; its id."""
    from types import SimpleNamespace

    from tuneyard.assessment.summary import summarize
    from tuneyard.models import Assessment, LiveModel

    with session_scope() as session:
        stages = [session.get_one(LiveModel, live_id) for live_id in live_ids]
        config = {
            "kind": "fidelity",
            "sample": {"size": 4, "seed": None},
            "candidates": [{"model": f"customized:{new_id()}", "name": "tiny_made"}]
            + [
                {
                    "model": f"live:{live.id}",
                    "name": live.name,
                    "stage": f"live {live.quantization}",
                }
                for live in stages
            ],
            "judge": None,
            "reference_column": None,
            "metrics": [],
            "source": {"customized_id": new_id(), "name": "tiny_made"},
        }
        prompts = max(len(same) for same in live_ids.values())
        rows = [
            SimpleNamespace(
                status="done",
                answers=[{"text": "a", "error": None}] * (len(stages) + 1),
                metrics=[{}] * (len(stages) + 1),
                verdict=None,
                judgments=[],
                agreement={
                    "stages": [None]
                    + [
                        {
                            "identical": same[index],
                            "token_overlap": 1.0 if same[index] else 0.5,
                            "token_agreement": 1.0 if same[index] else 0.5,
                        }
                        for same in live_ids.values()
                    ]
                },
            )
            for index in range(prompts)
        ]
        check = Assessment(
            project_id=get_project_by_code(session, project_code).id,
            name=f"fidelity {new_id()[:8]}",
            dataset_name="qa",
            config=config,
            status=status,
            row_count=prompts,
            summary=summarize(config, rows),
            finished_at=utcnow(),
        )
        session.add(check)
        session.flush()
        return check.id
