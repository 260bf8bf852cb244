"""Template parity: does the serving tool's prompt match the one the model was trained on?

Models that answer worse after export almost always get a different prompt than the chat
template produced in training. Before a deploy we render one sample conversation through the
base model's Hugging Face chat template and through the deployment template, and compare.
The deployment template is an Ollama Go template: the legacy form ({{ .System }},
{{ .Prompt }}, {{ .Response }}) or the `.Messages` form (range, if/else if, eq/ne/not/and/or/len,
variables); templates using other constructs are reported as not checked rather than guessed at.
A server that renders the GGUF's own chat template instead (llama.cpp; Ollama v0.30+ for
templates with tools or thinking) is checked against the template and special tokens stored in
the written GGUF.
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


def _expected(tokenizer_dir: Path, owner: str) -> tuple[list[dict[str, str]], str, dict] | Parity:
    """The sample conversation, the chat template's prompt for it and the tokenizer's special
    tokens; or the Parity that says why there is nothing to compare against."""
    from tuneyard.basemodels.card import read_chat_template
    from tuneyard.basemodels.template import compile_chat_template

    source, _where = read_chat_template(tokenizer_dir)
    if not source:
        return Parity(
            "not_checked",
            "The tokenizer has no chat template, so there is nothing to compare against; "
            "the model is served with a plain prompt.",
        )
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
    return messages, expected, tokens


def check_parity(tokenizer_dir: Path, deployment_template: str | None, owner: str) -> Parity:
    """Compare the chat template's prompt for a sample conversation with the deployment one."""
    sample = _expected(tokenizer_dir, owner)
    if isinstance(sample, Parity):
        return sample
    messages, expected, tokens = sample
    if not deployment_template:
        return Parity("mismatch", "The base model has no deployment template.")
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


def gguf_chat_parity(gguf_file: Path, tokenizer_dir: Path, owner: str) -> Parity:
    """Compare the chat template's prompt with the one a server rendering the GGUF's own chat
    template makes (llama.cpp, and Ollama v0.30+ for templates with tools or thinking): the
    template stored in the file, with the BOS and EOS tokens the file names."""
    from tuneyard.basemodels.template import compile_chat_template

    sample = _expected(tokenizer_dir, owner)
    if isinstance(sample, Parity):
        return sample
    messages, expected, tokens = sample
    stored, stored_tokens = read_gguf_chat_template(gguf_file)
    if not stored:
        return Parity(
            "mismatch",
            f"{gguf_file.name} carries no chat template, so the server falls back to a "
            "generic prompt unlike the one the model was trained with.",
        )
    rendered = render_chat_prompt(
        compile_chat_template(stored, f"the chat template in {gguf_file.name}"),
        messages,
        stored_tokens,
    )
    if rendered is not None and same_prompt(expected, rendered, tokens.get("bos_token")):
        return Parity(
            "match", f"The chat template in {gguf_file.name} renders the model's own prompt."
        )
    return Parity(
        "mismatch",
        f"The chat template in {gguf_file.name}, with the special tokens the file names, "
        "renders a different prompt than the one the model was trained with; answers may be "
        "worse. Check the tokenizer's bos_token and eos_token, or deploy with "
        "allow_template_mismatch.",
        expected,
        rendered,
    )


def read_gguf_chat_template(gguf_file: Path) -> tuple[str | None, dict[str, str]]:
    """The chat template a GGUF stores, and its BOS and EOS tokens as text (as llama.cpp
    passes them to the template as bos_token and eos_token)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_file)

    def scalar(key: str):
        field = reader.get_field(key)
        return None if field is None else field.contents()

    template = scalar("tokenizer.chat_template")
    token_list = reader.get_field("tokenizer.ggml.tokens")
    tokens: dict[str, str] = {}
    for name in ("bos", "eos"):
        token_id = scalar(f"tokenizer.ggml.{name}_token_id")
        if token_list is not None and token_id is not None and 0 <= token_id < len(token_list.data):
            tokens[f"{name}_token"] = token_list.contents(int(token_id))
    return (template if isinstance(template, str) else None), tokens
