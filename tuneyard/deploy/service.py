"""Deploys: the deploy domain's service.

A deploy checks everything it can before any upload (the target supports the architecture,
the quantization is allowed, the chat template exists and the deployment template renders the
same prompt), then creates the live model (status "deploying") and a job that hands the model
to the serving tool. The live model is "live" only once the tool answers for it.

Environments (tuneyard.deploy.environments), the models a deploy takes
(tuneyard.deploy.sources) and live models (tuneyard.deploy.live) have modules of their own;
their public names are re-exported here, so `from tuneyard.deploy import service` reaches
the whole domain.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.deploy.environments import (
    ENVIRONMENT_NAME,
    create_environment,
    delete_environment,
    ensure_managed_key,
    environment_out,
    get_environment,
    is_managed,
    list_environments,
    live_models_in,
    test_environment,
    update_environment,
)
from tuneyard.deploy.live import (
    LIVE_STATUSES,
    add_live_model,
    check_live,
    delete_live,
    get_live,
    list_live,
    live_api_key,
    live_base_to_reuse,
    live_model_name,
    live_summary,
    register_live,
    usable_live,
)
from tuneyard.deploy.quantization import NO_QUANTIZATION, check_quantization
from tuneyard.deploy.sources import Source, resolve_source
from tuneyard.errors import Invalid
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey, model_key
from tuneyard.models import LiveModel

__all__ = [
    "DEPLOY_JOB",
    "ENVIRONMENT_NAME",
    "LIVE_STATUSES",
    "Source",
    "add_live_model",
    "check_live",
    "create_environment",
    "delete_environment",
    "delete_live",
    "ensure_managed_key",
    "environment_out",
    "get_environment",
    "get_live",
    "is_managed",
    "list_environments",
    "list_live",
    "live_api_key",
    "live_base_to_reuse",
    "live_model_name",
    "live_models_in",
    "live_summary",
    "register_live",
    "resolve_source",
    "start_deploy",
    "test_environment",
    "update_environment",
    "usable_live",
]

DEPLOY_JOB = "deploy.model"


def _check_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    parameters = dict(parameters or {})
    for key, value in parameters.items():
        if not re.match(r"^[a-z_][a-z0-9_]*$", key):
            raise Invalid(f"Parameter name '{key}' is not a serving parameter name.")
        if not isinstance(value, str | int | float | bool | list):
            raise Invalid(f"Parameter '{key}' must be a number, a string, a bool or a list.")
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            raise Invalid(f"Parameter '{key}' must be a finite number, not NaN or Infinity.")
    return parameters


def start_deploy(
    session: Session,
    principal: Principal,
    source_kind: str,
    source_id: str,
    environment_id: str,
    quantization: str = NO_QUANTIZATION,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    allow_template_mismatch: bool = False,
    fidelity_check: bool = True,
) -> LiveModel:
    """Preflight, then create the live model (deploying) and its job."""
    from tuneyard.deploy.parity import check_parity
    from tuneyard.deploy.targets import target_for
    from tuneyard.training.service import ensure_training_available

    principal.require("member")
    ensure_training_available()
    check_quantization(quantization)
    parameters = _check_parameters(parameters)
    environment = get_environment(session, principal, environment_id)
    ensure_managed_key(environment)
    source = resolve_source(session, principal, source_kind, source_id)
    target = target_for(environment.kind)
    warnings = target.preflight(environment, source, quantization)
    parity = target.template_parity(environment, source) or check_parity(
        source.model_dir, source.deployment_template, f"base model '{source.base_name}'"
    )
    if parity.status == "mismatch" and not allow_template_mismatch:
        raise Invalid(f"Template parity check failed: {parity.detail}")
    row = add_live_model(
        session,
        principal.project_id,
        source,
        environment,
        quantization,
        system=system,
        parameters=parameters,
        deploy_card={
            "system": system,
            "parameters": parameters,
            "fidelity_check": fidelity_check,
        },
        card={"template_parity": parity.as_card(), "warnings": warnings},
    )
    job = jobs.enqueue(
        session,
        principal,
        DEPLOY_JOB,
        {
            "live_model_id": row.id,
            "fidelity_check": fidelity_check,
            "allow_template_mismatch": allow_template_mismatch,
        },
        uses=[
            model_key(source.kind, source.id),
            UseKey(Resource.LIVE_MODEL, row.id),
            UseKey(Resource.DEPLOY_ENVIRONMENT, environment.id),
        ],
        message=f"Waiting for a worker to deploy {row.name} to {environment.name}",
    )
    row.job_id = job.id
    return row
