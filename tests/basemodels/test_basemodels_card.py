"""Model card reading and deployment template derivation, on small hand-made files."""

from __future__ import annotations

import json
import struct

import pytest

from tuneyard.basemodels.card import (
    check_model_folder,
    format_bytes,
    format_count,
    read_model_card,
    read_safetensors_header,
)
from tuneyard.basemodels.template import FALLBACK_TEMPLATE, derive_template
from tuneyard.errors import Invalid

# Computation alone: runs once, on SQLite's run; the database is out of reach.
pytestmark = pytest.mark.nodb


def write_safetensors(path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file with these (dtype, shape) entries and zeroed data."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + count * sizes[dtype]],
        }
        offset += count * sizes[dtype]
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


@pytest.fixture
def folder(tmp_path):
    """A minimal folder: config, tokenizer and two bf16 shards listed in an index."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Gemma3ForConditionalGeneration"],
                "model_type": "gemma3",
                "text_config": {
                    "max_position_embeddings": 32768,
                    "hidden_size": 8,
                    "num_hidden_layers": 3,
                    "vocab_size": 100,
                },
            }
        )
    )
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<bos>", "lstrip": False},
                "eos_token": "<eos>",
                "chat_template": [
                    {"name": "tool_use", "template": "{{ tools }}"},
                    {"name": "default", "template": "<start_of_turn>user\n{{ m }}"},
                ],
            }
        )
    )
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("BF16", [10, 8])})
    write_safetensors(
        tmp_path / "model-00002-of-00002.safetensors", {"b": ("BF16", [8]), "c": ("F32", [2])}
    )
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    return tmp_path


class TestReadModelCard:
    def test_sharded_bf16_model_with_nested_text_config(self, folder):
        card = read_model_card(folder)
        assert card["architecture"] == "Gemma3ForConditionalGeneration"
        assert card["parameter_count"] == 80 + 8 + 2
        assert card["dtype"] == "bfloat16"
        assert card["context_length"] == 32768
        assert (card["vocab_size"], card["hidden_size"], card["num_layers"]) == (100, 8, 3)
        assert card["special_tokens"] == {"bos": "<bos>", "eos": "<eos>", "pad": None}
        assert card["chat_template_source"] == "tokenizer_config.json"

    def test_a_stray_safetensors_file_outside_the_index_is_not_counted(self, folder):
        write_safetensors(folder / "consolidated.safetensors", {"a": ("BF16", [10, 8])})
        assert read_model_card(folder)["parameter_count"] == 90

    def test_pickled_weights_leave_the_count_unknown(self, folder):
        for shard in folder.glob("*.safetensors*"):
            shard.unlink()
        (folder / "pytorch_model.bin").write_bytes(b"not read")
        card = read_model_card(folder)
        assert (card["parameter_count"], card["weights_format"]) == (None, "pytorch")

    def test_readme_license_other_and_summary_after_badges(self, folder):
        (folder / "README.md").write_text(
            "---\nlicense: other\nlicense_name: gemma\n---\n"
            "<p align=center><img src=x></p>\n\n[![badge](b)](c)\n\n# Title\n\n"
            "```python\ncode()\n```\n\nFirst real paragraph\ncontinues here.\n\nSecond.\n"
        )
        card = read_model_card(folder)
        assert card["license"] == "gemma"
        assert card["summary"] == "First real paragraph continues here."

    def test_long_summary_is_cut(self, folder):
        (folder / "README.md").write_text("word " * 400)
        summary = read_model_card(folder)["summary"]
        assert len(summary) == 500 and summary.endswith("…")

    def test_readme_with_broken_front_matter(self, folder):
        (folder / "README.md").write_text("---\nlicense: [unclosed\n---\nHello.\n")
        card = read_model_card(folder)
        assert (card["license"], card["summary"]) == (None, "Hello.")


class TestCheckModelFolder:
    def test_shard_missing_from_the_index(self, folder):
        (folder / "model-00002-of-00002.safetensors").unlink()
        with pytest.raises(Invalid, match="has no model-00002-of-00002.safetensors"):
            check_model_folder(folder)

    def test_truncated_safetensors_header(self, tmp_path):
        path = tmp_path / "model.safetensors"
        path.write_bytes(struct.pack("<Q", 1000) + b"{")
        with pytest.raises(Invalid, match="is not a readable safetensors file"):
            read_safetensors_header(path)


LLAMA3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
LLAMA2 = "{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}"
MISTRAL = "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
GEMMA = "{{ '<start_of_turn>' + role + '\n' }}"
PHI3 = "{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
CHATML = "{{ '<|im_start|>' + message['role'] }}"


class TestDeriveTemplate:
    @pytest.mark.parametrize(
        "chat_template,family,stop",
        [
            (CHATML, "chatml", ["<|im_start|>", "<|im_end|>"]),
            (LLAMA3, "llama3", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
            (LLAMA2, "llama2", ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]),
            (MISTRAL, "mistral", ["[INST]", "[/INST]"]),
            (GEMMA, "gemma", ["<start_of_turn>", "<end_of_turn>"]),
            (PHI3, "phi3", ["<|end|>", "<|user|>", "<|assistant|>"]),
        ],
    )
    def test_known_families(self, chat_template, family, stop):
        template = derive_template(chat_template, "</s>")
        assert template.source == f"derived:{family}"
        assert template.stop == stop
        assert "{{ .Prompt }}" in template.text
        assert template.note.startswith("The chat template's layout could not be read off")

    def test_llama3_prompt_layout(self):
        text = derive_template(LLAMA3, None).text
        assert "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>" in text
        assert text.endswith(
            "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
        )

    def test_unknown_format_falls_back_with_a_note(self):
        template = derive_template("{{ 'User: ' + content }}", "</s>")
        assert (template.text, template.source, template.stop) == (
            FALLBACK_TEMPLATE,
            "fallback",
            ["</s>"],
        )
        assert "is not a format Tuneyard recognises" in template.note

    def test_no_template_and_no_eos(self):
        template = derive_template(None, None)
        assert (template.source, template.stop) == ("fallback", [])
        assert template.note.startswith("The tokenizer has no chat template")


@pytest.mark.parametrize(
    "count,text", [(None, "unknown"), (999, "999"), (3_219_776, "3.2M"), (7_241_732_096, "7.2B")]
)
def test_format_count(count, text):
    assert format_count(count) == text


@pytest.mark.parametrize(
    "size,text", [(512, "512 B"), (16_405_705, "15.6 MB"), (3 * 1024**4, "3.0 TB")]
)
def test_format_bytes(size, text):
    assert format_bytes(size) == text
