"""Every role rule lives in the services, so the API, the console and the CLI share one rule set.

Each public function of a service module is listed here as a read, as something a viewer may do
to what is their own, or as a helper or internal step that takes no principal; every other one
changes the project, and a viewer calling it is refused before it looks anything up, with
nothing changed. A new function counts as a change until it is listed otherwise.
"""

from __future__ import annotations

import importlib
import inspect
import io
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, select

import tuneyard
from tests.helpers import closed_port, login
from tuneyard.auth import service as auth_service
from tuneyard.auth.service import Principal
from tuneyard.db import Base, session_factory, session_scope
from tuneyard.errors import Forbidden, NotFound
from tuneyard.storage import Layout

SERVICE_MODULES = [
    *sorted(
        f"tuneyard.{path.parent.name}.service"
        for path in Path(tuneyard.__file__).parent.glob("*/service.py")
    ),
    "tuneyard.training.custom",  # uploaded training methods: the training routes call it
    # The deploy domain's service, by concern (tuneyard.deploy.service re-exports them).
    "tuneyard.deploy.environments",
    "tuneyard.deploy.live",
    "tuneyard.deploy.sources",
    # The assessment domain's service, by concern.
    "tuneyard.assessment.results",
    "tuneyard.assessment.fidelity",
    "tuneyard.assessment.compare",
    # The knowledge domain's search and retrieval evaluation.
    "tuneyard.knowledge.retrieval",
    "tuneyard.knowledge.evaluation",
]

# Reviewed: these change nothing.
READS = {
    "tuneyard.assessment.service": {
        "check_request",
        "find_assessment",
        "get_assessment",
        "list_assessments",
        "preview",
    },
    "tuneyard.assessment.results": {"export", "results"},
    "tuneyard.assessment.compare": {"comparable", "compare"},
    "tuneyard.assessment.fidelity": {"live_fidelity"},
    "tuneyard.auth.service": {"get_project_by_code", "get_user", "list_users", "list_tokens"},
    "tuneyard.basemodels.service": {
        "active_job",
        "find_demo_embedding",
        "find_base_model",
        "get_base_model",
        "list_base_models",
        "usable_base_models",
    },
    "tuneyard.chat.service": {"chat_model", "get_session", "list_sessions", "session_messages"},
    "tuneyard.complete.service": {
        "adapter_archive",
        "complete_archive",
        "get_complete",
        "list_complete",
        "usable_complete",
    },
    "tuneyard.customized.service": {"get_customized", "list_customized", "usable_customized"},
    "tuneyard.dashboard.service": {
        "base_model_usage",
        "counts",
        "overview",
        "trainings_per_day",
        "workers",
    },
    "tuneyard.datasets.service": {
        "dataset_stats",
        "find_dataset",
        "get_dataset",
        "iter_records",
        "list_datasets",
        "preview",
    },
    "tuneyard.deploy.environments": {"get_environment", "list_environments", "live_models_in"},
    "tuneyard.deploy.live": {"get_live", "list_live", "live_summary", "usable_live"},
    "tuneyard.deploy.sources": {"resolve_source"},
    "tuneyard.images.service": {
        "list_adapters",
        "get_image",
        "get_image_model",
        "list_image_models",
        "list_images",
    },
    "tuneyard.jobs.service": {
        "active_jobs_using",
        "ensure_not_in_use",
        "events",
        "finished_since",
        "get_job",
        "list_jobs",
        "read_log",
    },
    "tuneyard.knowledge.evaluation": {"evaluate"},
    "tuneyard.knowledge.retrieval": {"retrieve", "search"},
    "tuneyard.knowledge.service": {
        "document_text",
        "find_knowledge_bases",
        "get_document",
        "get_knowledge_base",
        "list_documents",
        "list_indexes",
        "list_knowledge_bases",
    },
    "tuneyard.thirdparty.service": {"get_third_party", "list_third_party", "usable_third_party"},
    "tuneyard.training.custom": {
        "code_upload_refusal",
        "custom_method_of",
        "find_method",
        "list_methods",
    },
    "tuneyard.training.service": {
        "checkpoint_steps",
        "compare",
        "copy_settings",
        "get_profile",
        "get_training",
        "list_profiles",
        "list_reward_files",
        "list_trainings",
        "metrics",
        "resolve_reward_files",
    },
}

# A viewer's own: their API tokens and their chats (test_a_viewer_manages_what_is_their_own).
OWN = {
    "tuneyard.auth.service": {"change_password", "create_token", "revoke_token"},
    "tuneyard.chat.service": {
        "delete_session",
        "prepare_compare",
        "prepare_turn",
        "rename_session",
        "start_compare",
        "start_turn",
    },
}

# No principal: helpers on values, or steps run for a caller whose role was checked already
# (job bodies and the worker, streaming an answer after its turn was prepared, start-up, the
# CLI's identity, signing in and out with a password or a token).
WITHOUT_PRINCIPAL = {
    "tuneyard.assessment.service": {
        "candidate_messages",
        "describe",
        "judge_messages",
        "judge_values",
        "row_counts",
        "sample_indices",
        "sampled_records",
    },
    "tuneyard.assessment.results": {"iter_rows", "preference_records", "row_dict"},
    "tuneyard.assessment.fidelity": {"fidelity_figures"},
    "tuneyard.auth.service": {
        "authenticate",
        "create_project",
        "ensure_bootstrap",
        "local_principal",
        "login",
        "logout",
        "remove_ended_tokens",
    },
    "tuneyard.basemodels.service": {
        "base_model_of",
        "demo_embedding_folder",
        "demo_gguf_file",
        "describe_folder",
        "finish_folder",
        "mark_failed",
        "remove_failed_folder",
    },
    "tuneyard.chat.service": {"record_answer", "run_compare", "run_turn"},
    "tuneyard.complete.service": {
        "check_archive_format",
        "complete_model_name",
        "summary",
    },
    "tuneyard.customized.service": {"summary"},
    "tuneyard.datasets.service": {
        "check_column_mapping",
        "ensure_ready",
        "file_type_of",
        "original_path",
        "parse_column_mapping",
        "records_path",
    },
    "tuneyard.deploy.environments": {
        "ensure_managed_key",
        "environment_out",
        "is_managed",
        "managed_environments_serving",
    },
    "tuneyard.deploy.live": {
        "add_live_model",
        "live_api_key",
        "live_base_to_reuse",
        "live_model_name",
        "live_models_of_job",
    },
    "tuneyard.images.service": {
        "adapter_path",
        "describe_model",
        "generation_reads",
        "image_path",
        "image_size",
        "model_here",
        "record_image",
        "record_trained_adapter",
        "source_path",
        "training_refusal",
        "training_reads",
        "training_resolution",
        "training_set_path",
        "unrecorded_files",
        "unrecorded_training_files",
    },
    "tuneyard.jobs.service": {
        "cancels_asked",
        "clean_up",
        "finish",
        "lost_resumes",
        "requeue",
        "resume_point",
    },
    "tuneyard.knowledge.evaluation": {"matches"},
    "tuneyard.knowledge.service": {
        "active_index",
        "base_dir",
        "building_index",
        "chunks_by_id",
        "describe",
        "describe_document",
        "describe_index",
        "document_dir",
        "index_counts",
        "index_dir",
        "job_keys",
        "original_path",
        "text_path",
    },
    "tuneyard.thirdparty.service": {"third_party_api_key", "third_party_out"},
    "tuneyard.training.custom": {"params_model", "read_script", "require_code_runs"},
    "tuneyard.training.service": {
        "check_dataset_fits",
        "ensure_training_available",
        "has_chat_template",
        "validate_params",
    },
}


def public_functions(module_name: str) -> dict[str, object]:
    module = importlib.import_module(module_name)
    return {
        name: fn
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == module_name
    }


def changes() -> dict[str, object]:
    """Every public service function not listed as a read, a viewer's own, or principal-free."""
    found = {}
    for module_name in SERVICE_MODULES:
        listed = (
            READS.get(module_name, set())
            | OWN.get(module_name, set())
            | WITHOUT_PRINCIPAL.get(module_name, set())
        )
        for name, fn in public_functions(module_name).items():
            if name not in listed:
                found[f"{module_name}.{name}"] = fn
    return found


def change_arguments(w) -> dict[str, dict]:
    """What each change is called with, naming the world's rows. A change missing here gets
    "x" for each argument it needs: the role check comes first, whatever the arguments."""
    return {
        "tuneyard.assessment.service.cancel_assessment": {"assessment_id": w.assessment},
        "tuneyard.assessment.results.create_preference_dataset": {
            "assessment_id": w.assessment,
        },
        "tuneyard.assessment.service.delete_assessment": {"assessment_id": w.assessment},
        "tuneyard.assessment.service.resume_assessment": {"assessment_id": w.assessment},
        "tuneyard.assessment.fidelity.start_fidelity": {"customized_id": w.customized},
        "tuneyard.auth.service.create_user": {
            "username": "newcomer",
            "password": "password-123",
            "role": "admin",
        },
        "tuneyard.auth.service.delete_user": {"username": "admin"},
        "tuneyard.auth.service.reset_password": {
            "username": "admin",
            "new_password": "password-123",
        },
        "tuneyard.basemodels.service.add_demo": {},
        "tuneyard.basemodels.service.create_base_model": {
            "technical_name": "other",
            "path": str(Layout().base_model_dir(w.base)),
        },
        "tuneyard.basemodels.service.delete_base_model": {"model_id": w.base},
        "tuneyard.basemodels.service.import_gguf": {
            "technical_name": "other",
            "gguf_path": "/models/tiny.gguf",
        },
        "tuneyard.basemodels.service.register_hub": {
            "technical_name": "other",
            "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        },
        "tuneyard.basemodels.service.register_path": {
            "technical_name": "other",
            "path": str(Layout().base_model_dir(w.base)),
        },
        "tuneyard.basemodels.service.update_base_model": {
            "model_id": w.base,
            "model_name": "renamed",
        },
        "tuneyard.complete.service.delete_complete": {"model_id": w.complete},
        "tuneyard.complete.service.start_push": {"model_id": w.complete, "repo_id": "me/tiny"},
        "tuneyard.complete.service.start_save": {"customized_id": w.customized},
        "tuneyard.customized.service.delete_customized": {"model_id": w.customized},
        "tuneyard.customized.service.promote_checkpoint": {"training_id": w.training, "step": 1},
        "tuneyard.datasets.service.create_dataset": {
            "name": "more",
            "filename": "more.jsonl",
            "content": io.BytesIO(b'{"prompt": "a", "completion": "b"}\n'),
        },
        "tuneyard.datasets.service.delete_dataset": {"dataset_id": w.dataset},
        "tuneyard.deploy.live.check_live": {"live_id": w.live},
        "tuneyard.deploy.environments.create_environment": {"name": "local", "kind": "llama.cpp"},
        "tuneyard.deploy.environments.delete_environment": {"environment_id": w.environment},
        "tuneyard.deploy.live.delete_live": {"live_id": w.live},
        "tuneyard.deploy.live.register_live": {"live_id": w.live, "name": "entry"},
        "tuneyard.deploy.service.start_deploy": {
            "source_kind": "base",
            "source_id": w.base,
            "environment_id": w.environment,
        },
        "tuneyard.deploy.environments.test_environment": {"environment_id": w.environment},
        "tuneyard.deploy.environments.update_environment": {
            "environment_id": w.environment,
            "name": "renamed",
        },
        "tuneyard.jobs.service.cancel_job": {"job_id": w.job},
        "tuneyard.jobs.service.enqueue": {"kind": "test.sleep", "params": {"steps": 1}},
        "tuneyard.thirdparty.service.create_third_party": {
            "name": "other",
            "provider": "openai",
            "model_name": "gpt-4o-mini",
        },
        "tuneyard.thirdparty.service.delete_third_party": {"id_or_name": w.third_party},
        "tuneyard.thirdparty.service.test_third_party": {"id_or_name": w.third_party},
        "tuneyard.thirdparty.service.update_third_party": {
            "id_or_name": w.third_party,
            "description": "changed",
        },
        "tuneyard.training.custom.add_method": {
            "name": "other",
            "source": b"def train(config, output_dir, report):\n    pass\n",
        },
        "tuneyard.training.custom.delete_method": {"name": "loop"},
        "tuneyard.training.service.cancel_training": {"training_id": w.training},
        "tuneyard.training.service.create_profile": {"name": "slow", "params": {}},
        "tuneyard.training.service.delete_profile": {"profile_id": w.profile},
        "tuneyard.training.service.resume_training": {"training_id": w.training},
        "tuneyard.training.service.save_reward_file": {
            "name": "mine",
            "source": b"def reward(completions, **columns):\n    return [0.0]\n",
        },
        "tuneyard.training.service.start_training": {
            "name": "again",
            "method": "sft",
            "base_model_id": w.base,
            "dataset_id": w.dataset,
        },
        "tuneyard.training.service.update_profile": {"profile_id": w.profile, "name": "renamed"},
    }


def project_state() -> tuple[dict, list]:
    """Every row of every table, and every file of the data dir (the database's own aside)."""
    with session_scope() as session:
        rows = {
            table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)))
            for table in Base.metadata.sorted_tables
        }
    root = Layout().root
    files = sorted(
        (str(path.relative_to(root)), path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith("tuneyard.db")
    )
    return rows, files


class LookedBeforeCheck(Exception):
    pass


def _refuse_database(*_args) -> None:
    raise LookedBeforeCheck("used the database before checking the role")


def call_as_viewer(qualified: str, fn, arguments: dict, viewer: Principal) -> str:
    """How the call ended: "refused: <message>" or what else happened."""
    parameters = inspect.signature(fn).parameters
    if "principal" not in parameters:
        return "takes no principal: add one and check its role, or list the function above"
    kwargs = {
        name: "x"
        for name, parameter in parameters.items()
        if parameter.default is parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    kwargs.update(arguments, principal=viewer)
    session = session_factory()()
    # Any query or write before the role check fails the call.
    event.listen(session, "do_orm_execute", _refuse_database)
    event.listen(session, "before_flush", _refuse_database)
    if "session" in parameters:
        kwargs["session"] = session
    try:
        fn(**kwargs)
    except Forbidden as exc:
        return f"refused: {exc.message}"
    except LookedBeforeCheck as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any other ending is the finding
        return f"{type(exc).__name__}: {exc}"
    finally:
        session.rollback()
        session.close()
    return "allowed"


def test_the_lists_name_only_functions_that_exist():
    for listing in (READS, OWN, WITHOUT_PRINCIPAL):
        for module_name, names in listing.items():
            assert names <= set(public_functions(module_name)), (module_name, names)


def test_a_viewer_changes_nothing_through_any_service(project_world):
    calls = changes()
    arguments = change_arguments(project_world)
    assert set(arguments) <= set(calls), "arguments for functions that are not changes"
    before = project_state()
    outcomes = {
        name: call_as_viewer(name, fn, arguments.get(name, {}), project_world.viewer)
        for name, fn in calls.items()
    }
    wrong = {
        name: outcome
        for name, outcome in outcomes.items()
        if not (outcome.startswith("refused: This needs the") and "you are viewer" in outcome)
    }
    assert wrong == {}
    assert project_state() == before


def test_a_viewer_manages_what_is_their_own(project_world):
    from tuneyard.chat import service as chat
    from tuneyard.chat.schemas import ChatRequest, CompareRequest

    viewer = project_world.viewer
    ref = f"third-party:{project_world.third_party}"
    hello = [{"role": "user", "content": "hello"}]
    with session_scope() as session:
        token, row = auth_service.create_token(session, viewer, "script")
        assert auth_service.authenticate(session, token) == viewer
        auth_service.revoke_token(session, viewer, row.id)
        auth_service.change_password(session, viewer, "viewer-pass-1", "a-new-password")
        turn = chat.prepare_turn(session, viewer, ChatRequest(model=ref, messages=hello))
        chat.rename_session(session, viewer, turn.session_id, "mine")
        chat.delete_session(session, viewer, turn.session_id)
        turns = chat.prepare_compare(
            session, viewer, CompareRequest(models=[ref, ref], messages=hello)
        )
        assert [chat.get_session(session, viewer, t.session_id).title for t in turns] == [
            "hello",
            "hello",
        ]
        # Someone else's chat is not theirs: it reads as absent.
        with pytest.raises(NotFound):
            chat.delete_session(session, viewer, project_world.chat)


# -- the API answers 403 ----------------------------------------------------------------------

# Routes a viewer may use: signing in, their own password, tokens and chats, and comparing runs
# and previewing an assessment's prompts (reads).
VIEWER_ROUTES = {
    ("POST", "/api/v1/assessments/preview"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/password"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{token_id}"),
    ("POST", "/api/v1/chat"),
    ("POST", "/api/v1/chat/compare"),
    ("POST", "/api/v1/knowledge-bases/{kb}/search"),
    ("POST", "/api/v1/knowledge-bases/{kb}/evaluate"),
    ("PATCH", "/api/v1/chat/sessions/{session_id}"),
    ("DELETE", "/api/v1/chat/sessions/{session_id}"),
    ("POST", "/api/v1/trainings/compare"),
    ("POST", "/v1/chat/completions"),
}

SCRIPT = b"def train(config, output_dir, report):\n    pass\n"
REWARD = b"def reward(completions, **columns):\n    return [0.0]\n"


def route_requests(w) -> dict[tuple[str, str], tuple[dict, dict]]:
    """(path parameters, request arguments) of each route a viewer is refused."""
    deploy = {"json": {"environment_id": w.environment}}
    assessment = {"assessment_id": w.assessment}
    return {
        ("POST", "/api/v1/assessments"): (
            {},
            {
                "json": {
                    "name": "again",
                    "dataset_id": w.dataset,
                    "sample": {"size": 1},
                    "candidates": [{"model": "remote", "prompt": "{{prompt}}"}],
                }
            },
        ),
        ("DELETE", "/api/v1/assessments/{assessment_id}"): (assessment, {}),
        ("POST", "/api/v1/assessments/{assessment_id}/cancel"): (assessment, {}),
        ("POST", "/api/v1/assessments/{assessment_id}/resume"): (assessment, {}),
        ("POST", "/api/v1/assessments/{assessment_id}/preference-dataset"): (
            assessment,
            {"json": {"name": "prefs"}},
        ),
        ("POST", "/api/v1/users"): (
            {},
            {"json": {"username": "newcomer", "password": "password-123", "role": "admin"}},
        ),
        ("DELETE", "/api/v1/users/{username}"): ({"username": "admin"}, {}),
        ("POST", "/api/v1/users/{username}/password"): (
            {"username": "admin"},
            {"json": {"new_password": "password-123"}},
        ),
        ("POST", "/api/v1/jobs/{job_id}/cancel"): ({"job_id": w.job}, {}),
        ("POST", "/api/v1/base-models"): (
            {},
            {"json": {"technical_name": "other", "hub_id": "HuggingFaceTB/SmolLM2-135M"}},
        ),
        ("PATCH", "/api/v1/base-models/{model_id}"): (
            {"model_id": w.base},
            {"json": {"model_name": "renamed"}},
        ),
        ("DELETE", "/api/v1/base-models/{model_id}"): ({"model_id": w.base}, {}),
        ("POST", "/api/v1/datasets"): (
            {},
            {
                "data": {"name": "more"},
                "files": {"file": ("more.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
            },
        ),
        ("DELETE", "/api/v1/datasets/{dataset_id}"): ({"dataset_id": w.dataset}, {}),
        ("POST", "/api/v1/training-methods"): (
            {},
            {"data": {"name": "other"}, "files": {"file": ("other.py", SCRIPT)}},
        ),
        ("DELETE", "/api/v1/training-methods/{name}"): ({"name": "loop"}, {}),
        ("POST", "/api/v1/trainings"): (
            {},
            {
                "json": {
                    "name": "again",
                    "method": "sft",
                    "base_model_id": w.base,
                    "dataset_id": w.dataset,
                }
            },
        ),
        ("POST", "/api/v1/trainings/{training_id}/cancel"): ({"training_id": w.training}, {}),
        ("POST", "/api/v1/trainings/{training_id}/resume"): ({"training_id": w.training}, {}),
        ("POST", "/api/v1/trainings/{training_id}/checkpoints/promote"): (
            {"training_id": w.training},
            {"json": {"step": 1}},
        ),
        ("POST", "/api/v1/profiles"): ({}, {"json": {"name": "slow", "params": {}}}),
        ("PATCH", "/api/v1/profiles/{profile_id}"): (
            {"profile_id": w.profile},
            {"json": {"name": "renamed"}},
        ),
        ("DELETE", "/api/v1/profiles/{profile_id}"): ({"profile_id": w.profile}, {}),
        ("POST", "/api/v1/reward-files"): (
            {},
            {"data": {"name": "mine"}, "files": {"file": ("mine.py", REWARD)}},
        ),
        ("DELETE", "/api/v1/customized-models/{model_id}"): ({"model_id": w.customized}, {}),
        ("POST", "/api/v1/customized-models/{model_id}/fidelity"): ({"model_id": w.customized}, {}),
        ("POST", "/api/v1/customized-models/{model_id}/save"): ({"model_id": w.customized}, {}),
        ("DELETE", "/api/v1/complete-models/{model_id}"): ({"model_id": w.complete}, {}),
        ("POST", "/api/v1/complete-models/{model_id}/push"): (
            {"model_id": w.complete},
            {"json": {"repo_id": "me/tiny"}},
        ),
        ("POST", "/api/v1/deploy-environments"): (
            {},
            {"json": {"name": "local", "kind": "llama.cpp"}},
        ),
        ("PATCH", "/api/v1/deploy-environments/{environment_id}"): (
            {"environment_id": w.environment},
            {"json": {"name": "renamed"}},
        ),
        ("DELETE", "/api/v1/deploy-environments/{environment_id}"): (
            {"environment_id": w.environment},
            {},
        ),
        ("POST", "/api/v1/deploy-environments/{environment_id}/test"): (
            {"environment_id": w.environment},
            {},
        ),
        ("POST", "/api/v1/complete-models/{model_id}/deploy"): (
            {"model_id": w.complete},
            deploy,
        ),
        ("POST", "/api/v1/customized-models/{model_id}/deploy"): (
            {"model_id": w.customized},
            deploy,
        ),
        ("POST", "/api/v1/base-models/{model_id}/deploy"): ({"model_id": w.base}, deploy),
        ("POST", "/api/v1/live-models/{live_id}/check"): ({"live_id": w.live}, {}),
        ("POST", "/api/v1/live-models/{live_id}/register"): ({"live_id": w.live}, {}),
        ("DELETE", "/api/v1/live-models/{live_id}"): ({"live_id": w.live}, {}),
        ("POST", "/api/v1/third-party-models"): (
            {},
            {"json": {"name": "other", "provider": "openai", "model_name": "gpt-4o-mini"}},
        ),
        ("PATCH", "/api/v1/third-party-models/{third_party_id}"): (
            {"third_party_id": w.third_party},
            {"json": {"description": "changed"}},
        ),
        ("DELETE", "/api/v1/third-party-models/{third_party_id}"): (
            {"third_party_id": w.third_party},
            {},
        ),
        ("POST", "/api/v1/third-party-models/{third_party_id}/test"): (
            {"third_party_id": w.third_party},
            {},
        ),
        ("POST", "/api/v1/base-models/demo"): ({}, {}),
        ("POST", "/api/v1/image-models"): ({}, {"json": {"name": "other", "path": "/models/sd"}}),
        ("DELETE", "/api/v1/image-models/{model}"): ({"model": "sd"}, {}),
        ("POST", "/api/v1/image-models/{model}/adapters"): (
            {"model": "sd"},
            {"data": {"name": "style"}, "files": {"file": ("style.safetensors", b"x")}},
        ),
        ("DELETE", "/api/v1/image-models/{model}/adapters/{adapter}"): (
            {"model": "sd", "adapter": "style"},
            {},
        ),
        ("POST", "/api/v1/image-models/{model}/adapters/train"): (
            {"model": "sd"},
            {"data": {"name": "squares"}, "files": {"archive": ("set.zip", b"x")}},
        ),
        ("POST", "/api/v1/images"): ({}, {"json": {"model": "sd", "prompt": "a cat"}}),
        ("DELETE", "/api/v1/images/{image_id}"): ({"image_id": "x"}, {}),
        ("POST", "/v1/images/generations"): ({}, {"json": {"model": "sd", "prompt": "a cat"}}),
        ("POST", "/v1/images/edits"): (
            {},
            {"data": {"model": "sd", "prompt": "a cat"}, "files": {"image": ("a.png", b"x")}},
        ),
        ("POST", "/api/v1/knowledge-bases"): (
            {},
            {"json": {"name": "more", "embedding_model": f"base:{w.base}"}},
        ),
        ("PATCH", "/api/v1/knowledge-bases/{kb}"): (
            {"kb": w.knowledge_base},
            {"json": {"name": "renamed"}},
        ),
        ("DELETE", "/api/v1/knowledge-bases/{kb}"): ({"kb": w.knowledge_base}, {}),
        ("POST", "/api/v1/knowledge-bases/{kb}/reindex"): ({"kb": w.knowledge_base}, {"json": {}}),
        ("POST", "/api/v1/knowledge-bases/{kb}/documents"): (
            {"kb": w.knowledge_base},
            {"files": {"file": ("more.md", b"# More")}},
        ),
        ("DELETE", "/api/v1/knowledge-bases/{kb}/documents/{document_id}"): (
            {"kb": w.knowledge_base, "document_id": w.document},
            {},
        ),
    }


def test_a_viewer_gets_403_from_every_route_that_changes_the_project(client, project_world):
    routes = {
        (method.upper(), path)
        for path, operations in client.app.openapi()["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete")
    }
    requests = route_requests(project_world)
    assert routes - VIEWER_ROUTES == set(requests), "list each new route above"
    viewer = login(client, "viewer-pass-1", username="vera")
    # A token's use is recorded in a transaction of its own (once a minute): record it first.
    assert client.get("/api/v1/auth/me", headers=viewer).status_code == 200
    before = project_state()
    answers = {}
    for (method, template), (path, arguments) in requests.items():
        url = template.format(**path)
        response = client.request(method, url, headers=viewer, **arguments)
        body = response.json()
        # The gateway (/v1) answers errors in OpenAI's shape.
        detail = body["error"]["message"] if template.startswith("/v1/") else body.get("detail")
        answers[(method, template)] = (response.status_code, detail)
    wrong = {
        route: answer
        for route, answer in answers.items()
        if answer[0] != 403 or "you are viewer" not in answer[1]
    }
    assert wrong == {}
    assert project_state() == before


@pytest.mark.console
def test_the_console_refuses_a_viewer_in_the_services_words(page, console_server, admin_password):
    from tests.console_harness import api_headers, console_url, log_in

    admin = api_headers(console_server, admin_password)
    api = f"{console_server.url}/api/v1"
    created = httpx.post(
        f"{api}/users",
        json={"username": "vera", "password": "viewer-pass-1", "role": "viewer"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    entry = httpx.post(
        f"{api}/third-party-models",
        json={
            "name": "mine",
            "provider": "openai-compatible",
            "model_name": "m",
            "base_url": f"http://127.0.0.1:{closed_port()}/v1",
        },
        headers=admin,
    )
    assert entry.status_code == 201, entry.text

    log_in(page, console_server, "viewer-pass-1", username="vera")
    page.goto(console_url(console_server, "/third-party-models"))
    page.get_by_test_id("probe-mine").click()
    page.get_by_text("This needs the member role; you are viewer.").first.wait_for()
    page.get_by_test_id("drop-mine").click()
    page.get_by_test_id("confirm").get_by_role("button", name="Delete").click()
    page.get_by_text("This needs the member role; you are viewer.").last.wait_for()
    page.reload()
    page.get_by_test_id("third-party-table").get_by_text("mine", exact=True).wait_for()
    assert httpx.get(f"{api}/third-party-models/mine", headers=admin).status_code == 200
