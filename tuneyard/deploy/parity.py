"""Template parity: does the serving tool's prompt match the one the model was trained on?

Models that answer worse after export almost always get a different prompt than the chat
template produced in training. Before a deploy we render one sample conversation through the
base model's Hugging Face chat template and through the deployment template, and compare.
The deployment template is Ollama's legacy Go template form ({{ .System }}, {{ .Prompt }},
{{ .Response }}, {{ if }}...{{ else }}...{{ end }}); templates using other constructs are
reported as not checked rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_SYSTEM = "You are a careful assistant."
SAMPLE_PROMPT = "What is the capital of France?"
VARIABLES = ("System", "Prompt", "Response")


class UnsupportedTemplate(Exception):
    """The Go template uses constructs beyond the legacy variables and if/else/end."""


@dataclass(frozen=True)
class Parity:
    status: str  # match, mismatch, not_checked
    detail: str
    expected: str | None = None  # the chat template's rendering
    rendered: str | None = None  # the deployment template's rendering

    def as_card(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def split_actions(template: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s), applying {{- and -}} whitespace trimming.

    One pass over the text: an action runs from a "{{" to the first "}}" after it, so each
    character is looked at a bounded number of times whatever the input (a template is user
    text, and a pattern with nested optional parts backtracks for minutes on "{{" and spaces).
    """
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    while (start := template.find("{{", pos)) >= 0:
        end = template.find("}}", start + 2)
        if end < 0:
            break
        text = template[pos:start]
        if trim_next:
            text = text.lstrip()
        inner = template[start + 2 : end]
        trim_before = inner.startswith("-")
        if trim_before:
            text = text.rstrip()
            inner = inner[1:]
        inner = inner.lstrip()
        trim_next = inner.endswith("-")
        if trim_next:
            inner = inner[:-1]
        out.append(("text", text))
        out.append(("action", inner.rstrip()))
        pos = end + 2
    tail = template[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def render_go_template(template: str, values: dict[str, str]) -> str:
    """Render Ollama's legacy template subset; stops at {{ .Response }} like a generation does."""
    rendered: list[str] = []
    # Each open `if` pushes whether its branch is taken; text is kept only when all are.
    stack: list[list[bool]] = []  # [condition, in_else]

    def active() -> bool:
        return all(cond != in_else for cond, in_else in stack)

    for kind, value in split_actions(template):
        if kind == "text":
            if active():
                rendered.append(value)
            continue
        words = value.split()
        if not words:
            continue
        if words[0] == "if" and len(words) == 2 and words[1].lstrip(".") in VARIABLES:
            stack.append([bool(values.get(words[1].lstrip("."))), False])
        elif words == ["else"] and stack:
            stack[-1][1] = True
        elif words == ["end"] and stack:
            stack.pop()
        elif len(words) == 1 and words[0].lstrip(".") in VARIABLES:
            if words[0] == ".Response":
                if active():
                    return "".join(rendered)
                continue
            if active():
                rendered.append(values.get(words[0].lstrip("."), ""))
        else:
            raise UnsupportedTemplate(value)
    return "".join(rendered)


def _special_tokens(folder: Path) -> dict[str, str]:
    import json

    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokens = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def check_parity(tokenizer_dir: Path, deployment_template: str | None, owner: str) -> Parity:
    """Compare the chat template's prompt for a sample conversation with the deployment one."""
    from tuneyard.basemodels.card import read_chat_template
    from tuneyard.basemodels.template import compile_chat_template

    source, _where = read_chat_template(tokenizer_dir)
    if not source:
        return Parity(
            "not_checked",
            "The tokenizer has no chat template, so there is nothing to compare against; "
            "the model is served with a plain prompt.",
        )
    if not deployment_template:
        return Parity("mismatch", "The base model has no deployment template.")
    tokens = _special_tokens(tokenizer_dir)
    messages = [
        {"role": "system", "content": SAMPLE_SYSTEM},
        {"role": "user", "content": SAMPLE_PROMPT},
    ]
    expected = compile_chat_template(source, owner).render(
        messages=messages, add_generation_prompt=True, **tokens
    )
    # A template that writes the BOS token and one that leaves it to the tokenizer are the
    # same prompt; some models (SmolLM2) use a chat marker as BOS, so both forms count.
    bos = tokens.get("bos_token")
    equivalent = {expected}
    if bos and expected.startswith(bos):
        equivalent.add(expected[len(bos) :])
    try:
        rendered = render_go_template(
            deployment_template, {"System": SAMPLE_SYSTEM, "Prompt": SAMPLE_PROMPT}
        )
    except UnsupportedTemplate as exc:
        return Parity(
            "not_checked",
            f"The deployment template uses '{{{{ {exc} }}}}', which the parity check does not "
            "render; compare a conversation by hand after deploying.",
        )
    if rendered in equivalent:
        return Parity("match", "The deployment template renders the chat template's prompt.")
    return Parity(
        "mismatch",
        "The deployment template renders a different prompt than the chat template the model "
        "was trained with; answers may be worse. Fix it with `tuneyard base template NAME "
        "--set-file FILE`, or deploy with allow_template_mismatch.",
        expected,
        rendered,
    )
