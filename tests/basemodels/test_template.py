"""Deployment templates read off a model's own chat template, checked by the parity renderer."""

import pytest

from tuneyard.basemodels.gotemplate import render_ollama_prompt
from tuneyard.basemodels.template import (
    FALLBACK_TEMPLATE,
    compile_chat_template,
    derive_template,
    ollama_uses_gguf_template,
)

pytestmark = pytest.mark.nodb

SIMPLE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = "
    "messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}"
    "{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'assistant' %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\n'}}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
    "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == "
    "'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
# Every conversation a deployed chat sends: system or not, one or two questions.
CONVERSATIONS = [
    [("user", "Bonjour")],
    [("system", "Reply in French.\nBe short."), ("user", "Hello")],
    [("user", "One"), ("assistant", "First answer."), ("user", "Two?")],
    [("system", "Sys"), ("user", "One"), ("assistant", "Answer one"), ("user", "Two")],
    [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")],
]
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def chat_prompt(chat_template, messages, tokens):
    chat = compile_chat_template(chat_template, "test")
    return chat.render(messages=messages, add_generation_prompt=True, **tokens)


@pytest.mark.parametrize(
    "chat_template,bos,eos",
    [
        (SIMPLE, None, "</s>"),
        (CHATML, None, "<|im_end|>"),
        (SMOLLM2, "<|im_start|>", "<|im_end|>"),
        (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
        (GEMMA, "<bos>", "<eos>"),
        (PHI3, "<s>", "<|endoftext|>"),
        (MISTRAL, "<s>", "</s>"),
        (ZEPHYR, "<s>", "</s>"),
    ],
    ids=["simple", "chatml", "smollm2", "llama3", "gemma", "phi3", "mistral", "zephyr"],
)
def test_derived_template_renders_every_conversation_as_the_chat_template(chat_template, bos, eos):
    derived = derive_template(chat_template, eos, bos)
    assert derived.source == "derived:chat_template"
    assert "{{ range .Messages }}" in derived.text
    assert eos in derived.stop
    tokens = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v}
    compared = 0
    for turns in CONVERSATIONS:
        messages = [{"role": role, "content": content} for role, content in turns]
        try:
            expected = chat_prompt(chat_template, messages, tokens)
        except Exception:  # the template refuses system messages (Mistral)
            assert turns[0][0] == "system"
            continue
        rendered = render_ollama_prompt(derived.text, messages)
        # The tokenizer adds a BOS token that is not also a chat marker itself.
        if bos and expected.startswith(bos) and not rendered.startswith(bos):
            expected = expected[len(bos) :]
        assert rendered == expected
        compared += 1
    assert compared >= 3


def test_the_simple_template_reads_as_its_turns():
    derived = derive_template(SIMPLE, "</s>")
    assert derived.note is None
    assert '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n' in derived.text
    assert derived.text.endswith("{{ end }}<|assistant|>\n")
    assert derived.stop == ["<|end|>", "</s>"]


def test_gemma_folds_the_system_text_into_the_first_question():
    derived = derive_template(GEMMA, "<eos>", "<bos>")
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert render_ollama_prompt(derived.text, messages) == (
        "<start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_smollm2_default_system_message_only_without_one():
    derived = derive_template(SMOLLM2, "<|im_end|>", "<|im_start|>")
    alone = render_ollama_prompt(derived.text, [{"role": "user", "content": "Hi"}])
    assert alone.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    given = render_ollama_prompt(
        derived.text, [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    )
    assert given == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )


def test_a_template_refusing_system_messages_leaves_them_out_with_a_note():
    derived = derive_template(MISTRAL, "</s>", "<s>")
    assert derived.note == (
        "The chat template refuses system messages, so the deployment template leaves them out."
    )
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert render_ollama_prompt(derived.text, messages) == "[INST] Hi [/INST]"


def test_underivable_template_of_a_known_family_uses_the_family_table_with_a_note():
    # Content rewritten per message: the markers do not survive, so the layout cannot be read.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    )
    derived = derive_template(template, "<|im_end|>")
    assert derived.source == "derived:chatml"
    assert derived.note.startswith("The chat template's layout could not be read off")


def test_underivable_unknown_template_falls_back_to_a_plain_prompt_with_a_note():
    derived = derive_template("{{ messages | length }} questions", "</s>")
    assert (derived.text, derived.source) == (FALLBACK_TEMPLATE, "fallback")
    assert "could not be read off its renderings" in derived.note


@pytest.mark.parametrize(
    "chat_template,uses",
    [
        (CHATML, False),
        (None, False),
        ("{% if tools %}{{ tools | tojson }}{% endif %}" + CHATML, True),
        ("{{ '<think>' }}{{ m }}{{ '</think>' }}", True),
        ("{% set c = message.content.split('</think>')[-1] %}", True),
    ],
)
def test_ollama_serves_templates_with_tools_or_thinking_itself(chat_template, uses):
    assert ollama_uses_gguf_template(chat_template) is uses
