"""The fidelity check: a customized model against its complete and live models, on the same
prompts, greedily; and the rule that finds a live model's figure for its card."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard.assessment.schemas import (
    CandidateIn,
    FidelityIn,
    GenerationParams,
    Sample,
)
from tuneyard.assessment.service import (
    FIDELITY,
    _by_name,
    _enqueue,
    _model,
    _params,
    _plan,
)
from tuneyard.auth.service import Principal
from tuneyard.datasets import service as datasets
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.modelref import parse_reference
from tuneyard.models import (
    Assessment,
    AssessmentRow,
    CompleteModel,
    CustomizedModel,
    Dataset,
    LiveModel,
    Training,
    new_id,
)

# -- fidelity across the lifecycle -------------------------------------------------------------

MAX_STAGES = 8
# Fidelity checks read at a time while looking for a live model's latest.
FIDELITY_PAGE = 50
# What a record asks and answers, by the dataset's format: (prompt template, reference column).
_FORMAT_PROMPTS = {
    "chat": ("{{messages}}", "messages"),
    "prompt_completion": ("{{prompt}}", "completion"),
    "preference": ("{{prompt}}", "chosen"),
    "prompt_only": ("{{prompt}}", "answer"),
    "alpaca": ("{{instruction}}", "output"),
}


def _format_prompt(dataset: Dataset) -> tuple[str, str | None]:
    fields = dataset.fields or []
    template, reference = _FORMAT_PROMPTS.get(dataset.format or "", ("{{prompt}}", None))
    if dataset.format == "alpaca" and "input" in fields:
        template = "{{instruction}}\n\n{{input}}"
    return template, reference if reference in fields else None


def _stages(session: Session, principal: Principal, source) -> list[tuple[str, str]]:
    """(stage, reference) of the models made from a customized model that can answer now: its
    complete models, oldest first, then the live models of it or of them."""
    from tuneyard.complete.service import usable_complete
    from tuneyard.deploy.service import usable_live

    completes = [
        m for m in usable_complete(session, principal) if m.customized_model_id == source.id
    ]
    completes.sort(key=lambda m: m.created_at)
    origins = {("customized", source.id)} | {("complete", m.id) for m in completes}
    lives = [m for m in usable_live(session, principal) if (m.source_kind, m.source_id) in origins]
    lives.sort(key=lambda m: m.created_at)
    stages = [("complete", f"complete:{m.id}") for m in completes]
    stages += [(f"live {m.quantization}", f"live:{m.id}") for m in lives]
    return stages


def start_fidelity(
    session: Session, principal: Principal, customized_id: str, request: FidelityIn
) -> Assessment:
    """Compare a customized model with its complete models and live models (each
    quantization) on the same prompts, greedily: per stage, identical answers, word
    agreement and reference metrics. Each live model's card gets its figure."""
    principal.require("member")
    from tuneyard.customized.service import get_customized
    from tuneyard.training.service import get_training

    source = get_customized(session, principal, customized_id)
    stages = _stages(session, principal, source)
    if not stages:
        raise Conflict(
            f"Customized model {source.name} has no complete or live model that can answer; "
            "save it or deploy it first, then check that they answer as it does."
        )
    stages = stages[-(MAX_STAGES - 1) :]
    if request.dataset_id is not None:
        dataset = datasets.find_dataset(session, principal, request.dataset_id)
    else:
        training = (
            get_training(session, principal, source.training_id) if source.training_id else None
        )
        if training is None or training.dataset_id is None:
            raise Invalid(
                f"The dataset customized model {source.name} was trained on is gone; name a "
                "dataset_id to check it on."
            )
        dataset = datasets.get_dataset(session, principal, training.dataset_id)
    datasets.ensure_ready(dataset)
    template, reference = _format_prompt(dataset)
    params = GenerationParams(temperature=0, max_tokens=request.max_tokens)
    models = [("customized", f"customized:{source.id}"), *stages]
    plan = _plan(
        session,
        principal,
        dataset,
        Sample(size=min(request.size, dataset.record_count), seed=request.seed),
        [
            CandidateIn(
                model=ref, system=request.system, prompt=request.prompt or template, params=params
            )
            for _stage, ref in models
        ],
        None,
        reference,
        None,
    )
    config = plan.config
    for candidate, (stage, _ref) in zip(config["candidates"], models, strict=True):
        candidate["stage"] = stage
    config["kind"] = FIDELITY
    config["source"] = {"customized_id": source.id, "name": source.name}
    name = (request.name or f"fidelity {source.name[:150]} {new_id()[:4]}").strip()
    if _by_name(session, principal, name) is not None:
        raise Conflict(f"An assessment named '{name}' already exists; choose another name.")
    assessment = Assessment(
        project_id=principal.project_id,
        name=name,
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        dataset_digest=dataset.digest,
        config=config,
        row_count=config["sample"]["size"],
        created_by=principal.user_id,
    )
    session.add(assessment)
    session.flush()
    _enqueue(session, principal, assessment)
    return assessment


# -- the check each deploy runs on its new live model ------------------------------------------

# Asked when the source has no training dataset to draw prompts from (a base model, a dataset
# since deleted): short questions whose greedy answers start at once.
BUILT_IN_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is 12 plus 7?",
    "Give a synonym for 'happy'.",
    "Translate 'good morning' into Spanish.",
    "List the days of the week.",
    "What does a thermometer measure?",
    "Describe a cat in five words.",
    "Why is the sky blue? Answer in one sentence.",
    "Write a haiku about autumn.",
    "What is the opposite of 'cold'?",
    "Count from one to five.",
    "Name a planet in the solar system.",
    "Finish the sentence: The quick brown fox",
    "Say hello in one short sentence.",
)
BUILT_IN_DATASET = "built-in prompts"
LIVE_MAX_TOKENS = 64


def _training_dataset(session: Session, principal: Principal, live: LiveModel) -> Dataset | None:
    """The ready dataset the live model's source was trained on, if it still has one."""
    training_id = None
    if live.source_kind == "customized":
        customized = session.get(CustomizedModel, live.source_id)
        training_id = customized.training_id if customized is not None else None
    elif live.source_kind == "complete":
        complete = session.get(CompleteModel, live.source_id)
        training_id = complete.training_id if complete is not None else None
    training = session.get(Training, training_id) if training_id else None
    if training is None or training.dataset_id is None:
        return None
    try:
        dataset = datasets.get_dataset(session, principal, training.dataset_id)
        datasets.ensure_ready(dataset)
    except (NotFound, Conflict, Invalid):
        return None
    return dataset if dataset.record_count else None


def start_live_fidelity(
    session: Session, principal: Principal, live: LiveModel, size: int
) -> Assessment:
    """Compare a live model with the model it was deployed from (a base, customized or
    complete model) on `size` prompts at temperature 0: drawn from the source's training
    dataset where it has one, else the built-in prompts. Its figure goes on the live model's
    card once the check's job has run."""
    principal.require("member")
    if size < 1:
        raise Invalid("A fidelity check asks at least one prompt.")
    source_ref = f"{live.source_kind}:{live.source_id}"
    stage = f"live {live.quantization}"
    params = GenerationParams(temperature=0, max_tokens=LIVE_MAX_TOKENS)
    dataset = _training_dataset(session, principal, live)
    if dataset is not None:
        template, reference = _format_prompt(dataset)
        plan = _plan(
            session,
            principal,
            dataset,
            Sample(size=min(size, dataset.record_count)),
            [
                CandidateIn(model=ref, prompt=template, params=params)
                for ref in (source_ref, f"live:{live.id}")
            ],
            None,
            reference,
            None,
        )
        config = plan.config
    else:
        asked = BUILT_IN_PROMPTS[:size]
        config = {
            "sample": {"size": len(asked), "seed": None},
            "candidates": [
                {
                    **_model(session, principal, ref, where),
                    "system": None,
                    "prompt": "{{prompt}}",
                    "params": _params(params),
                }
                for ref, where in ((source_ref, "source"), (f"live:{live.id}", "live model"))
            ],
            "judge": None,
            "reference_column": None,
            "metrics": [],
        }
    source, target = config["candidates"]
    source["stage"], target["stage"] = live.source_kind, stage
    config["kind"] = FIDELITY
    config["source"] = {"kind": live.source_kind, "id": live.source_id, "name": source["name"]}
    config["live_model_id"] = live.id
    name = f"fidelity {live.name[:150]} {new_id()[:8]}"
    while _by_name(session, principal, name) is not None:
        name = f"fidelity {live.name[:150]} {new_id()[:8]}"
    assessment = Assessment(
        project_id=principal.project_id,
        name=name,
        dataset_id=dataset.id if dataset is not None else None,
        dataset_name=dataset.name if dataset is not None else BUILT_IN_DATASET,
        dataset_digest=dataset.digest if dataset is not None else None,
        config=config,
        row_count=config["sample"]["size"],
        created_by=principal.user_id,
    )
    session.add(assessment)
    session.flush()
    if dataset is None:
        # The rows carry their records: the run finds its sample written and draws nothing.
        session.add_all(
            AssessmentRow(
                assessment_id=assessment.id,
                position=position,
                record_index=position,
                record={"prompt": prompt},
            )
            for position, prompt in enumerate(BUILT_IN_PROMPTS[: config["sample"]["size"]])
        )
    _enqueue(session, principal, assessment)
    return assessment


def fidelity_figures(assessment: Assessment) -> dict[str, dict[str, Any]]:
    """{live model id: its figure} of a finished fidelity check."""
    summary = assessment.summary or {}
    figures = {}
    for stage in (summary.get("fidelity") or {}).get("stages", []):
        kind, model_id = parse_reference(stage["model"])
        if kind is None or kind.value != "live":
            continue
        quantization = stage["stage"].removeprefix("live ")
        tokens = stage["token_agreement"]["mean"]
        text = (
            f"{quantization} agrees with its source on {stage['identical']} of "
            f"{stage['compared']} prompts"
            if stage["compared"]
            else f"{quantization} could not be compared with its source: no prompt was "
            "answered by both"
        )
        figures[model_id] = {
            "assessment_id": assessment.id,
            "assessment_name": assessment.name,
            "source": assessment.config["source"]["name"],
            "identical": stage["identical"],
            "compared": stage["compared"],
            "identical_rate": stage["identical_rate"],
            "token_agreement": tokens,
            "text": text,
            "checked_at": assessment.finished_at.isoformat() if assessment.finished_at else None,
        }
    return figures


def live_fidelity(session: Session, principal: Principal, live_id: str) -> dict[str, Any] | None:
    """The figure of a live model (how often it answers as its source): from the latest
    fidelity check of the project that succeeded and included it; None if none did."""
    checks = session.scalars(
        select(Assessment)
        .where(
            Assessment.project_id == principal.project_id,
            Assessment.status == "succeeded",
            Assessment.config["kind"].as_string() == FIDELITY,
        )
        .order_by(Assessment.finished_at.desc(), Assessment.created_at.desc(), Assessment.id)
        .execution_options(yield_per=FIDELITY_PAGE)
    )
    ref = f"live:{live_id}"
    for check in checks:
        if any(candidate["model"] == ref for candidate in check.config["candidates"]):
            return fidelity_figures(check).get(live_id)
    return None
