"""The OpenAI-compatible target: a server someone else runs (vLLM and the like)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tuneyard.deploy.parity import Parity
from tuneyard.deploy.quantization import NO_QUANTIZATION
from tuneyard.deploy.targets.base import (
    Deployed,
    DeployTarget,
    environment_api_key,
    register_target,
    server_address,
)
from tuneyard.errors import Invalid, Unavailable
from tuneyard.models import DeployEnvironment


class OpenAICompatibleTarget(DeployTarget):
    """A server someone else runs (vLLM and the like): complete models it was started with,
    adapters through its runtime LoRA endpoint, each verified by a real completion."""

    kind = "openai"
    PROBE = [{"role": "user", "content": "Say something about yourself."}]

    def _client(self, environment: DeployEnvironment):
        from tuneyard.deploy.openai_compat import OpenAICompatClient

        return OpenAICompatClient(server_address(environment), environment_api_key(environment))

    def preflight(self, environment, source, quantization: str) -> list[str]:
        if quantization != NO_QUANTIZATION:
            raise Invalid(
                "An OpenAI-compatible server serves the weights it loads and Tuneyard cannot "
                f"quantize them there; deploy with quantization {NO_QUANTIZATION}."
            )
        return []

    def template_parity(self, environment, source) -> Parity:
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


register_target(OpenAICompatibleTarget())
