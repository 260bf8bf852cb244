"""Custom training methods: uploading scripts, and running them as trainings on the tiny llama."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import (
    CHAT,
    LORA_SCRIPT,
    PREFERENCE,
    login,
    lora_b_norm,
    start,
    upload,
    wait_for_job,
)
from tuneyard.cli import app as cli_app

FULL_SCRIPT = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DESCRIPTION = "One SGD step on every weight."
FORMATS = ["chat"]
RESULT = "full"
PARAMETERS = {"scale": {"default": 1.0, "description": "Multiplies the loss."}}


def train(config, output_dir, report):
    tokenizer = AutoTokenizer.from_pretrained(config["base_model_path"])
    model = AutoModelForCausalLM.from_pretrained(config["base_model_path"], dtype=torch.float32)
    record = next(report.records())
    text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
    batch = tokenizer(text, return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss * config["params"]["scale"]
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=config["params"]["learning_rate"]).step()
    report.metrics(1, loss=loss.item())
    model.save_pretrained(output_dir)
"""

RAISING_SCRIPT = """
DESCRIPTION = "Writes a little, then fails."
FORMATS = ["chat"]
RESULT = "adapter"
PARAMETERS = {}


def train(config, output_dir, report):
    (output_dir / "adapter_model.safetensors").write_bytes(b"half")
    raise RuntimeError("the records are upside down")
"""

LOOP_SCRIPT = """
import time

DESCRIPTION = "Reports steps until it is told to stop."
FORMATS = ["chat"]
RESULT = "adapter"
PARAMETERS = {}


def train(config, output_dir, report):
    step = 0
    while not report.should_stop():
        step += 1
        report.metrics(step, loss=1.0 / step)
        report.progress(min(step, 90), f"step {step}")
        time.sleep(0.05)
"""

EMPTY_SCRIPT = """
DESCRIPTION = "Returns without writing anything."
FORMATS = ["chat"]
RESULT = "adapter"
PARAMETERS = {}


def train(config, output_dir, report):
    return None
"""

FOREIGN_ADAPTER_SCRIPT = """
import torch
from peft import LoraConfig
from safetensors.torch import save_file

DESCRIPTION = "Writes an adapter made for a GPT-2, not for the base."
FORMATS = ["chat"]
RESULT = "adapter"
PARAMETERS = {}


def train(config, output_dir, report):
    LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM").save_pretrained(output_dir)
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"
    save_file({key: torch.zeros(2, 64)}, str(output_dir / "adapter_model.safetensors"))
"""

SPY_SCRIPT = """
import json
import os
import sys
from pathlib import Path

DESCRIPTION = "Writes down what its process sees, reports a step, then fails."
FORMATS = ["chat"]
RESULT = "adapter"
PARAMETERS = {"seen": {"default": "", "description": "The file to write it to."}}


def train(config, output_dir, report):
    seen = {
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
        "home": os.path.expanduser("~"),
        "pid": os.getpid(),
        "parent": Path(f"/proc/{os.getppid()}/cmdline").read_text().rstrip("\\0").split("\\0"),
        "modules": sorted(name for name in sys.modules if name.startswith("tuneyard")),
    }
    Path(config["params"]["seen"]).write_text(json.dumps(seen))
    report.metrics(1, loss=0.5)
    raise RuntimeError("done looking")
"""

LINK_SCRIPT = """
import os

DESCRIPTION = "Writes an adapter whose weights are a link to a file elsewhere."
FORMATS = ["chat"]
RESULT = "adapter"
PARAMETERS = {"target": {"default": "", "description": "What the link leads to."}}


def train(config, output_dir, report):
    (output_dir / "adapter_config.json").write_text("{}")
    os.symlink(config["params"]["target"], output_dir / "adapter_model.safetensors")
"""

QUICK = {"max_steps": 4, "learning_rate": 1e-2}
NOT_OPERATOR = (
    "Uploading code needs an admin who is also the server's operator: uploaded code runs with "
    "the server's rights. Ask the operator to upload it, or to make you an operator with "
    "`tuneyard users operator NAME`."
)
UPLOADS_OFF = (
    "Uploading code is turned off on this server: uploaded training methods and reward files "
    "run as code on the machine that trains. The server's operator can turn it on with "
    "TUNEYARD_ALLOW_CODE_UPLOADS=true."
)

pytestmark = pytest.mark.usefixtures("code_uploads")


def add_method(client, auth, name: str, source: str):
    return client.post(
        "/api/v1/training-methods",
        data={"name": name},
        files={"file": (f"{name}.py", source.encode(), "text/x-python")},
        headers=auth,
    )


def added(client, auth, name: str, source: str) -> dict:
    response = add_method(client, auth, name, source)
    assert response.status_code == 201, response.text
    return response.json()


def methods(client, auth) -> dict[str, dict]:
    return {m["name"]: m for m in client.get("/api/v1/training-methods", headers=auth).json()}


def data_dir() -> Path:
    return Path(os.environ["TUNEYARD_DATA_DIR"])


def stored_scripts() -> list[Path]:
    return sorted((data_dir() / "methods").rglob("*.py"))


def result_folder(training_id: str) -> Path:
    return data_dir() / "trainings" / training_id / "result"


def model_folders() -> list[Path]:
    return sorted(p for p in (data_dir() / "models").rglob("*") if p.parent.name != "base")


def training(client, auth, training_id: str) -> dict:
    return client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()


def wait_for_progress(client, auth, training_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while training(client, auth, training_id)["progress"] < 3:
        assert time.monotonic() < deadline, "the script never reported progress"
        time.sleep(0.1)


@pytest.fixture
def member(client, auth) -> dict[str, str]:
    response = client.post(
        "/api/v1/users",
        json={"username": "ana", "password": "correct-horse", "role": "member"},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return login(client, "correct-horse", "ana")


@pytest.fixture
def chat_dataset(client, auth, worker) -> str:
    return upload(client, auth, "codes", CHAT)


class TestUpload:
    def test_admin_uploads_and_the_list_documents_it(self, client, auth):
        method = added(client, auth, "lora-loop", LORA_SCRIPT)
        assert method["name"] == "lora-loop" and method["custom"] is True
        assert method["result"] == "adapter"

        listed = methods(client, auth)
        assert set(listed) == {"sft", "dpo", "orpo", "kto", "grpo", "lora-loop"}
        assert not any(listed[name]["custom"] for name in ("sft", "dpo", "orpo", "kto", "grpo"))
        mine = listed["lora-loop"]
        assert mine["title"] == "lora-loop"
        assert mine["description"] == "LoRA with a hand-written loop."
        assert mine["dataset_formats"] == ["chat", "prompt_completion"]
        assert mine["needs_chat_template"] is False
        properties = mine["params_schema"]["properties"]
        assert properties["rank"] == {
            "default": 4,
            "description": "LoRA rank r.",
            "title": "Rank",
            "type": "integer",
        }
        assert properties["greeting"]["default"] == "hello"
        assert properties["adapter"]["enum"] == ["lora", "qlora"]
        for name, prop in properties.items():
            assert prop.get("description"), f"{name} is undocumented"
            assert "default" in prop, f"{name} has no default"
        assert "learning_rate" in properties and "lora_rank" in properties

        [script] = stored_scripts()
        assert script.read_text() == LORA_SCRIPT
        import hashlib

        assert mine["digest"] == hashlib.sha256(LORA_SCRIPT.encode()).hexdigest()

    def test_upload_does_not_run_the_script(self, client, auth, tmp_path):
        marker = tmp_path / "ran"
        source = LOOP_SCRIPT + f"\nopen({str(marker)!r}, 'w').write('ran')\n"
        added(client, auth, "loop", source)
        assert not marker.exists()

    def test_member_cannot_upload(self, client, auth, member):
        response = add_method(client, member, "lora-loop", LORA_SCRIPT)
        assert response.status_code == 403
        assert response.json()["detail"] == "This needs the admin role; you are member."
        assert "lora-loop" not in methods(client, auth) and stored_scripts() == []

    @pytest.mark.parametrize(
        "source,message",
        [
            (
                LOOP_SCRIPT.replace('FORMATS = ["chat"]\n', ""),
                'The method script must set FORMATS at the top level, e.g. FORMATS = ["chat"].',
            ),
            (
                LOOP_SCRIPT.replace('DESCRIPTION = "Reports steps until it is told to stop."', ""),
                "The method script must set DESCRIPTION at the top level, e.g. "
                'DESCRIPTION = "What the method does".',
            ),
            (
                LOOP_SCRIPT.replace('FORMATS = ["chat"]', 'FORMATS = sorted(["chat"])'),
                "FORMATS (line 5) must be a plain literal, read without running the script, "
                'e.g. FORMATS = ["chat"].',
            ),
            (
                LOOP_SCRIPT.replace('FORMATS = ["chat"]', 'FORMATS = ["chat", "essays"]'),
                "FORMATS has the unknown format 'essays'; use chat, preference, alpaca, "
                "prompt_completion, prompt_only.",
            ),
            (
                LOOP_SCRIPT.replace('RESULT = "adapter"', 'RESULT = "merged"'),
                'RESULT must be "adapter" or "full", not \'merged\'.',
            ),
            (
                LOOP_SCRIPT.replace("PARAMETERS = {}", 'PARAMETERS = {"rank": 4}'),
                'PARAMETERS[\'rank\'] must be {"default": <literal>, "description": "..."}.',
            ),
            (
                LOOP_SCRIPT.replace(
                    "PARAMETERS = {}",
                    'PARAMETERS = {"rank": {"default": None, "description": "r"}}',
                ),
                "PARAMETERS['rank'] has the default None; a default is a bool, int, float, str "
                "or list of plain values, and gives the parameter its type.",
            ),
            (
                LOOP_SCRIPT.replace(
                    "PARAMETERS = {}",
                    'PARAMETERS = {"learning_rate": {"default": 0.1, "description": "lr"}}',
                ),
                "PARAMETERS['learning_rate'] is a common parameter every method already has; "
                "drop it from PARAMETERS (the script reads it from config['params']).",
            ),
            (
                LOOP_SCRIPT.replace("def train(config, output_dir, report):", "def fit(config):"),
                "The method script must define `def train(config, output_dir, report):` at the "
                "top level.",
            ),
            (
                LOOP_SCRIPT.replace("def train(config, output_dir, report):", "def train(config):"),
                "The method script must define `def train(config, output_dir, report):`; it must "
                "take exactly those three arguments.",
            ),
        ],
        ids=[
            "missing-formats",
            "missing-description",
            "formats-not-literal",
            "unknown-format",
            "bad-result",
            "parameter-shape",
            "parameter-default",
            "common-parameter",
            "no-train",
            "train-arguments",
        ],
    )
    def test_bad_script_refused(self, client, auth, source, message):
        response = add_method(client, auth, "mine", source)
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == message
        assert "mine" not in methods(client, auth) and stored_scripts() == []

    def test_syntax_error(self, client, auth):
        response = add_method(client, auth, "mine", "DESCRIPTION = 'x'\ndef train(:\n")
        assert response.status_code == 422
        assert response.json()["detail"].startswith("The method script is not valid UTF-8 Python: ")
        assert "line 2" in response.json()["detail"]

    def test_not_utf8(self, client, auth):
        response = client.post(
            "/api/v1/training-methods",
            data={"name": "mine"},
            files={"file": ("mine.py", b"DESCRIPTION = '\xff'\n", "text/x-python")},
            headers=auth,
        )
        assert response.status_code == 422
        assert "not valid UTF-8 Python" in response.json()["detail"]

    @pytest.mark.parametrize("name", ["Loop", "9lives", "has space", "a" * 41, ""])
    def test_bad_name(self, client, auth, name):
        response = add_method(client, auth, name, LOOP_SCRIPT)
        assert response.status_code == 422
        assert response.json()["detail"] in (
            "A method name is 1-40 characters: a lowercase letter, then lowercase letters, "
            "digits, '_' or '-'.",
            "name: Field required",  # an empty form field is no field
        )

    def test_name_of_a_built_in_refused(self, client, auth):
        response = add_method(client, auth, "sft", LOOP_SCRIPT)
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "'sft' is a built-in training method; give yours another name."
        )

    def test_duplicate_name_conflicts(self, client, auth):
        added(client, auth, "loop", LOOP_SCRIPT)
        response = add_method(client, auth, "loop", EMPTY_SCRIPT)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "A training method named 'loop' already exists. Delete it first with "
            "`tuneyard train rm-method loop`, or choose another name."
        )
        assert len(stored_scripts()) == 1
        assert methods(client, auth)["loop"]["description"].startswith("Reports steps")

    def test_too_large(self, client, auth):
        response = add_method(client, auth, "big", LOOP_SCRIPT + "#" * 1_000_000)
        assert response.status_code == 413
        assert stored_scripts() == []

    def test_other_projects_do_not_see_it(self, client, auth):
        from tuneyard.auth import service as auth_service
        from tuneyard.db import session_scope

        added(client, auth, "loop", LOOP_SCRIPT)
        with session_scope() as session:
            auth_service.create_project(session, "2002", "boss", "correct-horse")
        assert (
            CliRunner().invoke(cli_app, ["users", "operator", "boss", "-p", "2002"]).exit_code == 0
        )
        other = login(client, "correct-horse", "boss", project="2002")
        assert "loop" not in methods(client, other)
        gone = client.delete("/api/v1/training-methods/loop", headers=other)
        assert gone.status_code == 404
        assert added(client, other, "loop", EMPTY_SCRIPT)["custom"] is True
        assert methods(client, auth)["loop"]["description"].startswith("Reports steps")


def upload_reward(client, auth, name: str):
    return client.post(
        "/api/v1/reward-files",
        data={"name": name},
        files={"file": (f"{name}.py", b"def reward(completions, **_):\n    return []\n")},
        headers=auth,
    )


class TestTheOperatorDecides:
    def test_a_project_admin_is_not_the_operator(self, client, auth):
        from tuneyard.auth import service as auth_service
        from tuneyard.db import session_scope

        with session_scope() as session:
            auth_service.create_project(session, "2002", "boss", "correct-horse")
        boss = login(client, "correct-horse", "boss", project="2002")
        for refused in (
            add_method(client, boss, "loop", LOOP_SCRIPT),
            upload_reward(client, boss, "r"),
        ):
            assert refused.status_code == 403
            assert refused.json()["detail"] == NOT_OPERATOR
        assert stored_scripts() == [] and not (data_dir() / "rewards").exists()
        assert client.get("/api/v1/auth/me", headers=boss).json()["operator"] is False

        runner = CliRunner()
        granted = runner.invoke(cli_app, ["users", "operator", "boss", "-p", "2002"])
        assert granted.exit_code == 0, granted.output
        assert "boss (project 2002) is now the server's operator." in granted.stdout
        users = client.get("/api/v1/users", headers=boss).json()["items"]
        assert [(u["username"], u["operator"]) for u in users] == [("boss", True)]
        assert added(client, boss, "loop", LOOP_SCRIPT)["custom"] is True
        assert upload_reward(client, boss, "r").status_code == 201

        revoked = runner.invoke(cli_app, ["users", "operator", "boss", "-p", "2002", "--revoke"])
        assert "boss (project 2002) is no longer an operator." in revoked.stdout
        refused = client.delete("/api/v1/training-methods/loop", headers=boss)
        assert refused.status_code == 403 and refused.json()["detail"] == NOT_OPERATOR
        assert "loop" in methods(client, boss)

    def test_the_first_admin_is_the_operator(self, client, auth):
        me = client.get("/api/v1/auth/me", headers=auth).json()
        assert (me["username"], me["role"], me["operator"]) == ("admin", "admin", True)

    def test_off_by_default_nothing_is_uploaded_or_run(
        self, client, auth, tiny_base, chat_dataset, monkeypatch
    ):
        from tuneyard.config import reset_settings

        added(client, auth, "loop", LOOP_SCRIPT)  # while code uploads were on
        monkeypatch.delenv("TUNEYARD_ALLOW_CODE_UPLOADS")
        reset_settings()

        for refused in (
            add_method(client, auth, "other", EMPTY_SCRIPT),
            upload_reward(client, auth, "r"),
            client.delete("/api/v1/training-methods/loop", headers=auth),
        ):
            assert refused.status_code == 403
            assert refused.json()["detail"] == UPLOADS_OFF
        response = start(client, auth, tiny_base, chat_dataset, "loop")
        assert response.status_code == 403
        assert response.json()["detail"] == (
            "Training method loop is uploaded code, and this server runs no uploaded code "
            "(TUNEYARD_ALLOW_CODE_UPLOADS is off). The server's operator can turn it on."
        )
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0
        assert len(stored_scripts()) == 1


class TestIsolation:
    def test_the_script_runs_without_tuneyards_settings_or_secrets(
        self, client, auth, tiny_base, chat_dataset, tmp_path, monkeypatch
    ):
        from tuneyard.config import get_settings

        monkeypatch.setenv("HF_TOKEN", "hf_not_for_uploaded_code")
        added(client, auth, "spy", SPY_SCRIPT)
        seen_file = tmp_path / "seen.json"
        response = start(client, auth, tiny_base, chat_dataset, "spy", seen=str(seen_file))
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error == "spy failed: RuntimeError: done looking"

        seen = json.loads(seen_file.read_text())
        environ = seen["environ"]
        assert not [name for name in environ if name.startswith("TUNEYARD_")]
        assert "HF_TOKEN" not in environ
        settings = get_settings()
        assert settings.db_url not in json.dumps(environ)
        assert "secret.key" not in json.dumps(environ)
        # The data dir appears only as the way to its scratch folder, inside the job's own.
        scratch = data_dir() / "jobs" / job.id / "code"
        naming = {name: value for name, value in environ.items() if str(data_dir()) in value}
        assert set(naming) == {"HOME", "TMPDIR", "HF_HOME"}
        assert all(Path(value).is_relative_to(scratch) for value in naming.values())
        # A process of its own, started by the job's, working in that scratch folder.
        assert seen["parent"][-2:] == ["tuneyard.jobs.child", job.id]
        assert Path(seen["cwd"]) == scratch and Path(seen["home"]) == scratch / "home"
        assert not scratch.exists()  # removed once the script ended
        # It never loaded the database layer; its report still reached the training.
        assert "tuneyard.db" not in seen["modules"] and "tuneyard.config" not in seen["modules"]
        series = client.get(f"/api/v1/trainings/{response.json()['id']}/metrics", headers=auth)
        assert series.json()["series"]["train"]["loss"] == [[1, 0.5]]


class TestStartValidation:
    @pytest.mark.parametrize(
        "params,detail",
        [
            (
                {"rnak": 2},
                "Invalid parameters for lora-loop: rnak: unknown parameter. "
                "See GET /api/v1/training-methods for every parameter.",
            ),
            (
                {"rank": "eight"},
                "Invalid parameters for lora-loop: rank: Input should be a valid integer. "
                "See GET /api/v1/training-methods for every parameter.",
            ),
            (
                {"greeting": 5},
                "Invalid parameters for lora-loop: greeting: Input should be a valid string. "
                "See GET /api/v1/training-methods for every parameter.",
            ),
            (
                {"adapter": "full"},
                "Invalid parameters for lora-loop: adapter: Input should be 'lora' or 'qlora'. "
                "See GET /api/v1/training-methods for every parameter.",
            ),
            (
                {"batch_size": 0},
                "Invalid parameters for lora-loop: batch_size: Input should be greater than or "
                "equal to 1. See GET /api/v1/training-methods for every parameter.",
            ),
        ],
        ids=["unknown", "wrong-type-int", "wrong-type-str", "adapter-full", "common-range"],
    )
    def test_bad_params_refused_before_any_job(
        self, client, auth, tiny_base, chat_dataset, params, detail
    ):
        added(client, auth, "lora-loop", LORA_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "lora-loop", **params)
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == detail
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0
        jobs = client.get("/api/v1/jobs", headers=auth).json()["items"]
        assert [job["kind"] for job in jobs] == ["dataset.parse"]

    def test_dataset_format_must_be_in_formats(self, client, auth, worker, tiny_base):
        added(client, auth, "lora-loop", LORA_SCRIPT)
        dataset = upload(client, auth, "prefs", PREFERENCE)
        response = start(client, auth, tiny_base, dataset, "lora-loop")
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "Dataset 'prefs' is in preference format, but lora-loop trains on chat or "
            "prompt_completion records. Pick another dataset or method."
        )
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0

    def test_profile_for_a_custom_method(self, client, auth):
        added(client, auth, "lora-loop", LORA_SCRIPT)
        made = client.post(
            "/api/v1/profiles",
            json={"name": "small", "method": "lora-loop", "params": {"rank": 2, "max_steps": 3}},
            headers=auth,
        )
        assert made.status_code == 201, made.text
        wrong = client.post(
            "/api/v1/profiles",
            json={"name": "odd", "method": "lora-loop", "params": {"rank": 2.5}},
            headers=auth,
        )
        assert wrong.status_code == 422
        assert "rank: Input should be a valid integer" in wrong.json()["detail"]

    def test_unknown_method_lists_the_uploaded_ones(self, client, auth, tiny_base, chat_dataset):
        added(client, auth, "loop", LOOP_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "lop")
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "Unknown training method 'lop'; choose one of: dpo, grpo, kto, loop, orpo, sft."
        )


class TestRun:
    @pytest.mark.slow
    def test_lora_script_makes_a_customized_model(self, client, auth, worker, tiny_base):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        added(client, auth, "lora-loop", LORA_SCRIPT)
        dataset = upload(client, auth, "codes", CHAT)
        response = start(
            client,
            auth,
            tiny_base,
            dataset,
            "lora-loop",
            name="loop",
            rank=2,
            greeting="hi from the test",
            **QUICK,
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(response.json()["job_id"], timeout=300)
        done = training(client, auth, response.json()["id"])
        assert job.status == "succeeded", (job.error, done)
        assert job.kind == "training.custom"
        assert done["status"] == "succeeded" and done["progress"] == 100
        assert done["params"]["rank"] == 2 and done["params"]["lora_rank"] == 8

        series = client.get(f"/api/v1/trainings/{done['id']}/metrics", headers=auth).json()
        loss = series["series"]["train"]["loss"]
        assert [step for step, _ in loss] == [1, 2, 3, 4]
        assert [v for _, v in series["series"]["train"]["learning_rate"]] == [1e-2] * 4
        assert done["summary"]["final_loss"] == loss[-1][1] and done["summary"]["steps"] == 4

        model = client.get(
            f"/api/v1/customized-models/{done['customized_model_id']}", headers=auth
        ).json()
        date = datetime.now(UTC).strftime("%Y%m%d")
        assert model["name"] == f"tiny_loop_{date}_{done['id'].replace('-', '')[:4]}"
        card = model["model_card"]
        assert card["training"]["method"] == "lora-loop"
        assert card["training"]["params"]["rank"] == 2
        assert card["training"]["params"]["greeting"] == "hi from the test"
        assert card["lineage"]["method_digest"] == methods(client, auth)["lora-loop"]["digest"]
        assert card["metrics"]["final_loss"] == loss[-1][1]

        folder = Path(model["path"])
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == 2
        assert lora_b_norm(folder) > 0  # LoRA B starts at zero: nonzero means it trained
        assert (folder / "tokenizer_config.json").exists()
        assert (folder / "README.md").read_text().startswith("---\n")
        base_path = client.get(f"/api/v1/base-models/{tiny_base}", headers=auth).json()["path"]
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), folder)
        assert not result_folder(done["id"]).exists()

        logs = client.get(f"/api/v1/jobs/{job.id}/logs", headers=auth).text
        assert "greeting: hi from the test" in logs

    @pytest.mark.slow
    def test_full_script_makes_a_complete_model(self, client, auth, worker, tiny_base):
        from transformers import AutoModelForCausalLM

        from tuneyard.db import session_scope
        from tuneyard.models import CompleteModel

        assert added(client, auth, "one-step", FULL_SCRIPT)["result"] == "full"
        dataset = upload(client, auth, "codes", CHAT)
        response = start(client, auth, tiny_base, dataset, "one-step", learning_rate=0.5)
        job = wait_for_job(response.json()["job_id"], timeout=300)
        done = training(client, auth, response.json()["id"])
        assert job.status == "succeeded", (job.error, done)
        assert done["customized_model_id"] is None
        assert done["params"]["adapter"] == "full" and done["params"]["scale"] == 1.0

        with session_scope() as session:
            row = session.get(CompleteModel, done["summary"]["complete_model_id"])
            path, card, dtype, source = Path(row.path), row.model_card, row.dtype, row.source
        assert source == "full_training" and dtype == "fp32"
        assert card["kind"] == "complete" and card["training"]["method"] == "one-step"
        assert card["name"].startswith("tiny_t1_")
        assert (path / "tokenizer_config.json").exists()  # the base's, added
        base_path = client.get(f"/api/v1/base-models/{tiny_base}", headers=auth).json()["path"]
        tuned = AutoModelForCausalLM.from_pretrained(path).state_dict()
        base = AutoModelForCausalLM.from_pretrained(base_path).state_dict()
        assert any(not tuned[name].equal(base[name]) for name in base)


class TestFailures:
    def test_script_exception_fails_the_training_and_leaves_nothing(
        self, client, auth, tiny_base, chat_dataset
    ):
        added(client, auth, "broken", RAISING_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "broken")
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error == "broken failed: RuntimeError: the records are upside down"
        failed = training(client, auth, response.json()["id"])
        assert failed["status"] == "failed" and failed["error"] == job.error
        assert failed["customized_model_id"] is None
        assert client.get("/api/v1/customized-models", headers=auth).json()["total"] == 0
        assert not result_folder(failed["id"]).exists()
        assert model_folders() == []
        logs = client.get(f"/api/v1/jobs/{job.id}/logs", headers=auth).text
        assert "Traceback" in logs and "the records are upside down" in logs

    def test_script_that_writes_no_adapter_fails(self, client, auth, tiny_base, chat_dataset):
        added(client, auth, "lazy", EMPTY_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "lazy")
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error == (
            "lazy returned without writing adapter_config.json and adapter_model.safetensors "
            'to output_dir (RESULT is "adapter"; PeftModel.save_pretrained(output_dir) writes '
            "both)."
        )
        assert model_folders() == [] and not result_folder(response.json()["id"]).exists()

    def test_links_in_the_output_fail(self, client, auth, tiny_base, chat_dataset):
        # An archive or a deploy of the model would follow the link to the file it names.
        target = str(data_dir() / "secret.key")
        added(client, auth, "linker", LINK_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "linker", target=target)
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error == (
            "linker wrote a link (adapter_model.safetensors) into output_dir; write the files "
            "themselves."
        )
        assert model_folders() == [] and not result_folder(response.json()["id"]).exists()

    @pytest.mark.slow
    def test_adapter_for_another_model_fails(self, client, auth, tiny_base, chat_dataset):
        added(client, auth, "foreign", FOREIGN_ADAPTER_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "foreign")
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error == (
            "foreign wrote an adapter that targets c_attn, which base model tiny does not have."
        )
        assert model_folders() == [] and not result_folder(response.json()["id"]).exists()


class TestCancelAndDelete:
    def test_cancel_ends_the_training_cancelled(self, client, auth, tiny_base, chat_dataset):
        added(client, auth, "loop", LOOP_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "loop")
        training_id = response.json()["id"]
        wait_for_progress(client, auth, training_id)
        cancel = client.post(f"/api/v1/trainings/{training_id}/cancel", headers=auth)
        assert cancel.status_code == 200, cancel.text
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "cancelled", job.error
        stopped = training(client, auth, training_id)
        assert stopped["status"] == "cancelled" and stopped["customized_model_id"] is None
        series = client.get(f"/api/v1/trainings/{training_id}/metrics", headers=auth).json()
        assert len(series["series"]["train"]["loss"]) >= 3
        assert model_folders() == [] and not result_folder(training_id).exists()

    def test_resume_runs_the_script_again(self, client, auth, tiny_base, chat_dataset):
        added(client, auth, "loop", LOOP_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "loop")
        training_id = response.json()["id"]
        wait_for_progress(client, auth, training_id)
        client.post(f"/api/v1/trainings/{training_id}/cancel", headers=auth)
        assert wait_for_job(response.json()["job_id"]).status == "cancelled"

        resumed = client.post(f"/api/v1/trainings/{training_id}/resume", headers=auth)
        assert resumed.status_code == 202, resumed.text
        job_id = resumed.json()["job_id"]
        assert wait_for_job(job_id, statuses=("running",)).kind == "training.custom"
        wait_for_progress(client, auth, training_id)
        client.post(f"/api/v1/trainings/{training_id}/cancel", headers=auth)
        assert wait_for_job(job_id).status == "cancelled"

    def test_delete_refused_while_a_training_runs_it(self, client, auth, tiny_base, chat_dataset):
        added(client, auth, "loop", LOOP_SCRIPT)
        response = start(client, auth, tiny_base, chat_dataset, "loop")
        training_id, job_id = response.json()["id"], response.json()["job_id"]
        busy = client.delete("/api/v1/training-methods/loop", headers=auth)
        assert busy.status_code == 409
        assert busy.json()["detail"].startswith(
            f"Training method loop is in use by training.custom job {job_id} ("
        )
        assert "loop" in methods(client, auth) and len(stored_scripts()) == 1

        wait_for_progress(client, auth, training_id)
        client.post(f"/api/v1/trainings/{training_id}/cancel", headers=auth)
        assert wait_for_job(job_id).status == "cancelled"
        gone = client.delete("/api/v1/training-methods/loop", headers=auth)
        assert gone.status_code == 204
        assert "loop" not in methods(client, auth) and stored_scripts() == []
        assert training(client, auth, training_id)["method"] == "loop"  # the record stays
        again = client.post(f"/api/v1/trainings/{training_id}/resume", headers=auth)
        assert again.status_code == 422
        assert "Unknown training method 'loop'" in again.json()["detail"]

    def test_delete_rules(self, client, auth, member):
        added(client, auth, "loop", LOOP_SCRIPT)
        refused = client.delete("/api/v1/training-methods/loop", headers=member)
        assert refused.status_code == 403
        builtin = client.delete("/api/v1/training-methods/sft", headers=auth)
        assert builtin.status_code == 422
        assert builtin.json()["detail"] == (
            "'sft' is a built-in training method; only uploaded ones are deleted."
        )
        missing = client.delete("/api/v1/training-methods/nope", headers=auth)
        assert missing.status_code == 404
        assert missing.json()["detail"] == (
            "No training method 'nope'. List them with `tuneyard train methods`."
        )
        assert client.delete("/api/v1/training-methods/loop", headers=auth).status_code == 204


class TestCLI:
    def test_add_list_and_remove(self, cli, tmp_path):
        runner = CliRunner()
        script = tmp_path / "loop.py"
        script.write_text(LOOP_SCRIPT)
        result = runner.invoke(cli_app, ["train", "add-method", str(script), "--name", "loop"])
        assert result.exit_code == 0, result.output
        assert "loop" in result.stdout and "adapter" in result.stdout

        listed = json.loads(runner.invoke(cli_app, ["train", "methods", "--json"]).stdout)
        mine = next(m for m in listed if m["name"] == "loop")
        assert mine["custom"] is True and mine["dataset_formats"] == ["chat"]
        assert "loop" in runner.invoke(cli_app, ["train", "methods"]).stdout

        clash = runner.invoke(cli_app, ["train", "add-method", str(script), "--name", "sft"])
        assert clash.exit_code == 1
        assert "'sft' is a built-in training method" in clash.output

        removed = runner.invoke(cli_app, ["train", "rm-method", "loop"])
        assert removed.exit_code == 0 and "Removed training method loop." in removed.stdout
        listed = json.loads(runner.invoke(cli_app, ["train", "methods", "--json"]).stdout)
        assert "loop" not in {m["name"] for m in listed}
