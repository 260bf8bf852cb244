"""What a job uses: typed keys for the resources a job reads or writes.

A job lists its keys in `uses`; deleting a resource is refused while an active job lists its
key (jobs.service.ensure_not_in_use). The key is stored as the text `resource:id`, and both
sides must spell it the same, so it is only ever made here: the jobs service takes `UseKey`
values, never text, and a resource missing from `Resource` is an error where it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tuneyard.modelref import ModelKind


class Resource(StrEnum):
    """Every kind of resource a job can hold against deletion."""

    BASE_MODEL = "base_model"
    DATASET = "dataset"
    TRAINING = "training"
    TRAINING_METHOD = "training_method"
    CUSTOMIZED_MODEL = "customized_model"
    COMPLETE_MODEL = "complete_model"
    LIVE_MODEL = "live_model"
    DEPLOY_ENVIRONMENT = "deploy_environment"
    THIRD_PARTY_MODEL = "third_party_model"
    ASSESSMENT = "assessment"
    KNOWLEDGE_BASE = "knowledge_base"
    KNOWLEDGE_DOCUMENT = "knowledge_document"
    IMAGE_MODEL = "image_model"
    IMAGE_ADAPTER = "image_adapter"


@dataclass(frozen=True)
class UseKey:
    """One resource, by kind and id; `str()` is the stored `resource:id`."""

    resource: Resource
    id: str

    def __post_init__(self) -> None:
        if not isinstance(self.resource, Resource):
            raise TypeError(f"A job's resource is a Resource member, not {self.resource!r}.")
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"A {self.resource.value} key needs the resource's id.")

    def __str__(self) -> str:
        return f"{self.resource.value}:{self.id}"


_MODEL_RESOURCES = {
    ModelKind.BASE: Resource.BASE_MODEL,
    ModelKind.CUSTOMIZED: Resource.CUSTOMIZED_MODEL,
    ModelKind.COMPLETE: Resource.COMPLETE_MODEL,
    ModelKind.LIVE: Resource.LIVE_MODEL,
    ModelKind.THIRD_PARTY: Resource.THIRD_PARTY_MODEL,
}


def model_key(kind: ModelKind | str, model_id: str) -> UseKey:
    """The key of a model of any kind (`base`, `customized`, ... as tuneyard.modelref names
    them)."""
    return UseKey(_MODEL_RESOURCES[ModelKind(kind)], model_id)


def stored(keys: list[UseKey]) -> list[str]:
    """The keys as a job row keeps them; anything but a UseKey is refused."""
    for key in keys:
        check(key)
    return [str(key) for key in keys]


def check(key: UseKey) -> UseKey:
    if not isinstance(key, UseKey):
        raise TypeError(
            f"Job resources are UseKey values (tuneyard.jobs.keys), not {key!r}: a key typed "
            "by hand that is spelled wrong would leave its resource unguarded."
        )
    return key
