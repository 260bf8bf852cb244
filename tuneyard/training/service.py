"""Starting, following, cancelling and resuming trainings; parameter profiles; reward files.

Everything a training will need is checked here, before a job exists: the method, every
parameter, the dataset's format (and the method's own checks of it), the chat template. The
hardware an option needs is checked by the job, on the machine that runs it.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.config import get_settings
from tuneyard.errors import Conflict, Invalid, NotFound, Unavailable
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import (
    BaseModel,
    Dataset,
    Training,
    TrainingMetric,
    TrainingProfile,
)
from tuneyard.pagination import paginate
from tuneyard.storage import Layout, atomic_file
from tuneyard.training.custom import (
    CustomMethod,
    find_method,
    require_code_runs,
    require_code_uploads,
)
from tuneyard.training.methods import TrainingMethod
from tuneyard.training.params import (
    REWARD_FILE_PREFIX,
    REWARD_NAME_RE,
    REWARD_NAME_RULE,
    CommonParams,
    GRPOParams,
)
from tuneyard.training.schemas import TRAIN_NAME_PATTERN

NAME_RE = re.compile(TRAIN_NAME_PATTERN)
ACTIVE = ("queued", "running")


def ensure_training_available() -> None:
    settings = get_settings()
    if not settings.training_enabled:
        raise Unavailable(
            "Training is disabled (training-free mode). Set TUNEYARD_TRAINING_ENABLED=true "
            "and restart Tuneyard to train, save and deploy."
        )
    if not settings.training_available:
        raise Unavailable(
            "Training needs the training extras, which are not installed. Install them with "
            "`pip install 'tuneyard[train]'` and restart Tuneyard."
        )


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown parameter"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def validate_params(method: TrainingMethod | CustomMethod, params: dict[str, Any]) -> CommonParams:
    try:
        return method.params_model.model_validate(params)
    except ValidationError as exc:
        raise Invalid(
            f"Invalid parameters for {method.name}: {_format_validation(exc)}. "
            f"See GET /api/v1/training-methods for every parameter."
        ) from None


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    config = folder / "tokenizer_config.json"
    if config.exists():
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    return False


def check_dataset_fits(
    method: TrainingMethod | CustomMethod, dataset: Dataset, params: CommonParams
) -> None:
    if dataset.status != "ready":
        raise Conflict(
            f"Dataset '{dataset.name}' is {dataset.status}; train on a dataset that parsed."
        )
    if dataset.format not in method.formats:
        raise Invalid(
            f"Dataset '{dataset.name}' is in {dataset.format} format, but {method.name} trains "
            f"on {' or '.join(method.formats)} records. Pick another dataset or method."
        )
    if method.check_dataset is not None:
        method.check_dataset(dataset, params)


def _get(session: Session, principal: Principal, model, item_id: str, what: str, hint: str):
    row = session.get(model, item_id)
    if row is None or row.project_id != principal.project_id:
        raise NotFound(f"No {what} '{item_id}'. {hint}")
    return row


def get_training(session: Session, principal: Principal, training_id: str) -> Training:
    return _get(
        session,
        principal,
        Training,
        training_id,
        "training",
        "List them with `tuneyard train list`.",
    )


def get_profile(session: Session, principal: Principal, profile_id: str) -> TrainingProfile:
    return _get(
        session,
        principal,
        TrainingProfile,
        profile_id,
        "profile",
        "List them with GET /api/v1/profiles.",
    )


def _reward_file_path(project_id: str, name: str) -> Path:
    """The project's uploaded reward file `name`: a name by the rule, a file that lies in the
    project's reward folder (a link leading elsewhere is no reward file)."""
    if not REWARD_NAME_RE.fullmatch(name or ""):
        raise Invalid(f"'{name}' is not a reward file name: use {REWARD_NAME_RULE}.")
    folder = Layout().reward_dir(project_id)
    path = folder / f"{name}.py"
    if not path.is_file() or path.resolve().parent != folder.resolve():
        raise Invalid(f"No reward file '{name}'. Upload one with POST /api/v1/reward-files.")
    return path


def resolve_reward_files(principal: Principal, params: CommonParams) -> dict[str, str]:
    if not isinstance(params, GRPOParams):
        return {}
    found = {}
    for reward in params.rewards:
        if reward.startswith(REWARD_FILE_PREFIX):
            name = reward.removeprefix(REWARD_FILE_PREFIX)
            require_code_runs(get_settings(), f"Reward file {name}")
            found[name] = str(_reward_file_path(principal.project_id, name))
    return found


def start_training(
    session: Session,
    principal: Principal,
    *,
    name: str,
    method: str,
    base_model_id: str,
    dataset_id: str,
    params: dict[str, Any] | None = None,
    profile_id: str | None = None,
) -> Training:
    principal.require("member")
    ensure_training_available()
    if not NAME_RE.fullmatch(name or ""):
        raise Invalid("A train name is 1-100 letters, digits, '.', '_' or '-'.")
    chosen = find_method(session, principal, method)
    if isinstance(chosen, CustomMethod):
        require_code_runs(get_settings(), f"Training method {chosen.name}")
    merged: dict[str, Any] = {}
    if profile_id:
        profile = get_profile(session, principal, profile_id)
        if profile.method and profile.method != chosen.name:
            raise Invalid(f"Profile '{profile.name}' is for {profile.method}, not {chosen.name}.")
        merged.update(profile.params)
    merged.update(params or {})
    validated = validate_params(chosen, merged)

    base = _get(
        session,
        principal,
        BaseModel,
        base_model_id,
        "base model",
        "List them with `tuneyard base list`.",
    )
    if base.status != "ready" or not base.path:
        raise Conflict(f"Base model '{base.technical_name}' is {base.status}; wait until ready.")
    if base.model_type != "chat":
        raise Invalid(
            f"Base model '{base.technical_name}' is an embedding model; train a chat model."
        )
    dataset = _get(
        session,
        principal,
        Dataset,
        dataset_id,
        "dataset",
        "List them with `tuneyard data list`.",
    )
    check_dataset_fits(chosen, dataset, validated)
    if chosen.needs_chat_template and not has_chat_template(Path(base.path)):
        raise Invalid(
            f"Base model '{base.technical_name}' has no chat template, which {chosen.name} "
            "needs to format conversations. Use a model whose tokenizer has one."
        )
    reward_files = resolve_reward_files(principal, validated)

    training = Training(
        project_id=principal.project_id,
        name=name,
        method=chosen.name,
        base_model_id=base.id,
        base_model_name=base.technical_name,
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        dataset_digest=dataset.digest,
        profile_id=profile_id,
        params=validated.model_dump(mode="json"),
        created_by=principal.user_id,
    )
    session.add(training)
    session.flush()
    _enqueue_run(session, principal, training, chosen, reward_files)
    return training


def _enqueue_run(
    session,
    principal,
    training: Training,
    method: TrainingMethod | CustomMethod,
    reward_files: dict[str, str],
) -> None:
    uses = [UseKey(Resource.TRAINING, training.id)]
    # A resumed training whose base model or dataset was deleted since has none to hold.
    if training.base_model_id is not None:
        uses.append(UseKey(Resource.BASE_MODEL, training.base_model_id))
    if training.dataset_id is not None:
        uses.append(UseKey(Resource.DATASET, training.dataset_id))
    kind = "training.run"
    if isinstance(method, CustomMethod):
        kind = "training.custom"
        uses.append(UseKey(Resource.TRAINING_METHOD, method.script_id))  # not deleted while it runs
    job = jobs.enqueue(
        session,
        principal,
        kind,
        {
            "training_id": training.id,
            "reward_files": reward_files,
            # What the job asks of the machine that runs it (see training_resources).
            "workers": training.params.get("workers", 1),
            "gpus_per_worker": training.params.get("gpus_per_worker", -1),
        },
        uses=uses,
        message=f"Training {training.name} waits for a worker",
    )
    training.job_id = job.id
    training.status = "queued"
    training.error = None
    training.finished_at = None


def list_trainings(
    session: Session, principal: Principal, status: str | None = None, limit=50, offset=0
):
    stmt = select(Training).where(Training.project_id == principal.project_id)
    if status:
        stmt = stmt.where(Training.status == status)
    return paginate(session, stmt.order_by(Training.created_at.desc(), Training.id), limit, offset)


def metrics(session: Session, principal: Principal, training_id: str) -> dict[str, Any]:
    """Series per metric, aligned by step: {"train": {"loss": [[step, v], ...]}, "eval": ...}."""
    training = get_training(session, principal, training_id)
    rows = session.scalars(
        select(TrainingMetric)
        .where(TrainingMetric.training_id == training.id)
        .order_by(TrainingMetric.step)
    ).all()
    series: dict[str, dict[str, list]] = {"train": {}, "eval": {}}
    for row in rows:
        for key, value in row.data.items():
            series[row.kind].setdefault(key, []).append([row.step, value])
    return {
        "training_id": training.id,
        "series": series,
        "steps": [r.step for r in rows if r.kind == "train"],
    }


def compare(session: Session, principal: Principal, training_ids: list[str], metric: str = "loss"):
    """One metric of two or more trainings, aligned on the union of their steps."""
    if len(training_ids) < 2:
        raise Invalid("Compare needs at least two training ids.")
    per_training: dict[str, dict[str, Any]] = {}
    for training_id in training_ids:
        training = get_training(session, principal, training_id)
        points = metrics(session, principal, training.id)["series"]
        values = dict(map(tuple, points["train"].get(metric, []) or points["eval"].get(metric, [])))
        per_training[training.id] = {"name": training.name, "values": values}
    steps = sorted({step for t in per_training.values() for step in t["values"]})
    return {
        "metric": metric,
        "steps": steps,
        "trainings": [
            {"id": tid, "name": t["name"], "values": [t["values"].get(step) for step in steps]}
            for tid, t in per_training.items()
        ],
    }


def checkpoint_steps(session: Session, principal: Principal, training_id: str) -> list[int]:
    """The steps at which the training kept a checkpoint (to resume, or to promote one)."""
    from tuneyard.training.checkpoints import CHECKPOINT_PREFIX, checkpoints

    training = get_training(session, principal, training_id)
    return [
        int(path.name.removeprefix(CHECKPOINT_PREFIX))
        for path in checkpoints(Layout().training_dir(training.id))
    ]


def cancel_training(session: Session, principal: Principal, training_id: str) -> Training:
    principal.require("member")
    training = get_training(session, principal, training_id)
    if training.status not in ACTIVE or not training.job_id:
        raise Conflict(f"Training {training.name} is {training.status}; nothing to cancel.")
    job = jobs.cancel_job(session, principal, training.job_id)
    if job.status == "cancelled":
        training.status = "cancelled"
    return training


def resume_training(session: Session, principal: Principal, training_id: str) -> Training:
    """Start a stopped training again; it continues from its last checkpoint."""
    principal.require("member")
    ensure_training_available()
    training = get_training(session, principal, training_id)
    if training.status in ACTIVE:
        raise Conflict(f"Training {training.name} is already {training.status}.")
    if training.status == "succeeded":
        raise Conflict(f"Training {training.name} has finished; start a new one to train more.")
    if training.base_model_id is None or training.dataset_id is None:
        raise Conflict("The base model or dataset of this training was deleted; it cannot resume.")
    method = find_method(session, principal, training.method)
    if isinstance(method, CustomMethod):
        require_code_runs(get_settings(), f"Training method {method.name}")
    params = validate_params(method, training.params)
    _enqueue_run(session, principal, training, method, resolve_reward_files(principal, params))
    return training


def copy_settings(session: Session, principal: Principal, training_id: str) -> dict[str, Any]:
    """An existing training's settings, ready to start a new one ("copy the train")."""
    training = get_training(session, principal, training_id)
    return {
        "name": f"{training.name}-copy"[:100],
        "method": training.method,
        "base_model_id": training.base_model_id,
        "dataset_id": training.dataset_id,
        "params": training.params,
    }


# -- profiles ---------------------------------------------------------------------------------


def create_profile(
    session: Session,
    principal: Principal,
    name: str,
    params: dict,
    method: str | None = None,
    description: str = "",
) -> TrainingProfile:
    principal.require("member")
    if not name or len(name) > 100:
        raise Invalid("A profile name is 1-100 characters.")
    _check_profile_params(session, principal, params, method)
    _check_profile_name_free(session, principal, name)
    profile = TrainingProfile(
        project_id=principal.project_id,
        name=name,
        method=method,
        params=params,
        description=description,
    )
    session.add(profile)
    session.flush()
    return profile


def _check_profile_name_free(session: Session, principal: Principal, name: str) -> None:
    if session.scalar(
        select(TrainingProfile).where(
            TrainingProfile.project_id == principal.project_id, TrainingProfile.name == name
        )
    ):
        raise Conflict(f"A profile named '{name}' already exists; choose another name.")


def _check_profile_params(session, principal, params: dict, method: str | None) -> None:
    """A profile holds a subset of parameters; each must be valid for its method (or any)."""
    names = [method] if method else ["sft"]
    for name in names:
        chosen = find_method(session, principal, name)
        unknown = set(params) - set(chosen.params_model.model_fields)
        if unknown and method:
            raise Invalid(f"Unknown parameters for {name}: {', '.join(sorted(unknown))}.")
        known = {k: v for k, v in params.items() if k in chosen.params_model.model_fields}
        validate_params(chosen, known)


def list_profiles(session: Session, principal: Principal, limit=50, offset=0):
    stmt = select(TrainingProfile).where(TrainingProfile.project_id == principal.project_id)
    return paginate(session, stmt.order_by(TrainingProfile.name), limit, offset)


def update_profile(session, principal, profile_id, *, name=None, params=None, description=None):
    principal.require("member")
    profile = get_profile(session, principal, profile_id)
    if params is not None:
        _check_profile_params(session, principal, params, profile.method)
        profile.params = params
    if name is not None and name != profile.name:
        _check_profile_name_free(session, principal, name)
        profile.name = name
    if description is not None:
        profile.description = description
    session.flush()
    return profile


def delete_profile(session, principal, profile_id) -> None:
    principal.require("member")
    session.delete(get_profile(session, principal, profile_id))


# -- reward files -----------------------------------------------------------------------------


def save_reward_file(principal: Principal, name: str, source: bytes) -> str:
    """Store a GRPO reward function file (an admin who is the operator, with code uploads on:
    it runs as code in training jobs)."""
    require_code_uploads(principal)
    if not REWARD_NAME_RE.fullmatch(name or ""):
        raise Invalid(f"A reward file name is {REWARD_NAME_RULE}.")
    try:
        text = source.decode("utf-8")
        tree = ast.parse(text, f"{name}.py")
    except (UnicodeDecodeError, SyntaxError) as exc:
        raise Invalid(f"The reward file is not valid UTF-8 Python: {exc}") from None
    if not any(getattr(node, "name", None) == "reward" for node in tree.body):
        raise Invalid("The reward file must define `def reward(completions, **columns)`.")
    path = Layout().reward_file(principal.project_id, name)
    with atomic_file(path, "w") as handle:
        handle.write(text)
    return name


def list_reward_files(principal: Principal) -> list[str]:
    folder = Layout().reward_dir(principal.project_id)
    return sorted(p.stem for p in folder.glob("*.py")) if folder.exists() else []
