"""The deploy target interface and its registry, keyed by the environment's kind, and what
every target shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneyard.deploy.parity import Parity
from tuneyard.errors import Invalid
from tuneyard.models import DeployEnvironment, LiveModel
from tuneyard.secrets import decrypt_secret

Progress = Callable[[float, str], None]

# Files of a model folder a serving tool has no use for.
SKIPPED_FILES = {"README.md", ".gitattributes"}
GGUF_MODEL = "model.gguf"
GGUF_ADAPTER = "adapter.gguf"


def server_address(environment: DeployEnvironment) -> str:
    """The address of a serving tool that runs elsewhere (Ollama, an OpenAI-compatible one)."""
    if not environment.url:
        raise Invalid(
            f"Deployment environment {environment.name} has no address: set its URL to the "
            "server's, like http://127.0.0.1:11434."
        )
    return environment.url


@dataclass
class Deployed:
    endpoint_url: str
    model_id: str
    size_bytes: int
    card: dict[str, Any] = field(default_factory=dict)


class DeployTarget:
    """The interface; each method documents what a target must do."""

    kind: str = ""

    def tag_for(self, name: str) -> str:
        """The model's name inside the tool."""
        return name

    def preflight(self, environment: DeployEnvironment, source, quantization: str) -> list[str]:
        """Refuse (Invalid) what the tool cannot take; return warnings for the card."""
        return []

    def template_parity(self, environment: DeployEnvironment, source) -> Parity | None:
        """None runs the HF-vs-deployment-template comparison; a target that serves the HF
        template itself says so instead (and may check the written file: a `template_parity`
        entry in Deployed.card replaces the card's)."""
        return None

    def base_first(self, environment: DeployEnvironment, source) -> bool:
        """True when a customized model goes on top of its base, which the deploy job makes
        live first and names to `deploy` as `base_tag`; False deploys it on its own."""
        return False

    def test(self, environment: DeployEnvironment) -> tuple[str, list[str]]:
        """(what the tool said, the models it serves); raise Unavailable if it does not answer."""
        raise NotImplementedError

    def deploy(
        self, environment: DeployEnvironment, live: LiveModel, source, progress: Progress, **extra
    ) -> Deployed:
        raise NotImplementedError

    def check(
        self, environment: DeployEnvironment, live: LiveModel, all_live: list[LiveModel]
    ) -> tuple[bool, str]:
        raise NotImplementedError

    def remove(
        self, environment: DeployEnvironment, live: LiveModel, others: list[LiveModel]
    ) -> None:
        """Take the model off the tool (others: the environment's other live models). A model
        the tool no longer has counts as removed. The live model's folder is the caller's."""
        raise NotImplementedError

    def withdraw(self, environment: DeployEnvironment, live: LiveModel) -> None:
        """A deploy of `live` ended without success, its process gone (it may have been killed
        anywhere): take back what it left with the tool and on disk."""

    def forget_environment(self, environment: DeployEnvironment) -> None:
        """The environment is being deleted: stop what Tuneyard runs for it (its folder is the
        caller's)."""


TARGETS: dict[str, DeployTarget] = {}


def environment_api_key(environment: DeployEnvironment) -> str | None:
    """The key requests to the environment's tool carry (decrypted: never show or log it)."""
    return decrypt_secret(environment.api_key_encrypted)


def register_target(target: DeployTarget) -> DeployTarget:
    TARGETS[target.kind] = target
    return target


def target_for(kind: str) -> DeployTarget:
    try:
        return TARGETS[kind]
    except KeyError:
        raise Invalid(
            f"No deploy target for environment kind '{kind}'; known: {', '.join(sorted(TARGETS))}."
        ) from None


def model_files(folder: Path) -> dict[str, Path]:
    """The files of a model folder a serving tool imports, by name."""
    return {
        path.name: path
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name not in SKIPPED_FILES and not path.name.startswith(".")
    }


def has_chat_template(folder: Path) -> bool:
    from tuneyard.basemodels.card import read_chat_template

    return read_chat_template(folder)[0] is not None
