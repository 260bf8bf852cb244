"""The Ollama target: the one path every Ollama release takes. Tuneyard exports the model as
GGUF, quantizes it with llama.cpp's quantizer, uploads that one file as a blob and creates the
model from it with Ollama's create API, never asking Ollama to convert or quantize."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from tuneyard.deploy.parity import Parity, gguf_chat_parity
from tuneyard.deploy.quantization import NO_QUANTIZATION
from tuneyard.deploy.targets.base import (
    GGUF_ADAPTER,
    GGUF_MODEL,
    Deployed,
    DeployTarget,
    Progress,
    has_chat_template,
    register_target,
    server_address,
)
from tuneyard.errors import Invalid, Unavailable
from tuneyard.models import DeployEnvironment, LiveModel
from tuneyard.storage import Layout, discard

log = logging.getLogger(__name__)


def stored_file_type(quantization: str) -> str:
    """The quantization_level Ollama reports for a GGUF Tuneyard made at `quantization`."""
    return "F16" if quantization == NO_QUANTIZATION else quantization.upper()


class OllamaTarget(DeployTarget):
    """Uploads Tuneyard's own GGUF (only that file in `files`, no `quantize`): Ollama 0.6 to
    0.34+ all import it. A customized model goes on its base as one GGUF LoRA where the release
    and architecture load one; else it is merged into its base and uploaded whole."""

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

    def _version(self, environment: DeployEnvironment) -> tuple[str, tuple[int, int, int] | None]:
        from tuneyard.deploy.ollama import parse_version

        with self._client(environment) as client:
            text = client.version()
        return text, parse_version(text)

    def _merge_reason(self, source, version: tuple[int, int, int] | None) -> str | None:
        """None when the adapter ships as a GGUF LoRA on its base; else why it is merged."""
        from tuneyard.deploy.gguf_export import gguf_architecture, lora_exportable
        from tuneyard.deploy.ollama import adapter_merge_reason

        return lora_exportable(source.adapter_dir) or adapter_merge_reason(
            version, gguf_architecture(source.model_dir)
        )

    def preflight(self, environment, source, quantization: str) -> list[str]:
        from tuneyard.deploy.gguf_export import gguf_architecture

        gguf_architecture(source.model_dir)
        warnings = []
        if source.adapter_dir is not None:
            try:
                text, version = self._version(environment)
            except Unavailable:
                text, version = "", None  # the deploy job reads it again and says why it failed
            reason = self._merge_reason(source, version) if text else None
            if reason:
                warnings.append(
                    f"The adapter is merged into its base and uploaded whole: {reason}."
                )
        if not has_chat_template(source.model_dir):
            warnings.append("The model has no chat template; Ollama serves it with a plain prompt.")
        return warnings

    def template_parity(self, environment, source) -> Parity | None:
        """Ollama v0.30+ serves a chat template with tools or thinking itself, ignoring the
        Go template: its parity is checked on the written GGUF; older or unknown releases
        render the Go template, which the usual comparison checks."""
        if not self._serves_gguf_template(environment, source):
            return None
        return Parity(
            "not_checked",
            "Ollama v0.30 and later serve this model with the chat template inside its GGUF "
            "(it offers tools or thinking); it is compared once the GGUF is written.",
        )

    def _serves_gguf_template(self, environment, source) -> bool:
        from tuneyard.basemodels.card import read_chat_template
        from tuneyard.basemodels.template import ollama_uses_gguf_template
        from tuneyard.deploy.ollama import GGUF_TEMPLATE_RELEASE

        if not ollama_uses_gguf_template(read_chat_template(source.model_dir)[0]):
            return False
        try:
            version = self._version(environment)[1]
        except Unavailable:
            return False  # the deploy job reads it again and says why it failed
        return version is not None and version >= GGUF_TEMPLATE_RELEASE

    def base_first(self, environment, source) -> bool:
        return self._merge_reason(source, self._version(environment)[1]) is None

    def test(self, environment):
        with self._client(environment) as client:
            said = client.ping()
            version = client.version()
            models = [m.get("name", "") for m in client.list_models()]
        return f"{said} (version {version})", models

    def _create(self, client, live: LiveModel, source, progress: Progress, **kw) -> None:
        seen: set[str] = set()

        def on_status(line: dict) -> None:
            status = line.get("status", "")
            if status not in seen:  # each distinct status once in the job's log
                seen.add(status)
                log.info("Ollama: %s", status)
            progress(0.9, f"Ollama: {status}")

        parameters = dict(live.parameters or {})
        if source.stop and "stop" not in parameters:
            parameters["stop"] = list(source.stop)
        client.create(
            live.tag,
            template=source.deployment_template,
            system=live.system,
            parameters=parameters or None,
            on_status=on_status,
            **kw,
        )

    def deploy(
        self,
        environment,
        live,
        source,
        progress,
        base_tag: str | None = None,
        allow_template_mismatch: bool = False,
        **_,
    ):
        folder = Layout().live_model_dir(live.id)
        discard(folder)
        folder.mkdir(parents=True)
        try:
            with self._client(environment, upload=True) as client:
                return self._deploy(
                    client,
                    environment,
                    live,
                    source,
                    progress,
                    base_tag,
                    folder,
                    allow_template_mismatch,
                )
        finally:
            # Ollama keeps its own copy of every blob: the files made for it go.
            discard(folder)

    def _deploy(
        self,
        client,
        environment,
        live,
        source,
        progress,
        base_tag,
        folder: Path,
        allow_template_mismatch: bool,
    ):
        from tuneyard.deploy.gguf_build import merge_adapter_for_export, write_model_gguf
        from tuneyard.deploy.gguf_export import export_lora_gguf, gguf_architecture
        from tuneyard.deploy.ollama import parse_version

        client.ping()
        version_text = client.version()
        architecture = gguf_architecture(source.model_dir)
        card: dict[str, Any] = {"ollama_version": version_text}
        model_dir = source.model_dir
        if source.adapter_dir is not None:
            reason = self._merge_reason(source, parse_version(version_text))
            if reason is None and base_tag is not None:
                progress(0.05, "Exporting the adapter as a GGUF LoRA")
                export_lora_gguf(source.adapter_dir, source.model_dir, folder / GGUF_ADAPTER)
                progress(0.5, "Uploading the adapter to Ollama")
                digests = client.push_files(
                    {GGUF_ADAPTER: folder / GGUF_ADAPTER}, lambda f, m: progress(0.5 + 0.4 * f, m)
                )
                self._create(client, live, source, progress, from_=base_tag, adapters=digests)
                card["adapter"] = f"One GGUF LoRA on the live base {base_tag}."
                card["uploaded"] = {GGUF_ADAPTER: digests[GGUF_ADAPTER]}
                return self._finish(client, environment, live, architecture, card)
            reason = reason or "its base was not deployed first"
            card["adapter"] = f"Merged into its base and uploaded whole: {reason}."
            model_dir = folder / "merged"
            progress(0.02, "Merging the adapter into its base before export")
            merge_adapter_for_export(source.model_dir, source.adapter_dir, model_dir)
        write_model_gguf(
            model_dir,
            folder / GGUF_MODEL,
            live.quantization,
            lambda f, m: progress(0.05 + 0.45 * f, m),
        )
        if model_dir != source.model_dir:
            shutil.rmtree(model_dir)
        if self._serves_gguf_template(environment, source):
            parity = gguf_chat_parity(
                folder / GGUF_MODEL, source.model_dir, f"base model '{source.base_name}'"
            )
            if parity.status == "mismatch" and not allow_template_mismatch:
                raise Invalid(f"Template parity check failed: {parity.detail}")
            card["template_parity"] = parity.as_card()
        progress(0.5, "Uploading the GGUF to Ollama")
        digests = client.push_files(
            {GGUF_MODEL: folder / GGUF_MODEL}, lambda f, m: progress(0.5 + 0.4 * f, m)
        )
        self._create(client, live, source, progress, files=digests)
        card["uploaded"] = {GGUF_MODEL: digests[GGUF_MODEL]}
        return self._finish(client, environment, live, architecture, card)

    def _finish(self, client, environment, live, architecture: str, card: dict) -> Deployed:
        """Check what Ollama holds by /api/show (since 0.30 it rewrites an uploaded GGUF, so
        the digest it stores is not the one uploaded) and describe it on the card."""
        from tuneyard.deploy.ollama import OllamaError

        details = client.show(live.tag).get("details") or {}
        expected = {
            "family": architecture,
            "quantization_level": stored_file_type(live.quantization),
        }
        wrong = [
            f"{key} {details.get(key)!r} instead of {value!r}"
            for key, value in expected.items()
            if str(details.get(key) or "").lower() != value.lower()
        ]
        if wrong:
            raise OllamaError(
                f"Ollama at {client.address} created {live.tag}, but shows it with "
                f"{' and '.join(wrong)}. Delete the live model and deploy it again; if this "
                "repeats, this Ollama release changes what it imports."
            )
        card["stored"] = {key: details.get(key) for key in ("format", *expected)}
        size = next((m.get("size", 0) for m in client.list_models() if _same_tag(m, live.tag)), 0)
        return Deployed(f"{environment.url}/v1", live.tag, int(size or 0), card)

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

    def withdraw(self, environment, live):
        discard(Layout().live_model_dir(live.id))


def _same_tag(model: dict, tag: str) -> bool:
    name = model.get("name") or model.get("model") or ""
    return name == tag or name == f"{tag}:latest"


register_target(OllamaTarget())
