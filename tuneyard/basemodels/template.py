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


# Marker contents: plain words that no chat template adds or trims, none inside another.
MARK_SYSTEM, MARK_USER, MARK_ASSISTANT, MARK_USER2 = (
    "q7xSystemMark",
    "q7xFirstUserMark",
    "q7xAssistantMark",
    "q7xSecondUserMark",
)
# The conversations a derived template must reproduce, in plain prose unlike the markers.
CHECK_CONVERSATIONS = (
    (("user", "What is the capital of France?"),),
    (("system", "You are a careful assistant."), ("user", "What is the capital of France?")),
    (("user", "Hi there."), ("assistant", "Hello! How can I help?"), ("user", "Name a colour.")),
    (
        ("system", "Answer briefly."),
        ("user", "Hi there."),
        ("assistant", "Hello! How can I help?"),
        ("user", "Name a colour."),
    ),
)


def ollama_uses_gguf_template(chat_template: str | None) -> bool:
    """Whether Ollama v0.30+ serves with the GGUF's own Jinja chat template instead of the Go
    TEMPLATE: it prefers the one offering more capabilities, and a template mentioning tools
    or thinking (`<think>`...`</think>`) offers them where a derived Go template does not."""
    if not chat_template:
        return False
    tools = "tools" in chat_template or "tool_call" in chat_template
    thinking = "<think>" in chat_template and "</think>" in chat_template
    splits_thinking = (
        "content.split('</think>')" in chat_template or 'content.split("</think>")' in chat_template
    ) and "reasoning_content" not in chat_template
    return tools or thinking or splits_thinking


def _conversation(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def _between(text: str, *marks: str) -> list[str] | None:
    """The text around each mark, in order, or None when a mark is missing or repeated."""
    pieces = []
    for mark in marks:
        if text.count(mark) != 1:
            return None
        before, _, text = text.partition(mark)
        pieces.append(before)
    return [*pieces, text]


def _common_suffix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[-1 - size] == b[-1 - size]:
        size += 1
    return a[len(a) - size :]


def _go_text(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise ValueError("template text with Go template delimiters")
    return text


def _derive_go_template(chat, tokens: dict[str, str]) -> tuple[str, list[str], str | None] | None:
    """A `.Messages` Go template read off the chat template's renderings of marker
    conversations, its stop tokens and a note, or None when the layout cannot be read."""

    def render(turns, generation=True):
        messages = _conversation(*turns)
        try:
            return chat.render(messages=messages, add_generation_prompt=generation, **tokens)
        except Exception:  # noqa: BLE001 - a template refusing a conversation is an answer
            return None

    user, assistant, user2 = (
        ("user", MARK_USER),
        ("assistant", MARK_ASSISTANT),
        ("user", MARK_USER2),
    )
    one = render([user], generation=False)
    one_gen = render([user])
    answered = render([user, assistant], generation=False)
    two = render([user, assistant, user2])
    if None in (one, one_gen, answered, two):
        return None
    one_parts = _between(one, MARK_USER)
    gen_parts = _between(one_gen, MARK_USER)
    answered_parts = _between(answered, MARK_USER, MARK_ASSISTANT)
    two_parts = _between(two, MARK_USER, MARK_ASSISTANT, MARK_USER2)
    if not (one_parts and gen_parts and answered_parts and two_parts):
        return None
    user_suffix = one_parts[1]
    if not gen_parts[1].startswith(user_suffix) or not two_parts[1].startswith(user_suffix):
        # Text written only after the last turn (an EOS without a generation prompt): the
        # user turn then ends where the generation prompt and the history part ways.
        size = 0
        while size < min(len(gen_parts[1]), len(two_parts[1])) and (
            gen_parts[1][size] == two_parts[1][size]
        ):
            size += 1
        user_suffix = gen_parts[1][:size]
    generation = gen_parts[1][len(user_suffix) :]
    assistant_prefix = two_parts[1][len(user_suffix) :]
    assistant_suffix, between_turns = answered_parts[2], two_parts[2]
    if between_turns.startswith(assistant_suffix):
        user_prefix = between_turns[len(assistant_suffix) :]
    else:
        user_prefix = _common_suffix(between_turns, two_parts[0])
        assistant_suffix = between_turns[: len(between_turns) - len(user_prefix)]
    if not two_parts[0].endswith(user_prefix):
        return None
    preamble = two_parts[0][: len(two_parts[0]) - len(user_prefix)]
    bos = tokens.get("bos_token") or ""
    # The tokenizer adds the BOS token itself; a BOS that is also a chat marker stays.
    if bos and preamble.startswith(bos) and two.count(bos) == 1:
        preamble = preamble[len(bos) :]
        bos_written = bos
    else:
        bos_written = ""

    with_system = render([("system", MARK_SYSTEM), user])
    system_parts = _between(with_system, MARK_SYSTEM, MARK_USER) if with_system else None
    note = None
    fold = False
    system_prefix = system_suffix = ""
    if system_parts is None:
        note = (
            "The chat template refuses system messages, so the deployment template leaves them out."
        )
    else:
        head = system_parts[0]
        if bos_written and head.startswith(bos_written):
            head = head[len(bos_written) :]
        if system_parts[1].endswith(user_prefix):
            system_prefix = head
            system_suffix = system_parts[1][: len(system_parts[1]) - len(user_prefix)]
        elif head.startswith(user_prefix):
            fold = True  # the system text opens the first user turn (Gemma, Llama 2)
            system_prefix, system_suffix = head, system_parts[1]
        else:
            return None
        system_branch = f"{_go_text(system_prefix)}{{{{ .Content }}}}{_go_text(system_suffix)}" + (
            "{{ $folded = true }}" if fold else ""
        )
    default_system = ""
    if system_parts is not None and not fold and preamble:
        # Text the chat template writes only when no system message is given (a default one).
        default_system = f"{{{{ if not .System }}}}{_go_text(preamble)}{{{{ end }}}}"
        preamble = ""
    user_open = (
        "{{ if $folded }}{{ $folded = false }}{{ else }}"
        f"{_go_text(user_prefix)}{{{{ end }}}}"
        if fold
        else _go_text(user_prefix)
    )
    roles = [
        ("user", f"{user_open}{{{{ .Content }}}}{_go_text(user_suffix)}"),
        (
            "assistant",
            f"{_go_text(assistant_prefix)}{{{{ .Content }}}}{_go_text(assistant_suffix)}",
        ),
    ]
    if system_parts is not None:
        roles.insert(0, ("system", system_branch))
    branches = "{{ else if".join(f' eq .Role "{role}" }}}}{body}' for role, body in roles)
    branches = "{{ if" + branches + "{{ end }}"
    text = (
        f"{'{{ $folded := false }}' if fold else ''}{_go_text(preamble)}{default_system}"
        f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{_go_text(generation)}"
    )
    stop = [t for t in dict.fromkeys((assistant_suffix.strip(), tokens.get("eos_token"))) if t]
    return text, stop, note


def _reproduces(go_template: str, chat, tokens: dict[str, str]) -> bool:
    """The parity check's comparison over several conversations, one to two turns."""
    from tuneyard.basemodels.gotemplate import (
        UnsupportedTemplate,
        render_chat_prompt,
        render_ollama_prompt,
        same_prompt,
    )

    compared = 0
    for turns in CHECK_CONVERSATIONS:
        messages = _conversation(*turns)
        expected = render_chat_prompt(chat, messages, tokens)
        if expected is None:
            continue
        try:
            rendered = render_ollama_prompt(go_template, messages)
        except UnsupportedTemplate:
            return False
        if not same_prompt(expected, rendered, tokens.get("bos_token")):
            return False
        compared += 1
    return compared > 0


def derive_template(
    chat_template: str | None, eos_token: str | None, bos_token: str | None = None
) -> DeploymentTemplate:
    """The Ollama template read off the model's own chat template, checked to render the same
    prompts; else a known chat family by its markers; else a plain prompt, with a note why."""
    if chat_template:
        tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v}
        derived = None
        try:
            chat = compile_chat_template(chat_template, "the model")
            derived = _derive_go_template(chat, tokens)
        except (Invalid, ValueError):
            derived = None
        if derived is not None and _reproduces(derived[0], chat, tokens):
            text, stop, note = derived
            return DeploymentTemplate(text, "derived:chat_template", stop, note)
        for family in FAMILIES:
            if family.marker in chat_template and (
                family.also is None or family.also in chat_template
            ):
                return DeploymentTemplate(
                    family.template,
                    f"derived:{family.name}",
                    [*family.stop],
                    "The chat template's layout could not be read off its renderings, so the "
                    f"deployment template is Tuneyard's {family.name} template.",
                )
        note = (
            "The chat template's layout could not be read off its renderings and is not a "
            "format Tuneyard recognises (ChatML, Llama 3, Llama 2 / Mistral [INST], Gemma, "
            "Phi-3), so the deployment template is a plain prompt; set the right one with "
            "`tuneyard base template NAME --set-file FILE`."
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
