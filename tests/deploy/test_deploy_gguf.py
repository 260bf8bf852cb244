"""GGUF export, GGUF LoRA export and quantizing, checked by what llama.cpp computes from them."""

from __future__ import annotations

import json
import shutil
from contextlib import closing
from pathlib import Path

import pytest

from tuneyard.deploy.gguf_export import (
    GGUF_ARCHITECTURES,
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    export_gguf,
    export_lora_gguf,
    gguf_architecture,
    lora_exportable,
)
from tuneyard.deploy.llamacpp_server import plain_buffers
from tuneyard.deploy.parity import gguf_chat_parity
from tuneyard.deploy.quantization import QUANTIZATIONS, check_quantization
from tuneyard.deploy.quantize import quantize_gguf
from tuneyard.errors import Invalid

# Computation alone: runs once, on SQLite's run; the database is out of reach.
pytestmark = pytest.mark.nodb

PROMPT = "Hello world, the 123 numbers: <|im_start|> and café!"
TOKENIZER_TEXTS = (
    PROMPT,
    "In 2024, 1234567 people said: I'M sure they'll WON'T   go.\n\n  Tabs\tand\r\nlines",
    "<|im_start|>user\nDigits 3.14159 and ünïcödé 日本語 emoji 🙂<|im_end|>",
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def byte_level(use_regex: bool) -> dict:
    return {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": use_regex,
    }


def split_then_bytes(pattern: str) -> dict:
    """A pre_tokenizer as Llama 3's and Qwen2's tokenizer.json spell theirs."""
    return {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": pattern},
                "behavior": "Isolated",
                "invert": False,
            },
            byte_level(use_regex=False),
        ],
    }


def llama_cpp_logits(gguf_file: Path, ids: list[int], lora: Path | None = None):
    """llama.cpp's logits at every position, with a float32 KV cache (as exact as transformers)."""
    import llama_cpp
    import numpy as np

    plain_buffers()
    llm = llama_cpp.Llama(
        str(gguf_file),
        lora_path=str(lora) if lora else None,
        n_ctx=64,
        n_threads=2,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    with closing(llm):
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])


def transformers_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def prompt_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]


def assert_same_logits(ours, theirs, atol: float = 1e-4) -> None:
    import numpy as np

    assert ours.shape == theirs.shape
    # The tiny models' logits spread over about +-0.5: a wrong weight layout moves them by
    # far more than float32 rounding does.
    assert np.abs(ours - theirs).max() < atol, np.abs(ours - theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def gguf_fields(path: Path, *names: str) -> dict:
    """The named metadata values of a GGUF file, and "tensors": each tensor's type."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: reader.fields[name].contents() for name in names if name in reader.fields}
    fields["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return fields


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def tiny_model(tmp_path_factory, tokenizer_dir, kind: str) -> Path:
    """A 2-layer model of `kind` with random weights and SmolLM2's tokenizer, saved in shards."""
    import torch
    from transformers import (
        AutoTokenizer,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
        "rope_theta": 50000.0,
    }
    torch.manual_seed(1)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
        # Qwen2 initialises its q/k/v biases to zero; random ones show they are exported.
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("_proj.bias"):
                    parameter.normal_(0, 0.5)
    else:
        # head_dim 32 while hidden / heads is 16: the key length must be written.
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=32, **shape))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(("q_norm.weight", "k_norm.weight")):
                    parameter.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp(f"tiny-{kind}")
    model.save_pretrained(out, max_shard_size="4MB")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory, tokenizer_dir) -> Path:
    return tiny_model(tmp_path_factory, tokenizer_dir, "qwen2")


@pytest.fixture(scope="module")
def tiny_qwen3_dir(tmp_path_factory, tokenizer_dir) -> Path:
    return tiny_model(tmp_path_factory, tokenizer_dir, "qwen3")


@pytest.fixture(scope="module")
def tiny_f32_gguf(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f32.gguf"
    export_gguf(tiny_model_dir, out, "f32")
    return out


@pytest.fixture(scope="module")
def tiny_f16_gguf(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f16.gguf"
    export_gguf(tiny_model_dir, out, "f16")
    return out


def load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


class TestExportGguf:
    def test_llama_logits_match_transformers(self, tiny_model_dir, tiny_f32_gguf):
        ids = prompt_ids(tiny_model_dir)
        assert_same_logits(
            llama_cpp_logits(tiny_f32_gguf, ids), transformers_logits(load(tiny_model_dir), ids)
        )

    @pytest.mark.slow
    @pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
    def test_qwen_logits_match_transformers(self, kind, request, tmp_path):
        model_dir = request.getfixturevalue(f"tiny_{kind}_dir")
        assert (model_dir / "model.safetensors.index.json").exists()  # sharded weights
        out = tmp_path / f"{kind}.gguf"
        export_gguf(model_dir, out, "f32")
        ids = prompt_ids(model_dir)
        assert_same_logits(llama_cpp_logits(out, ids), transformers_logits(load(model_dir), ids))
        fields = gguf_fields(out, "general.architecture", f"{kind}.attention.key_length")
        assert fields["general.architecture"] == kind
        assert "output.weight" in fields["tensors"]  # untied: its own lm_head
        if kind == "qwen2":
            assert fields["tensors"]["blk.0.attn_q.bias"] == "F32"
        else:
            assert fields["tensors"]["blk.1.attn_k_norm.weight"] == "F32"
            assert fields[f"{kind}.attention.key_length"] == 32

    @pytest.mark.parametrize(
        "rope",
        [
            {"rope_type": "linear", "factor": 4.0},
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ],
        ids=lambda rope: rope["rope_type"],
    )
    def test_rope_scaling_matches_transformers(self, rope, tokenizer_dir, tmp_path):
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={**rope, "rope_theta": 500000.0},
        )
        torch.manual_seed(3)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():
            # Large queries and keys make attention, and so positions, move the logits.
            for name, parameter in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    parameter.mul_(20)
        model.save_pretrained(tmp_path / "model")
        tokenizer.save_pretrained(tmp_path / "model")
        export_gguf(tmp_path / "model", tmp_path / "m.gguf", "f32")
        ids = prompt_ids(tmp_path / "model")
        ours = llama_cpp_logits(tmp_path / "m.gguf", ids)
        assert_same_logits(ours, transformers_logits(model, ids))

    @pytest.mark.slow
    def test_reads_older_transformers_rope_keys(self, tiny_model_dir, tmp_path):
        import shutil

        model_dir = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        del config["rope_parameters"]
        config["rope_theta"] = 1e6
        config["rope_scaling"] = {"type": "yarn", "factor": 4.0}
        (model_dir / "config.json").write_text(json.dumps(config))
        export_gguf(model_dir, tmp_path / "m.gguf")
        fields = gguf_fields(
            tmp_path / "m.gguf",
            "llama.rope.freq_base",
            "llama.rope.scaling.type",
            "llama.rope.scaling.factor",
            "llama.rope.scaling.original_context_length",
        )
        assert fields["llama.rope.freq_base"] == 1e6
        assert fields["llama.rope.scaling.type"] == "yarn"
        assert fields["llama.rope.scaling.factor"] == 4.0
        assert fields["llama.rope.scaling.original_context_length"] == 512

    @pytest.mark.slow
    @pytest.mark.parametrize(
        ("pre_tokenizer", "ignore_merges", "llama_cpp_name"),
        [
            (byte_level(use_regex=True), False, "gpt-2"),
            (
                {
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Digits", "individual_digits": True},
                        byte_level(use_regex=True),
                    ],
                },
                False,
                "smollm",
            ),
            (split_then_bytes(QWEN2_SPLIT), False, "qwen2"),
            (split_then_bytes(LLAMA3_SPLIT), True, "llama-bpe"),
        ],
        ids=["gpt2", "smollm2", "qwen2", "llama3"],
    )
    def test_llama_cpp_tokenizes_as_transformers(
        self, pre_tokenizer, ignore_merges, llama_cpp_name, tiny_model_dir, tmp_path
    ):
        """Each known pre-tokenizer is recognised, so llama.cpp splits text as transformers does."""
        import shutil

        import llama_cpp
        from transformers import AutoTokenizer

        model_dir = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model_dir)
        tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
        tokenizer_json["pre_tokenizer"] = pre_tokenizer
        tokenizer_json["model"]["ignore_merges"] = ignore_merges
        (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json))
        export_gguf(model_dir, tmp_path / "m.gguf")
        fields = gguf_fields(tmp_path / "m.gguf", "tokenizer.ggml.pre")
        assert fields["tokenizer.ggml.pre"] == llama_cpp_name
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
        with closing(llm):
            for text in TOKENIZER_TEXTS:
                expected = tokenizer(text)["input_ids"]
                assert llm.tokenize(text.encode(), add_bos=True, special=True) == expected, text

    @pytest.mark.slow
    def test_gguf_carries_chat_template_and_special_tokens(self, tiny_model_dir, tiny_f16_gguf):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        fields = gguf_fields(
            tiny_f16_gguf,
            "tokenizer.chat_template",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.model",
            "tokenizer.ggml.tokens",
            "general.architecture",
            "general.file_type",
            "llama.attention.head_count_kv",
        )
        assert fields["tokenizer.chat_template"] == tokenizer.chat_template
        assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id == 1
        assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == 2
        assert fields["tokenizer.ggml.add_bos_token"] is False
        assert fields["tokenizer.ggml.model"] == "gpt2"
        assert len(fields["tokenizer.ggml.tokens"]) == len(tokenizer)
        assert fields["general.architecture"] == "llama"
        assert fields["general.file_type"] == 1  # mostly f16
        assert fields["llama.attention.head_count_kv"] == 2
        # Tied embeddings: llama.cpp reuses token_embd as the output layer.
        assert "output.weight" not in fields["tensors"]
        assert fields["tensors"]["token_embd.weight"] == "F16"
        assert fields["tensors"]["blk.0.attn_norm.weight"] == "F32"

    @pytest.mark.slow
    @pytest.mark.parametrize(("outtype", "atol"), [("f16", 2e-3), ("bf16", 2e-2)])
    def test_half_precision_exports_load(self, outtype, atol, tiny_model_dir, tmp_path):
        seen: list[float] = []
        out = tmp_path / f"{outtype}.gguf"
        export_gguf(tiny_model_dir, out, outtype, lambda fraction, _m: seen.append(fraction))
        assert seen == sorted(seen)
        assert seen[-1] == 1.0
        assert gguf_fields(out)["tensors"]["blk.0.ffn_up.weight"] == outtype.upper()
        ids = prompt_ids(tiny_model_dir)
        # Within the rounding of weights to 11 (f16) or 8 (bf16) significant bits.
        ours = llama_cpp_logits(out, ids)
        assert_same_logits(ours, transformers_logits(load(tiny_model_dir), ids), atol=atol)

    def test_unsupported_architecture_names_the_supported_ones(self, tmp_path):
        model_dir = tmp_path / "gpt2"
        model_dir.mkdir()
        config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2}
        (model_dir / "config.json").write_text(json.dumps(config))
        out = tmp_path / "out" / "model.gguf"
        with pytest.raises(Invalid) as caught:
            export_gguf(model_dir, out)
        assert "GPT2LMHeadModel" in caught.value.message
        for supported in GGUF_ARCHITECTURES:
            assert supported in caught.value.message
        with pytest.raises(Invalid, match="GPT2LMHeadModel"):
            gguf_architecture(model_dir)
        assert not out.exists()

    def test_failed_export_leaves_no_file(self, tiny_model_dir, tmp_path):
        import shutil

        model_dir = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model_dir)
        tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
        tokenizer["model"]["byte_fallback"] = True
        (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
        with pytest.raises(Invalid, match="SentencePiece-style tokenizer"):
            export_gguf(model_dir, tmp_path / "model.gguf")
        assert not (tmp_path / "model.gguf").exists()
        assert leftovers(tmp_path) == []

    def test_weights_beyond_float16_are_refused_in_f16(self, tiny_model_dir, tmp_path):
        import shutil

        from safetensors.torch import load_file, save_file

        model_dir = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model_dir)
        weights = load_file(model_dir / "model.safetensors")
        weights["model.layers.1.mlp.up_proj.weight"][0, 0] = 1e6
        save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(Invalid, match="blk.1.ffn_up.weight holds values beyond float16"):
            export_gguf(model_dir, tmp_path / "m.gguf", "f16")
        assert not (tmp_path / "m.gguf").exists()
        assert leftovers(tmp_path) == []
        export_gguf(model_dir, tmp_path / "m.gguf", "bf16")

    def test_unknown_outtype(self, tiny_model_dir, tmp_path):
        with pytest.raises(Invalid, match="f16, f32, bf16"):
            export_gguf(tiny_model_dir, tmp_path / "m.gguf", "q4_0")


def metadata_gguf(path: Path, chat_template: str | None, tokens: list[str]) -> Path:
    """A GGUF holding only tokenizer metadata, as a server reads it for the chat template."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_token_list(tokens)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class TestGgufChatParity:
    """What a server rendering the GGUF's own chat template would prompt the model with."""

    def test_the_written_gguf_prompts_as_the_model_was_trained(self, tiny_model_dir, tiny_f16_gguf):
        parity = gguf_chat_parity(tiny_f16_gguf, tiny_model_dir, "tiny")
        assert parity.status == "match", parity
        assert "tiny-f16.gguf" in parity.detail

    def test_another_template_in_the_file_is_a_mismatch_showing_both_prompts(
        self, tiny_model_dir, tmp_path
    ):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        other = tokenizer.chat_template.replace("<|im_start|>", "<|start|>")
        tokens = ["<unk>", tokenizer.bos_token, tokenizer.eos_token]
        parity = gguf_chat_parity(
            metadata_gguf(tmp_path / "other.gguf", other, tokens), tiny_model_dir, "tiny"
        )
        assert parity.status == "mismatch"
        assert parity.expected is not None and parity.rendered is not None
        assert "<|im_start|>user" in parity.expected and "<|start|>user" in parity.rendered
        assert "allow_template_mismatch" in parity.detail

    def test_a_file_without_a_chat_template_is_a_mismatch(self, tiny_model_dir, tmp_path):
        parity = gguf_chat_parity(
            metadata_gguf(tmp_path / "bare.gguf", None, ["<unk>", "<s>", "</s>"]),
            tiny_model_dir,
            "tiny",
        )
        assert parity.status == "mismatch"
        assert parity.detail.startswith("bare.gguf carries no chat template")

    def test_the_special_tokens_come_from_the_file(self, tiny_model_dir, tmp_path):
        """A template writing `eos_token` gets the file's EOS, not the tokenizer's."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        template = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dir, folder)
        (folder / "chat_template.jinja").write_text(template)
        right = ["<unk>", tokenizer.bos_token, tokenizer.eos_token]
        wrong = ["<unk>", tokenizer.bos_token, "</s>"]
        right_file = metadata_gguf(tmp_path / "a.gguf", template, right)
        assert gguf_chat_parity(right_file, folder, "t").status == "match"
        parity = gguf_chat_parity(metadata_gguf(tmp_path / "b.gguf", template, wrong), folder, "t")
        assert parity.status == "mismatch"
        assert parity.rendered is not None and parity.rendered.endswith("</s>")


class TestQuantize:
    @pytest.mark.parametrize("quantization", ["q8_0", "q4_K_M"])
    def test_quantized_file_loads_and_is_smaller(self, quantization, tiny_f16_gguf, tmp_path):
        import numpy as np

        out = tmp_path / f"{quantization}.gguf"
        quantize_gguf(tiny_f16_gguf, out, quantization, threads=2)
        assert out.stat().st_size < tiny_f16_gguf.stat().st_size
        assert leftovers(tmp_path) == []
        # Row size 64 is no multiple of the k-quant block (256): llama.cpp falls back.
        logits = llama_cpp_logits(out, [1, 260, 330])
        assert np.isfinite(logits).all()
        expected_type = {"q8_0": 7, "q4_K_M": 15}[quantization]
        assert gguf_fields(out, "general.file_type")["general.file_type"] == expected_type

    def test_unknown_quantization_lists_the_allowed(self, tiny_f16_gguf, tmp_path):
        with pytest.raises(Invalid) as caught:
            quantize_gguf(tiny_f16_gguf, tmp_path / "x.gguf", "q5_K_M")
        for name in QUANTIZATIONS:
            assert name in caught.value.message
        assert not (tmp_path / "x.gguf").exists()

    def test_check_quantization(self):
        assert check_quantization("q4_K_M") == "q4_K_M"
        # Exactly the four names: another spelling is refused, not guessed.
        with pytest.raises(Invalid, match="use one of: no_quantization"):
            check_quantization("Q4_K_M")
        with pytest.raises(Invalid, match="no_quantization, q8_0, q4_K_M, q4_K_S"):
            check_quantization("f16")

    def test_no_quantization_is_not_a_quantize_step(self, tiny_f16_gguf, tmp_path):
        with pytest.raises(Invalid, match="export the model as an f16 GGUF"):
            quantize_gguf(tiny_f16_gguf, tmp_path / "x.gguf", "no_quantization")

    def test_failed_quantize_leaves_no_file(self, tiny_model_dir, tmp_path):
        out = tmp_path / "out"
        with pytest.raises(Invalid, match="is not a GGUF file"):
            quantize_gguf(tiny_model_dir / "model.safetensors", out / "x.gguf", "q8_0")
        damaged = tmp_path / "damaged.gguf"
        damaged.write_bytes(b"GGUF" + b"\xff" * 64)
        with pytest.raises(Invalid, match="llama.cpp could not quantize damaged.gguf to q8_0"):
            quantize_gguf(damaged, out / "x.gguf", "q8_0")
        assert list(out.iterdir()) == []


def random_lora(base_dir: Path, out: Path, **settings) -> Path:
    """A LoRA with random A and B (B is not zero, so the adapter changes the logits)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    settings = {"target_modules": LORA_TARGETS, **settings}
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **settings)
    get_peft_model(load(base_dir), config).save_pretrained(out)
    return out


class TestLoraGguf:
    @pytest.mark.parametrize(
        "settings",
        [
            {},
            # Per-module ranks and alphas, and rsLoRA's alpha / sqrt(r) scale.
            {"use_rslora": True, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"down_proj": 3}},
        ],
        ids=["plain", "rslora-patterns"],
    )
    def test_logits_match_peft(self, settings, tiny_model_dir, tiny_f32_gguf, tmp_path):
        from peft import PeftModel

        adapter = random_lora(tiny_model_dir, tmp_path / "adapter", **settings)
        assert lora_exportable(adapter) is None
        export_lora_gguf(adapter, tiny_model_dir, tmp_path / "lora.gguf")
        ids = prompt_ids(tiny_model_dir)
        peft_model = PeftModel.from_pretrained(load(tiny_model_dir), adapter).eval()
        expected = transformers_logits(peft_model, ids)
        with peft_model.disable_adapter():
            base_only = transformers_logits(peft_model, ids)
        assert abs(expected - base_only).max() > 0.1  # the adapter matters
        ours = llama_cpp_logits(tiny_f32_gguf, ids, lora=tmp_path / "lora.gguf")
        assert_same_logits(ours, expected)
        fields = gguf_fields(tmp_path / "lora.gguf", "general.type", "adapter.type")
        assert fields["general.type"] == "adapter"
        assert fields["adapter.type"] == "lora"
        assert fields["tensors"]["blk.1.attn_q.weight.lora_b"] == "F32"

    @pytest.mark.parametrize(
        ("settings", "reason"),
        [
            ({"use_dora": True}, "DoRA"),
            ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
            ({"target_modules": ["embed_tokens", "q_proj"]}, "LoRA on the embeddings"),
        ],
        ids=["dora", "modules-to-save", "embedding"],
    )
    def test_not_exportable_says_why(self, settings, reason, tiny_model_dir, tmp_path):
        import torch
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **settings})
        torch.manual_seed(0)
        get_peft_model(load(tiny_model_dir), config).save_pretrained(tmp_path / "adapter")
        assert reason in lora_exportable(tmp_path / "adapter")
        with pytest.raises(Invalid, match="Merge it first"):
            export_lora_gguf(tmp_path / "adapter", tiny_model_dir, tmp_path / "lora.gguf")
        assert not (tmp_path / "lora.gguf").exists()

    def test_lora_on_a_tied_lm_head_is_refused(self, tiny_model_dir, tmp_path):
        import torch
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"])
        torch.manual_seed(0)
        peft_model = get_peft_model(load(tiny_model_dir), config)
        peft_model.save_pretrained(tmp_path / "with-copy")
        assert "full copy of lm_head" in lora_exportable(tmp_path / "with-copy")
        peft_model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
        assert lora_exportable(tmp_path / "adapter") is None
        with pytest.raises(Invalid, match="ties to its embeddings"):
            export_lora_gguf(tmp_path / "adapter", tiny_model_dir, tmp_path / "lora.gguf")
        assert not (tmp_path / "lora.gguf").exists()

    def test_adapter_of_another_base_is_refused(self, tiny_model_dir, tiny_qwen3_dir, tmp_path):
        adapter = random_lora(tiny_qwen3_dir, tmp_path / "adapter")
        with pytest.raises(Invalid, match="trained on another base model"):
            export_lora_gguf(adapter, tiny_model_dir, tmp_path / "lora.gguf")
        assert leftovers(tmp_path) == []
        assert not (tmp_path / "lora.gguf").exists()


# -- the real demo model ---------------------------------------------------------------------

CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
)


@pytest.mark.slow
def test_smollm2_f16_greedy_decoding_matches_transformers(smollm2_folder, tmp_path):
    import llama_cpp
    import torch
    from transformers import AutoTokenizer

    out = tmp_path / "smollm2-f16.gguf"
    export_gguf(smollm2_folder, out, "f16")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = load(smollm2_folder)
    plain_buffers()
    llm = llama_cpp.Llama(str(out), n_ctx=512, n_threads=2, verbose=False)
    with closing(llm):
        assert llm.token_eos() == tokenizer.eos_token_id
        for prompt in CHAT_PROMPTS:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            with torch.no_grad():
                generated = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
            expected = generated[0, len(ids) :].tolist()
            ours = []
            for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                ours.append(token)
                if token == llm.token_eos() or len(ours) == len(expected):
                    break
            assert ours == expected, (prompt, tokenizer.decode(ours), tokenizer.decode(expected))
