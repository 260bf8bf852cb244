"""Deploy targets, one per kind of serving tool, in a registry keyed by the environment's kind.

A target knows how to check a deploy before anything moves (preflight), how to hand a model to
its tool (in a job process), how to ask the tool whether it still serves it, and how to take
it away. A third party adds a serving tool by registering another target under a new kind.
"""

from __future__ import annotations

from tuneyard.deploy.targets.base import (
    GGUF_ADAPTER,
    GGUF_MODEL,
    SKIPPED_FILES,
    TARGETS,
    Deployed,
    DeployTarget,
    Progress,
    environment_api_key,
    model_files,
    register_target,
    target_for,
)
from tuneyard.deploy.targets.llamacpp import LlamaCppTarget
from tuneyard.deploy.targets.ollama import OllamaTarget
from tuneyard.deploy.targets.openai import OpenAICompatibleTarget

__all__ = [
    "GGUF_ADAPTER",
    "GGUF_MODEL",
    "SKIPPED_FILES",
    "TARGETS",
    "Deployed",
    "DeployTarget",
    "LlamaCppTarget",
    "OllamaTarget",
    "OpenAICompatibleTarget",
    "Progress",
    "environment_api_key",
    "model_files",
    "register_target",
    "target_for",
]
