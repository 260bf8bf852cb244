"""The Ollama target: safetensors folders uploaded as blobs, created with Ollama's create API."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re

from tuneyard.deploy.quantization import NO_QUANTIZATION, get_quantization
from tuneyard.deploy.targets.base import (
    Deployed,
    DeployTarget,
    Progress,
    has_chat_template,
    model_files,
    register_target,
    server_address,
)
from tuneyard.errors import Invalid, Unavailable
from tuneyard.models import DeployEnvironment, LiveModel

log = logging.getLogger(__name__)


class OllamaTarget(DeployTarget):
    """Uploads safetensors folders as blobs and creates the model with Ollama's create API;
    Ollama converts and quantizes. An adapter goes on top of its base, deployed first."""

    kind = "ollama"
    MAX_TAG = 80

    def tag_for(self, name: str) -> str:
        tag = re.sub(r"[^a-z0-9._-]", "-", name.lower())
        if len(tag) > self.MAX_TAG:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            tag = f"{tag[: self.MAX_TAG - 9]}-{digest}"
        return tag

    def _client(self, environment: DeployEnvironment, upload: bool = False):
        from tuneyard.deploy.ollama import OllamaClient

        return OllamaClient(server_address(environment), upload_timeout=None if upload else 60.0)

    def preflight(self, environment, source, quantization: str) -> list[str]:
        from tuneyard.deploy.ollama import check_adapter_base, check_importable

        check_importable(source.model_dir)
        if source.adapter_dir is not None:
            check_adapter_base(source.model_dir)
        if not has_chat_template(source.model_dir):
            return ["The model has no chat template; Ollama serves it with a plain prompt."]
        return []

    def test(self, environment):
        with self._client(environment) as client:
            said = client.ping()
            version = client.version()
            models = [m.get("name", "") for m in client.list_models()]
        return f"{said} (version {version})", models

    def _create(
        self, client, live: LiveModel, source, progress: Progress, quantization: str, **kw
    ) -> None:
        seen: set[str] = set()

        def on_status(line: dict) -> None:
            status = line.get("status", "")
            if status not in seen:  # each distinct status once in the job's log
                seen.add(status)
                log.info("Ollama: %s", status)
            if line.get("total"):
                share = line.get("completed", 0) / line["total"]
                progress(0.6 + 0.35 * share, f"Ollama: {status}")
            else:
                progress(0.6, f"Ollama: {status}")

        parameters = dict(live.parameters or {})
        if source.stop and "stop" not in parameters:
            parameters["stop"] = list(source.stop)
        client.create(
            live.tag,
            template=source.deployment_template,
            system=live.system,
            parameters=parameters or None,
            quantize=get_quantization(quantization).ollama,
            on_status=on_status,
            **kw,
        )

    def deploy(self, environment, live, source, progress, base_tag: str | None = None, **_):
        with self._client(environment, upload=True) as client:
            return self._deploy(client, environment, live, source, progress, base_tag)

    def _deploy(self, client, environment, live, source, progress, base_tag: str | None):
        client.ping()
        if source.adapter_dir is None:
            files = model_files(source.model_dir)
            progress(0.0, f"Uploading {len(files)} files to Ollama")
            digests = client.push_files(files, lambda f, m: progress(0.6 * f, m))
            self._create(client, live, source, progress, live.quantization, files=digests)
        else:
            if base_tag is None:
                raise Invalid("An adapter on Ollama needs its base deployed first.")
            files = {
                name: source.adapter_dir / name
                for name in ("adapter_config.json", "adapter_model.safetensors")
            }
            progress(0.0, "Uploading the adapter to Ollama")
            digests = client.push_files(files, lambda f, m: progress(0.6 * f, m))
            # The base carries the quantization; the adapter is applied on top of it.
            self._create(
                client,
                live,
                source,
                progress,
                NO_QUANTIZATION,
                from_=base_tag,
                adapters=digests,
            )
        size = next((m.get("size", 0) for m in client.list_models() if _same_tag(m, live.tag)), 0)
        return Deployed(f"{environment.url}/v1", live.tag, int(size or 0))

    def check(self, environment, live, all_live):
        with self._client(environment) as client:
            names = [m for m in client.list_models() if _same_tag(m, live.tag)]
        if names:
            return True, f"Ollama at {environment.url} serves {live.tag}."
        return False, f"Ollama at {environment.url} no longer has {live.tag}."

    def remove(self, environment, live, others):
        if live.status in ("deploying", "failed") and not live.endpoint_url:
            # Never created on the tool, or its create failed: try, but it may not be there.
            with contextlib.suppress(Unavailable), self._client(environment) as client:
                client.delete(live.tag)
            return
        with self._client(environment) as client:
            client.delete(live.tag)


def _same_tag(model: dict, tag: str) -> bool:
    name = model.get("name") or model.get("model") or ""
    return name == tag or name == f"{tag}:latest"


register_target(OllamaTarget())
