"""Model references: how every part of Tuneyard names a model, finds it, and asks what it can do.

A reference is `kind:id_or_name`, the kind one of `base`, `customized`, `complete`, `live`,
`third-party`; the canonical form is `kind:id`. A bare name (or id) is looked up in every
kind, in one order everywhere (chat, the gateway, deploy, the CLI, the console):

    third-party, live, complete, customized, base   (most derived first)

Exactly one match resolves. A name that models of two kinds carry (a third-party entry
registered under its live model's name, a base model named like a third-party entry) is
refused with an error naming each candidate as `kind:id`: no kind silently wins, so a name
means the same model to every caller or is refused by every caller. The order is the order
kinds are searched and candidates named; lists (pickers, GET /v1/models) read in lifecycle
order, base first.

What each kind can do:

    kind                   chat  embed  deploy
    base (chat)            yes          yes
    base (embedding)             yes
    customized, complete   yes          yes
    live                   yes
    third-party (chat)     yes
    third-party (embedding)      yes

Whether a model can do it now (a complete model still saving, a live model stopped) is the
using code's check; this module says only what the kind can ever do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.errors import Invalid, NotFound


class ModelKind(StrEnum):
    """The kinds of model, in resolution order (most derived first)."""

    THIRD_PARTY = "third-party"
    LIVE = "live"
    COMPLETE = "complete"
    CUSTOMIZED = "customized"
    BASE = "base"


class Capability(StrEnum):
    CHAT = "chat"
    EMBED = "embed"
    DEPLOY = "deploy"


RESOLUTION_ORDER: tuple[ModelKind, ...] = tuple(ModelKind)
_KIND_NAMES = frozenset(kind.value for kind in ModelKind)
LIFECYCLE_ORDER: tuple[ModelKind, ...] = tuple(reversed(RESOLUTION_ORDER))

# What each kind can do (the table above); base and third-party models by their model_type.
_TYPED_KINDS = (ModelKind.BASE, ModelKind.THIRD_PARTY)
_CAN: dict[tuple[ModelKind, str | None], frozenset[Capability]] = {
    (ModelKind.BASE, "chat"): frozenset({Capability.CHAT, Capability.DEPLOY}),
    (ModelKind.BASE, "embedding"): frozenset({Capability.EMBED}),
    (ModelKind.CUSTOMIZED, None): frozenset({Capability.CHAT, Capability.DEPLOY}),
    (ModelKind.COMPLETE, None): frozenset({Capability.CHAT, Capability.DEPLOY}),
    (ModelKind.LIVE, None): frozenset({Capability.CHAT}),
    (ModelKind.THIRD_PARTY, "chat"): frozenset({Capability.CHAT}),
    (ModelKind.THIRD_PARTY, "embedding"): frozenset({Capability.EMBED}),
}
# Where a not-found message sends the reader to see what there is.
_LIST_HINT: dict[Capability | None, str] = {
    Capability.DEPLOY: "`tuneyard complete list`, `tuneyard customized list` or "
    "`tuneyard base list`",
}
_VERBS = {Capability.CHAT: "chat", Capability.EMBED: "embed text", Capability.DEPLOY: "be deployed"}


@dataclass(frozen=True)
class ModelRef:
    """A model named by kind and id; `str()` gives the canonical `kind:id`."""

    kind: ModelKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"


@dataclass(frozen=True)
class FoundModel:
    """A resolved reference: the model's row, canonical reference and lifecycle name."""

    ref: ModelRef
    name: str
    row: Any

    @property
    def kind(self) -> ModelKind:
        return self.ref.kind

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def created_at(self) -> datetime:
        return self.row.created_at

    @property
    def capabilities(self) -> frozenset[Capability]:
        return capabilities(self.kind, self.row)

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def describe(self) -> str:
        """How messages name the model, e.g. "base model 'tiny'", "live model tiny_d_ab12_q8_0"."""
        if self.kind is ModelKind.BASE:
            return f"base model '{self.name}'"
        return f"{self.kind.value} model {self.name}"


def capabilities(kind: ModelKind, row: Any) -> frozenset[Capability]:
    """What a model of `kind` (its row) can do."""
    model_type = row.model_type if kind in _TYPED_KINDS else None
    return _CAN.get((kind, model_type), frozenset())


def kinds_that_can(capability: Capability | None) -> tuple[ModelKind, ...]:
    """The kinds with models that can do `capability` (all for None), in resolution order."""
    if capability is None:
        return RESOLUTION_ORDER
    able = {kind for (kind, _), can in _CAN.items() if capability in can}
    return tuple(kind for kind in RESOLUTION_ORDER if kind in able)


def _choices(kinds: Iterable[ModelKind], last: str = "or") -> str:
    names = [kind.value for kind in kinds]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def parse_kind(text: str, capability: Capability | None = None) -> ModelKind:
    """A kind's name, checked (and checked to have models that can do `capability`)."""
    allowed = kinds_that_can(capability)
    try:
        kind = ModelKind(text)
    except ValueError:
        kind = None
    if kind not in allowed:
        raise Invalid(f"Unknown kind '{text}'; use one of: {', '.join(k.value for k in allowed)}.")
    return kind


def parse_reference(text: str) -> tuple[ModelKind | None, str]:
    """(kind, id or name) of `kind:id_or_name`; (None, text) for a bare name."""
    prefix, sep, rest = text.partition(":")
    if sep and rest and prefix in _KIND_NAMES:
        return ModelKind(prefix), rest
    return None, text


# -- finding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindLookup:
    """How the service that owns a kind finds its models."""

    # By id or name; NotFound when there is none the caller may see.
    find: Callable[[Session, Principal, str], Any]
    # The models ready to be used that the caller may see, in the service's own order.
    usable: Callable[[Session, Principal], list]


_LOOKUPS: dict[ModelKind, KindLookup] = {}
# The service that owns each kind; importing it registers the kind's lookup. The services
# import this module, so it names them rather than importing them.
OWNING_SERVICES = {
    ModelKind.BASE: "tuneyard.basemodels.service",
    ModelKind.CUSTOMIZED: "tuneyard.customized.service",
    ModelKind.COMPLETE: "tuneyard.complete.service",
    ModelKind.LIVE: "tuneyard.deploy.live",
    ModelKind.THIRD_PARTY: "tuneyard.thirdparty.service",
}


def register_kind(
    kind: ModelKind,
    find: Callable[[Session, Principal, str], Any],
    usable: Callable[[Session, Principal], list],
) -> None:
    """The owning service's lookups for `kind`; each service registers its own at import."""
    _LOOKUPS[kind] = KindLookup(find, usable)


def _lookup(kind: ModelKind) -> KindLookup:
    if kind not in _LOOKUPS:
        importlib.import_module(OWNING_SERVICES[kind])
    return _LOOKUPS[kind]


def _found(kind: ModelKind, row: Any) -> FoundModel:
    name = row.technical_name if kind is ModelKind.BASE else row.name
    return FoundModel(ModelRef(kind, row.id), name, row)


def require(found: FoundModel, capability: Capability) -> FoundModel:
    """`found`, or Invalid when its kind cannot do `capability`."""
    if found.can(capability):
        return found
    what = found.describe()
    what = what[0].upper() + what[1:]
    if found.kind in (ModelKind.BASE, ModelKind.THIRD_PARTY):
        reason = f"is an {found.row.model_type} model; it cannot {_VERBS[capability]}"
    else:
        reason = f"cannot {_VERBS[capability]}"
    hint = {
        Capability.CHAT: "Chat with a chat model; list them with GET /v1/models.",
        Capability.EMBED: "Use an embedding model.",
        Capability.DEPLOY: f"Deploy a {_choices(kinds_that_can(Capability.DEPLOY))} model.",
    }[capability]
    raise Invalid(f"{what} {reason}. {hint}")


def find(
    session: Session,
    principal: Principal,
    kind: ModelKind | str,
    id_or_name: str,
    capability: Capability | None = None,
) -> FoundModel:
    """The model of `kind` with that id or name, checked to be able to do `capability`."""
    if not isinstance(kind, ModelKind):
        kind = parse_kind(kind, capability)
    found = _found(kind, _lookup(kind).find(session, principal, id_or_name))
    return require(found, capability) if capability is not None else found


def resolve(
    session: Session, principal: Principal, text: str, capability: Capability | None = None
) -> FoundModel:
    """The model `text` names (`kind:id_or_name` or a bare name), by the module's rule."""
    text = (text or "").strip()
    if not text:
        raise Invalid(f"Name a model: kind:id ({_choices(RESOLUTION_ORDER)}).")
    kind, key = parse_reference(text)
    if kind is not None:
        return find(session, principal, kind, key, capability)
    matches = []
    for candidate in RESOLUTION_ORDER:
        try:
            matches.append(find(session, principal, candidate, key))
        except NotFound:
            continue
    if not matches:
        kinds = kinds_that_can(capability)
        what = "model" if kinds == RESOLUTION_ORDER else f"{_choices(kinds)} model"
        raise NotFound(
            f"No {what} '{text}'. Name one as kind:id ({_choices(kinds)}), or list them "
            f"with {_LIST_HINT.get(capability, 'GET /v1/models')}."
        )
    if len(matches) > 1:
        candidates = ", ".join(f"{str(m.ref)} ({m.describe()})" for m in matches)
        raise Invalid(
            f"'{text}' names {len(matches)} models: {candidates}. Name the one you mean as kind:id."
        )
    return require(matches[0], capability) if capability is not None else matches[0]


# -- listing --------------------------------------------------------------------------------


def list_models(
    session: Session, principal: Principal, capability: Capability | None = None
) -> list[FoundModel]:
    """The caller's models that are ready and can do `capability`, in lifecycle order."""
    found = []
    for kind in LIFECYCLE_ORDER:
        if kind not in kinds_that_can(capability):
            continue
        for row in _lookup(kind).usable(session, principal):
            model = _found(kind, row)
            if capability is None or model.can(capability):
                found.append(model)
    return found
