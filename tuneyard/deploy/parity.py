"""Template parity: does the serving tool's prompt match the one the model was trained on?

Models that answer worse after export almost always get a different prompt than the chat
template produced in training. Before a deploy we render one sample conversation through the
base model's Hugging Face chat template and through the deployment template, and compare.
The deployment template is an Ollama Go template: the legacy form ({{ .System }},
{{ .Prompt }}, {{ .Response }}) or the `.Messages` form (range, if/else if, eq/ne/not/and/or/len,
variables); templates using other constructs are reported as not checked rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneyard.basemodels.gotemplate import (
    UnsupportedTemplate,
    render_chat_prompt,
    render_ollama_prompt,
    same_prompt,
    special_tokens,
)

SAMPLE_SYSTEM = "You are a careful assistant."
SAMPLE_PROMPT = "What is the capital of France?"


@dataclass(frozen=True)
class Parity:
    status: str  # match, mismatch, not_checked
    detail: str
    expected: str | None = None  # the chat template's rendering
    rendered: str | None = None  # the deployment template's rendering

    def as_card(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


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
    tokens = special_tokens(tokenizer_dir)
    chat = compile_chat_template(source, owner)
    messages = [
        {"role": "system", "content": SAMPLE_SYSTEM},
        {"role": "user", "content": SAMPLE_PROMPT},
    ]
    expected = render_chat_prompt(chat, messages, tokens)
    if expected is None:  # the chat template refuses a system message: compare without one
        messages = messages[1:]
        expected = render_chat_prompt(chat, messages, tokens)
    if expected is None:
        return Parity(
            "not_checked",
            "The chat template raises an error for a one-question conversation, so there is "
            "nothing to compare against.",
        )
    try:
        rendered = render_ollama_prompt(deployment_template, messages)
    except UnsupportedTemplate as exc:
        return Parity(
            "not_checked",
            f"The deployment template uses '{{{{ {exc} }}}}', which the parity check does not "
            "render; compare a conversation by hand after deploying.",
        )
    if same_prompt(expected, rendered, tokens.get("bos_token")):
        return Parity("match", "The deployment template renders the chat template's prompt.")
    return Parity(
        "mismatch",
        "The deployment template renders a different prompt than the chat template the model "
        "was trained with; answers may be worse. Fix it with `tuneyard base template NAME "
        "--set-file FILE`, or deploy with allow_template_mismatch.",
        expected,
        rendered,
    )
