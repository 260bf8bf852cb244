"""Pushing a complete model to a model hub: a quick probe when asked, the upload in a job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuneyard.basemodels.hub import hub_endpoint
from tuneyard.errors import Invalid, Unavailable

FALLBACK = "export the model as an archive with `tuneyard complete export` instead"


def probe_for_push(timeout: float) -> None:
    """Unavailable at once when the hub cannot be reached; Invalid without a usable token."""
    import httpx
    from huggingface_hub import get_token

    endpoint = hub_endpoint()
    token = get_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{endpoint}/api/whoami-v2", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise Unavailable(
            f"Cannot reach the model hub ({endpoint}: {reason}): {FALLBACK}."
        ) from None
    if response.status_code >= 500:
        raise Unavailable(
            f"The model hub ({endpoint}) answered {response.status_code}: try again later, "
            f"or {FALLBACK}."
        )
    if not token or response.status_code in (401, 403):
        raise Invalid(
            f"The hub at {endpoint} needs a token with write access to push: create one on "
            "the hub and set HF_TOKEN where Tuneyard runs."
        )


def upload(
    folder: Path,
    repo_id: str,
    name: str,
    progress: Callable[[float, str], None],
    public: bool = False,
) -> str:
    """Create the repository if needed (private unless `public`) and upload the folder as one
    commit; its URL. An existing repository keeps its visibility."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint())
    progress(5, f"Creating {repo_id} on {hub_endpoint()}")
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=not public)
    progress(10, f"Uploading {name} to {repo_id}")
    api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type="model",
        commit_message=f"Upload {name} from Tuneyard",
    )
    return f"{hub_endpoint()}/{repo_id}"
