"""The Ollama TEMPLATE (Go template text) and stop tokens that match a model's chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from tuneyard.errors import Invalid

FALLBACK_TEMPLATE = "{{ .System }} {{ .Prompt }}"
# Real templates are a few hundred bytes; the cap keeps a pasted file or a hostile request
# from becoming a stored template every deploy has to read and render.
MAX_TEMPLATE_BYTES = 64 * 1024


def template_size_problem(text: str) -> str | None:
    """Why a deployment template is too long, or None when it fits."""
    size = len(text.encode("utf-8"))
    if size <= MAX_TEMPLATE_BYTES:
        return None
    return (
        f"The deployment template is {size} bytes; the limit is {MAX_TEMPLATE_BYTES} bytes "
        "(64 KiB). Keep only the Ollama TEMPLATE text."
    )


@dataclass(frozen=True)
class ChatFamily:
    name: str
    marker: str
    template: str
    stop: tuple[str, ...]
    # Some families share a marker; the extra one tells them apart.
    also: str | None = None


# Most specific first: Llama 2 and Mistral both use [INST], only Llama 2 has <<SYS>>.
FAMILIES = (
    ChatFamily(
        "llama3",
        "<|start_header_id|>",
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
        "{{ .System }}<|eot_id|>{{ end }}"
        "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n"
        "{{ .Prompt }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{{ .Response }}<|eot_id|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    ChatFamily(
        "chatml",
        "<|im_start|>",
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
        ("<|im_start|>", "<|im_end|>"),
    ),
    ChatFamily(
        "gemma",
        "<start_of_turn>",
        "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}"
        "{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n{{ .Response }}<end_of_turn>\n",
        ("<start_of_turn>", "<end_of_turn>"),
    ),
    ChatFamily(
        "phi3",
        "<|user|>",
        "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
        "{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}"
        "<|assistant|>\n{{ .Response }}<|end|>\n",
        ("<|end|>", "<|user|>", "<|assistant|>"),
    ),
    ChatFamily(
        "llama2",
        "[INST]",
        "[INST] {{ if .System }}<<SYS>>\n{{ .System }}\n<</SYS>>\n\n{{ end }}{{ .Prompt }} [/INST]",
        ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"),
        also="<<SYS>>",
    ),
    ChatFamily(
        "mistral",
        "[INST]",
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} [/INST]",
        ("[INST]", "[/INST]"),
    ),
)


@dataclass(frozen=True)
class DeploymentTemplate:
    text: str
    source: str  # "derived:<family>" or "fallback"
    stop: list[str]
    note: str | None = None


def derive_template(chat_template: str | None, eos_token: str | None) -> DeploymentTemplate:
    """Recognise the chat format by its markers; otherwise a plain prompt, with a note why."""
    if chat_template:
        for family in FAMILIES:
            if family.marker in chat_template and (
                family.also is None or family.also in chat_template
            ):
                return DeploymentTemplate(family.template, f"derived:{family.name}", [*family.stop])
        note = (
            "The chat template is not a format Tuneyard recognises (ChatML, Llama 3, "
            "Llama 2 / Mistral [INST], Gemma, Phi-3), so the deployment template is a plain "
            "prompt; set the right one with `tuneyard base template NAME --set-file FILE`."
        )
    else:
        note = (
            "The tokenizer has no chat template, so the deployment template is a plain prompt; "
            "if the model is meant to chat, set one with "
            "`tuneyard base template NAME --set-file FILE`."
        )
    stop = [eos_token] if eos_token else []
    return DeploymentTemplate(FALLBACK_TEMPLATE, "fallback", stop, note)


def compile_chat_template(source: str, owner: str):
    """A Hugging Face chat template compiled as transformers does, in a sandbox (it comes from
    a model folder); `owner` names whose template it is in errors."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return environment.from_string(source)
    except TemplateError as exc:
        raise Invalid(f"The chat template of {owner} is broken: {exc}") from None
