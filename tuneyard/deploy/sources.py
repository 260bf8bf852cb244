"""The models a deploy takes (base, customized, complete), resolved into plain values: their
folders, the deployment template and stop tokens, their lineage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.basemodels.service import base_model_of
from tuneyard.errors import Conflict
from tuneyard.modelref import Capability, ModelKind
from tuneyard.models import (
    BaseModel,
)


@dataclass(frozen=True)
class Source:
    """What a deploy hands over, resolved from the database into plain values."""

    kind: str  # base, customized, complete
    id: str
    name: str
    model_dir: Path  # the full model (for a customized model: its base)
    adapter_dir: Path | None  # a customized model's adapter
    base_model_id: str | None
    base_name: str | None
    deployment_template: str | None
    stop: list[str]
    lineage: dict[str, Any]


def _template_of(base: BaseModel | None, folder: Path) -> tuple[str | None, list[str]]:
    """The base's deployment template and stop tokens, or ones derived from the folder."""
    if base is not None and base.deployment_template:
        return base.deployment_template, list(base.model_card.get("deployment_stop_tokens", []))
    from tuneyard.basemodels.card import read_chat_template, read_model_card
    from tuneyard.basemodels.template import derive_template

    chat_template, _ = read_chat_template(folder)
    tokens = read_model_card(folder)["special_tokens"]
    derived = derive_template(chat_template, tokens["eos"], tokens["bos"])
    return derived.text, derived.stop


def _ready_dir(path: str | None, what: str) -> Path:
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        raise Conflict(f"The folder of {what} ({path}) is gone; it cannot be deployed.")
    return folder


def resolve_source(session: Session, principal: Principal, kind: str, source_id: str) -> Source:
    """The model a deploy names, checked to be deployable and to have its files."""
    found = modelref.find(session, principal, kind, source_id, Capability.DEPLOY)
    if found.kind is ModelKind.BASE:
        base = found.row
        if base.status != "ready":
            raise Conflict(
                f"Base model '{base.technical_name}' is {base.status}; deploy it once ready."
            )
        folder = _ready_dir(base.path, f"base model '{base.technical_name}'")
        template, stop = _template_of(base, folder)
        return Source(
            "base",
            base.id,
            base.technical_name,
            folder,
            None,
            base.id,
            base.technical_name,
            template,
            stop,
            {"base_model": base.technical_name, "base_model_id": base.id},
        )
    row = found.row
    if found.kind is ModelKind.COMPLETE:
        if row.status != "ready":
            raise Conflict(f"Complete model {row.name} is {row.status}; deploy it once ready.")
        folder = _ready_dir(row.path, f"complete model {row.name}")
        template, stop = _template_of(base_model_of(session, row), folder)
        lineage = dict((row.model_card or {}).get("lineage", {}))
        lineage.update(complete_model=row.name, complete_model_id=row.id)
        return Source(
            "complete",
            row.id,
            row.name,
            folder,
            None,
            row.base_model_id,
            lineage.get("base_model"),
            template,
            stop,
            lineage,
        )
    adapter_dir = _ready_dir(row.path, f"customized model {row.name}")
    base = base_model_of(session, row)
    if base is None:
        raise Conflict(
            f"The base model of customized model {row.name} was deleted; an adapter is "
            "served on its base, so deploy a complete model saved from it instead."
        )
    if base.status != "ready":
        raise Conflict(f"Base model '{base.technical_name}' is {base.status}.")
    base_dir = _ready_dir(base.path, f"base model '{base.technical_name}'")
    template, stop = _template_of(base, base_dir)
    lineage = dict((row.model_card or {}).get("lineage", {}))
    lineage.update(customized_model=row.name, customized_model_id=row.id)
    return Source(
        "customized",
        row.id,
        row.name,
        base_dir,
        adapter_dir,
        base.id,
        base.technical_name,
        template,
        stop,
        lineage,
    )
