"""Deploy targets, one per kind of serving tool, in a registry keyed by the environment's kind.

A target knows how to check a deploy before anything moves (preflight), how to hand a model to
its tool (in a job process), how to ask the tool whether it still serves it, and how to take
it away. A third party adds a serving tool by registering another target under a new kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneyard.cards import write_readme
from tuneyard.deploy.parity import Parity
from tuneyard.deploy.quantization import NO_QUANTIZATION, get_quantization
from tuneyard.errors import Invalid, Unavailable
from tuneyard.models import DeployEnvironment, LiveModel
from tuneyard.secrets import decrypt_secret
from tuneyard.storage import Layout, atomic_dir, discard

Progress = Callable[[float, str], None]
log = logging.getLogger(__name__)

# Files of a model folder a serving tool has no use for.
SKIPPED_FILES = {"README.md", ".gitattributes"}
GGUF_MODEL = "model.gguf"
GGUF_ADAPTER = "adapter.gguf"


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

    def template_parity(self, source) -> Parity | None:
        """None runs the HF-vs-deployment-template comparison; a target that serves the HF
        template itself says so instead."""
        return None

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


def _has_chat_template(folder: Path) -> bool:
    from tuneyard.basemodels.card import read_chat_template

    return read_chat_template(folder)[0] is not None


# -- Ollama ---------------------------------------------------------------------------------


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

        return OllamaClient(environment.url, upload_timeout=None if upload else 60.0)

    def preflight(self, environment, source, quantization: str) -> list[str]:
        from tuneyard.deploy.ollama import check_adapter_base, check_importable

        check_importable(source.model_dir)
        if source.adapter_dir is not None:
            check_adapter_base(source.model_dir)
        if not _has_chat_template(source.model_dir):
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


# -- llama.cpp ------------------------------------------------------------------------------


class LlamaCppTarget(DeployTarget):
    """Exports GGUF with Tuneyard's converter, quantizes with llama.cpp's quantizer, and serves
    every live model of the environment from one llama.cpp server that Tuneyard supervises."""

    kind = "llama.cpp"

    def server(self, environment: DeployEnvironment):
        from tuneyard.deploy.llamacpp import ManagedServer

        return ManagedServer(
            Layout().environment_dir(environment.id),
            port=environment.port or 0,
            api_key=environment_api_key(environment),
        )

    def preflight(self, environment, source, quantization: str) -> list[str]:
        from tuneyard.deploy.gguf_export import gguf_architecture

        if environment.url is not None:
            raise Invalid(
                f"Environment {environment.name} attaches to a llama.cpp server that Tuneyard "
                "did not start, so Tuneyard cannot load models into it. Deploy to a llama.cpp "
                "environment without a url; Tuneyard then starts and supervises its server."
            )
        gguf_architecture(source.model_dir)
        warnings = []
        if source.adapter_dir is not None:
            from tuneyard.deploy.gguf_export import lora_exportable

            reason = lora_exportable(source.adapter_dir)
            if reason:
                warnings.append(f"The adapter is merged into its base before export: {reason}")
        if not _has_chat_template(source.model_dir):
            warnings.append("The model has no chat template; llama.cpp serves a plain prompt.")
        return warnings

    def template_parity(self, source) -> Parity:
        if not _has_chat_template(source.model_dir):
            return Parity("not_checked", "The model has no chat template.")
        return Parity(
            "match",
            "The GGUF carries the model's own chat template, which the server renders.",
        )

    def test(self, environment):
        from tuneyard.deploy.llamacpp import list_served_models

        if environment.url is not None:
            models = list_served_models(environment.url, environment_api_key(environment))
            return f"The llama.cpp server at {environment.url} answers.", models
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise Unavailable(
                "llama-cpp-python is not installed; install it with "
                "`pip install 'tuneyard[llama]'`."
            )
        server = self.server(environment)
        if not server.models():
            return "Ready: a llama.cpp server starts here when a model is deployed.", []
        server.ensure_running()
        return f"The llama.cpp server at {server.base_url} answers.", list_served_models(
            server.base_url, server.api_key
        )

    def _export(self, live: LiveModel, source, staging: Path, progress: Progress) -> None:
        from tuneyard.deploy.gguf_export import export_lora_gguf, lora_exportable

        model_dir = source.model_dir
        if source.adapter_dir is not None and lora_exportable(source.adapter_dir):
            model_dir = staging / "merged"
            progress(0.02, "Merging the adapter into its base before export")
            _merge_for_export(source.model_dir, source.adapter_dir, model_dir)
        f16 = staging / "model-f16.gguf"
        self._export_base(model_dir, f16, live.quantization, staging / GGUF_MODEL, progress)
        if model_dir != source.model_dir:
            shutil.rmtree(model_dir)
        elif source.adapter_dir is not None:
            progress(0.85, "Exporting the adapter as a GGUF LoRA")
            export_lora_gguf(source.adapter_dir, source.model_dir, staging / GGUF_ADAPTER)

    def _export_base(
        self, model_dir: Path, f16: Path, quantization: str, out: Path, progress: Progress
    ) -> None:
        from tuneyard.deploy.gguf_export import export_gguf
        from tuneyard.deploy.quantize import quantize_gguf

        progress(0.05, "Exporting GGUF (f16)")
        export_gguf(model_dir, f16, "f16", lambda f, m: progress(0.05 + 0.5 * f, m))
        if quantization == NO_QUANTIZATION:
            f16.rename(out)
            return
        progress(0.55, f"Quantizing to {quantization}")
        quantize_gguf(f16, out, quantization)
        f16.unlink()

    def deploy(self, environment, live, source, progress, **_):
        folder = Layout().live_model_dir(live.id)
        discard(folder)
        with atomic_dir(folder) as staging:
            self._export(live, source, staging, progress)
            write_readme(staging, live.model_card)
        server = self.server(environment)
        progress(0.9, "Starting the llama.cpp server with the model")
        from tuneyard.deploy.llamacpp import ServedModel

        adapter = folder / GGUF_ADAPTER
        mine = ServedModel(live.tag, folder / GGUF_MODEL, adapter if adapter.is_file() else None)
        try:
            # Added to what the server serves now, under its lock: deploys to one environment
            # at once each keep the other's model. On failure the server goes back to what it
            # served before.
            server.update(lambda served: [*_without(served, folder), mine])
        except BaseException:
            discard(folder)
            raise
        size = sum(p.stat().st_size for p in folder.glob("*.gguf"))
        return Deployed(
            f"{server.base_url}/v1",
            live.tag,
            size,
            {"files": sorted(p.name for p in folder.iterdir()), "port": server.port},
        )

    def check(self, environment, live, all_live):
        from tuneyard.deploy.llamacpp import list_served_models

        server = self.server(environment)
        if not (Layout().live_model_dir(live.id) / GGUF_MODEL).is_file():
            return False, "The model's GGUF file is gone."
        restarted = server.ensure_running()
        served = list_served_models(server.base_url, server.api_key)
        if live.tag not in served:
            return False, f"The llama.cpp server at {server.base_url} does not list {live.tag}."
        note = " (restarted it)" if restarted else ""
        return True, f"The llama.cpp server at {server.base_url} serves {live.tag}{note}."

    def remove(self, environment, live, others):
        if environment.url is None:
            folder = Layout().live_model_dir(live.id)
            self.server(environment).update(lambda served: _without(served, folder))

    def withdraw(self, environment, live):
        self.remove(environment, live, [])
        discard(Layout().live_model_dir(live.id))

    def forget_environment(self, environment):
        if environment.url is None:
            self.server(environment).stop()


def _without(served: list, folder: Path) -> list:
    """The served models, less those whose files are in `folder` (one live model's) or gone
    (a server restarted with them would not start)."""
    return [
        model
        for model in served
        if model.model_path.parent.resolve() != folder.resolve() and model.model_path.is_file()
    ]


def _merge_for_export(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """A merged fp16 copy of base + adapter, for adapters GGUF LoRA cannot express."""
    from tuneyard.complete.merge import (
        merge_adapter_into_base,
        merge_with_peft,
        plan_merge,
        read_adapter,
        write_model_files,
    )

    adapter = read_adapter(adapter_dir)
    out_dir.mkdir(parents=True)
    if adapter.method == "peft":
        merge_with_peft(base_dir, adapter, out_dir, "fp16", lambda *_: None)
    else:
        merge_adapter_into_base(plan_merge(base_dir, adapter, "fp16"), out_dir, lambda *_: None)
    write_model_files(base_dir, adapter_dir, out_dir, "fp16")


# -- OpenAI-compatible ----------------------------------------------------------------------


class OpenAICompatibleTarget(DeployTarget):
    """A server someone else runs (vLLM and the like): complete models it was started with,
    adapters through its runtime LoRA endpoint, each verified by a real completion."""

    kind = "openai"
    PROBE = [{"role": "user", "content": "Say something about yourself."}]

    def _client(self, environment: DeployEnvironment):
        from tuneyard.deploy.openai_compat import OpenAICompatClient

        return OpenAICompatClient(environment.url, environment_api_key(environment))

    def preflight(self, environment, source, quantization: str) -> list[str]:
        if quantization != NO_QUANTIZATION:
            raise Invalid(
                "An OpenAI-compatible server serves the weights it loads and Tuneyard cannot "
                f"quantize them there; deploy with quantization {NO_QUANTIZATION}."
            )
        return []

    def template_parity(self, source) -> Parity:
        return Parity(
            "not_checked",
            "An OpenAI-compatible server renders the chat template it loaded with the model.",
        )

    def test(self, environment):
        models = [m.get("id", "") for m in self._client(environment).models()]
        return f"The server at {environment.url} answers with {len(models)} model(s).", models

    @staticmethod
    def _served_id(models: list[dict], folder: Path, name: str | None) -> str | None:
        wanted = {str(folder), str(folder.resolve()), name}
        for model in models:
            if model.get("id") in wanted or model.get("root") in wanted:
                return model["id"]
        return None

    def _require_served(self, client, environment, folder: Path, name: str | None) -> str:
        models = client.models()
        model_id = self._served_id(models, folder, name)
        if model_id is None:
            served = ", ".join(m.get("id", "?") for m in models) or "nothing"
            raise Invalid(
                f"The server at {environment.url} does not serve {name} (it serves {served}). "
                f"Start it with the model's folder, e.g. `vllm serve {folder} --enable-lora`, "
                "then deploy again."
            )
        return model_id

    def deploy(self, environment, live, source, progress, **_):
        client = self._client(environment)
        progress(0.1, f"Asking {environment.url} which models it serves")
        if source.adapter_dir is None:
            model_id = self._require_served(client, environment, source.model_dir, source.name)
            progress(0.5, f"Verifying {model_id} with a completion")
            answer = client.chat(model_id, self.PROBE, max_tokens=16)
            return Deployed(
                client.base_url, model_id, 0, {"served_as": model_id, "probe_answer": answer}
            )
        base_id = self._require_served(client, environment, source.model_dir, source.base_name)
        progress(0.3, f"Loading the adapter as {live.tag}")
        client.load_lora_adapter(live.tag, source.adapter_dir)
        progress(0.6, "Verifying that the adapter changes the answers")
        base_answer = client.chat(base_id, self.PROBE, max_tokens=32)
        adapter_answer = client.chat(live.tag, self.PROBE, max_tokens=32)
        if adapter_answer == base_answer:
            client.unload_lora_adapter(live.tag)
            raise Unavailable(
                f"The server reported the adapter loaded, but {live.tag} answers exactly as "
                f"its base {base_id} does; the adapter was not applied (it was unloaded again)."
            )
        return Deployed(client.base_url, live.tag, 0, {"base_served_as": base_id})

    def check(self, environment, live, all_live):
        ids = [m.get("id") for m in self._client(environment).models()]
        if live.model_id in ids:
            return True, f"The server at {environment.url} serves {live.model_id}."
        return False, f"The server at {environment.url} no longer lists {live.model_id}."

    def remove(self, environment, live, others):
        if live.source_kind == "customized" and live.endpoint_url:
            # Invalid: the server no longer has it, which is what removing wants.
            with contextlib.suppress(Invalid):
                self._client(environment).unload_lora_adapter(live.tag)


for _target in (OllamaTarget(), LlamaCppTarget(), OpenAICompatibleTarget()):
    register_target(_target)
