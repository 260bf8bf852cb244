"""The llama.cpp target: GGUF exported and quantized here, served by a supervised server."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneyard.cards import write_readme
from tuneyard.deploy.parity import Parity, gguf_chat_parity
from tuneyard.deploy.targets.base import (
    GGUF_ADAPTER,
    GGUF_MODEL,
    Deployed,
    DeployTarget,
    Progress,
    environment_api_key,
    has_chat_template,
    register_target,
)
from tuneyard.errors import Invalid, Unavailable
from tuneyard.models import DeployEnvironment, LiveModel
from tuneyard.storage import Layout, atomic_dir, discard


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
        if not has_chat_template(source.model_dir):
            warnings.append("The model has no chat template; llama.cpp serves a plain prompt.")
        return warnings

    def template_parity(self, environment, source) -> Parity:
        if not has_chat_template(source.model_dir):
            return Parity("not_checked", "The model has no chat template.")
        return Parity(
            "not_checked",
            "The llama.cpp server renders the chat template inside the GGUF; it is compared "
            "once the GGUF is written.",
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
        from tuneyard.deploy.gguf_build import merge_adapter_for_export, write_model_gguf
        from tuneyard.deploy.gguf_export import export_lora_gguf, lora_exportable

        model_dir = source.model_dir
        if source.adapter_dir is not None and lora_exportable(source.adapter_dir):
            model_dir = staging / "merged"
            progress(0.02, "Merging the adapter into its base before export")
            merge_adapter_for_export(source.model_dir, source.adapter_dir, model_dir)
        write_model_gguf(
            model_dir,
            staging / GGUF_MODEL,
            live.quantization,
            lambda f, m: progress(0.05 + 0.8 * f, m),
        )
        if model_dir != source.model_dir:
            shutil.rmtree(model_dir)
        elif source.adapter_dir is not None:
            progress(0.85, "Exporting the adapter as a GGUF LoRA")
            export_lora_gguf(source.adapter_dir, source.model_dir, staging / GGUF_ADAPTER)

    def deploy(
        self, environment, live, source, progress, allow_template_mismatch: bool = False, **_
    ):
        folder = Layout().live_model_dir(live.id)
        discard(folder)
        with atomic_dir(folder) as staging:
            self._export(live, source, staging, progress)
            parity = gguf_chat_parity(
                staging / GGUF_MODEL, source.model_dir, f"base model '{source.base_name}'"
            )
            if parity.status == "mismatch" and not allow_template_mismatch:
                raise Invalid(f"Template parity check failed: {parity.detail}")
            write_readme(staging, {**live.model_card, "template_parity": parity.as_card()})
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
            {
                "files": sorted(p.name for p in folder.iterdir()),
                "port": server.port,
                "template_parity": parity.as_card(),
            },
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


register_target(LlamaCppTarget())
