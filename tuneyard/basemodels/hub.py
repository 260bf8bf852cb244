"""The model hub: a quick reachability probe before anything is created, and the download."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneyard.errors import Invalid, Unavailable

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
# Formats a training folder never needs; most repositories ship one or more of them.
SKIPPED_FILES = [
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "openvino/*",
    "coreml/*",
    "*.h5",
    "*.msgpack",
    "*.tflite",
    "*.ot",
    "*.mlmodel",
]
PICKLED_WEIGHTS = ["*.bin", "*.pt", "*.pth", "original/*"]


def hub_endpoint() -> str:
    """Read at call time, so HF_ENDPOINT set after start (a mirror, or a test) is honoured."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def check_hub_id(hub_id: str) -> None:
    if not HUB_ID_RE.fullmatch(hub_id) or len(hub_id) > 200:
        raise Invalid(
            f"'{hub_id}' is not a hub model id: give it as owner/name, "
            "like HuggingFaceTB/SmolLM2-135M-Instruct."
        )


def probe(hub_id: str, timeout: float) -> dict[str, Any]:
    """The hub's record of `hub_id`; Unavailable at once when the hub cannot be reached."""
    import httpx
    from huggingface_hub import get_token

    endpoint = hub_endpoint()
    fallback = "register a local folder with path or import a GGUF file instead"
    headers = {}
    token = get_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.get(
            f"{endpoint}/api/models/{hub_id}",
            headers=headers,
            timeout=timeout,
            follow_redirects=True,
        )
    except httpx.HTTPError as exc:
        raise _unreachable(endpoint, exc, fallback) from None
    if response.status_code == 404:
        raise Invalid(f"The hub at {endpoint} has no model '{hub_id}'; check the id.")
    if response.status_code in (401, 403):
        raise Invalid(
            f"The hub refused access to '{hub_id}' ({response.status_code}): it is gated or "
            "private. Accept its terms on the hub and set HF_TOKEN, then try again."
        )
    if response.status_code >= 400:
        raise Unavailable(
            f"The model hub ({endpoint}) answered {response.status_code}: try again later, "
            f"or {fallback}."
        )
    return response.json()


def check_reachable(timeout: float, fallback: str) -> None:
    """Unavailable at once, saying `fallback`, when the hub does not answer; any answer will
    do (this asks for nothing in particular)."""
    import httpx

    endpoint = hub_endpoint()
    try:
        httpx.head(endpoint, timeout=timeout)
    except httpx.HTTPError as exc:
        raise _unreachable(endpoint, exc, fallback) from None


def _unreachable(endpoint: str, exc: Exception, fallback: str) -> Unavailable:
    reason = str(exc) or type(exc).__name__
    return Unavailable(f"Cannot reach the model hub ({endpoint}: {reason}): {fallback}.")


def download(
    hub_id: str, revision: str | None, out_dir: Path, progress: Callable[[float, str], None]
) -> None:
    """Download the files a model folder needs (not other formats) into `out_dir`."""
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi(endpoint=hub_endpoint()).list_repo_files(hub_id, revision=revision)
    skipped = list(SKIPPED_FILES)
    if any(name.endswith(".safetensors") for name in files):
        skipped += PICKLED_WEIGHTS
    progress(5, f"Downloading {hub_id}")
    snapshot_download(
        repo_id=hub_id,
        revision=revision,
        local_dir=out_dir,
        ignore_patterns=skipped,
        endpoint=hub_endpoint(),
    )
    # snapshot_download keeps its bookkeeping there; the model folder does not need it.
    shutil.rmtree(out_dir / ".cache", ignore_errors=True)
