"""GGUF export of SentencePiece tokenizers and of Gemma, Gemma 2 and Phi-3 models.

Each tiny model is random, built from a config, and checked by what llama.cpp computes from
its GGUF: the same token ids for the same texts, and the same logits, as transformers.
"""

from __future__ import annotations

import random
import shutil
from contextlib import closing
from pathlib import Path

import pytest

from tests.deploy.test_deploy_gguf import assert_same_logits, gguf_fields, llama_cpp_logits
from tuneyard.deploy.gguf_export import export_gguf, read_hyperparameters
from tuneyard.deploy.llamacpp_server import plain_buffers
from tuneyard.errors import Invalid

pytestmark = pytest.mark.nodb

TEXTS = (
    "Hello world, the quick brown fox 123 jumps!",
    # Runs of spaces are left out: sentencepiece, transformers and llama.cpp each split
    # them differently (sentencepiece even drops them), whatever the export writes.
    "two words and café\nnew line",
    "mountain river token piece 4567 model",
)
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "hello",
    "world",
    "model",
    "token",
    "piece",
    "river",
]
# Special pieces as each family's tokenizer.model names them.
SPECIALS = {
    "llama": {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1},
    "gemma": {
        "pad_id": 0,
        "eos_id": 1,
        "bos_id": 2,
        "unk_id": 3,
        "pad_piece": "<pad>",
        "eos_piece": "<eos>",
        "bos_piece": "<bos>",
        "unk_piece": "<unk>",
    },
}


def sentencepiece_folder(out: Path, family: str) -> Path:
    """A tiny byte-fallback BPE SentencePiece model in a transformers tokenizer folder."""
    import sentencepiece
    from transformers import GemmaTokenizer, LlamaTokenizer

    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(10)) + f" {rng.randint(0, 9999)}, café."
        for _ in range(300)
    ]
    source = out / "source"
    source.mkdir()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(source / "tokenizer"),
        vocab_size=360,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
        **SPECIALS[family],
    )
    tokenizer_class = GemmaTokenizer if family == "gemma" else LlamaTokenizer
    tokenizer = tokenizer_class.from_pretrained(source)
    folder = out / "tokenizer"
    tokenizer.save_pretrained(folder)
    # Checkpoints ship the SentencePiece model beside tokenizer.json.
    shutil.copy(source / "tokenizer.model", folder / "tokenizer.model")
    return folder


def tiny_model(out: Path, kind: str) -> Path:
    """A 2-layer, hidden-64 random model of `kind` with a SentencePiece tokenizer."""
    import torch
    from transformers import AutoTokenizer

    family = "gemma" if kind.startswith("gemma") else "llama"
    tokenizer_dir = sentencepiece_folder(out, family)
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
        "pad_token_id": None,
    }
    if kind == "llama":
        from transformers import LlamaConfig as Config
        from transformers import LlamaForCausalLM as Model

        config = Config(tie_word_embeddings=False, **shape)
    elif kind == "gemma":
        from transformers import GemmaConfig as Config
        from transformers import GemmaForCausalLM as Model

        config = Config(head_dim=16, **shape)
    elif kind == "gemma2":
        from transformers import Gemma2Config as Config
        from transformers import Gemma2ForCausalLM as Model

        # Caps low enough to bend the tiny model's scores, and a window shorter than the
        # texts, so that each setting changes the logits when it is lost.
        config = Config(
            head_dim=16,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=0.5,
            final_logit_softcapping=0.3,
            sliding_window=4,
            **shape,
        )
        config._attn_implementation = "eager"
    else:
        from transformers import Phi3Config as Config
        from transformers import Phi3ForCausalLM as Model

        config = Config(tie_word_embeddings=False, sliding_window=None, **shape)
    torch.manual_seed(3)
    model = Model(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Gemma's norms start at 0 (a scale of 1): random ones show the +1 is exported.
            if name.endswith("norm.weight"):
                parameter.uniform_(-0.5, 0.5)
    folder = out / kind
    model.save_pretrained(folder)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def llama_cpp_ids(gguf_file: Path, text: str) -> list[int]:
    import llama_cpp

    plain_buffers()
    llm = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    with closing(llm):
        return llm.tokenize(text.encode(), add_bos=llm._model.add_bos_token(), special=False)


def check_export(folder: Path, tmp_path: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / f"{folder.name}.gguf"
    export_gguf(folder, out, "f32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert llama_cpp_ids(out, text) == tokenizer(text)["input_ids"], text
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].numpy()
        # Gemma scales its embeddings by sqrt(hidden): float32 rounding grows with them.
        assert_same_logits(llama_cpp_logits(out, ids), theirs, atol=3e-4)
    return out


@pytest.mark.slow
class TestSentencePieceExport:
    def test_llama_with_sentencepiece_tokenizer(self, tmp_path_factory, tmp_path):
        folder = tiny_model(tmp_path_factory.mktemp("spm-llama"), "llama")
        out = check_export(folder, tmp_path)
        fields = gguf_fields(
            out,
            "tokenizer.ggml.model",
            "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.bos_token_id",
        )
        assert fields["tokenizer.ggml.model"] == "llama"
        assert fields["tokenizer.ggml.add_space_prefix"] is True
        assert fields["tokenizer.ggml.bos_token_id"] == 1

    def test_sentencepiece_tokenizer_without_model_file_is_refused(
        self, tmp_path_factory, tmp_path
    ):
        folder = tiny_model(tmp_path_factory.mktemp("spm-missing"), "llama")
        (folder / "tokenizer.model").unlink()
        with pytest.raises(Invalid, match="tokenizer.model"):
            export_gguf(folder, tmp_path / "out.gguf", "f32")
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("out.gguf")]

    def test_damaged_sentencepiece_model_is_refused(self, tmp_path_factory, tmp_path):
        folder = tiny_model(tmp_path_factory.mktemp("spm-damaged"), "llama")
        (folder / "tokenizer.model").write_bytes(b"\x00garbage" * 100)
        with pytest.raises(Invalid, match="not a SentencePiece model"):
            export_gguf(folder, tmp_path / "out.gguf", "f32")


@pytest.mark.slow
class TestArchitectures:
    def test_gemma(self, tmp_path_factory, tmp_path):
        folder = tiny_model(tmp_path_factory.mktemp("gemma"), "gemma")
        out = check_export(folder, tmp_path)
        fields = gguf_fields(out, "general.architecture", "tokenizer.ggml.add_space_prefix")
        assert fields["general.architecture"] == "gemma"
        assert fields["tokenizer.ggml.add_space_prefix"] is False
        assert "output.weight" not in fields["tensors"]

    def test_gemma2(self, tmp_path_factory, tmp_path):
        folder = tiny_model(tmp_path_factory.mktemp("gemma2"), "gemma2")
        out = check_export(folder, tmp_path)
        fields = gguf_fields(
            out,
            "gemma2.attn_logit_softcapping",
            "gemma2.final_logit_softcapping",
            "gemma2.attention.sliding_window",
        )
        assert fields["gemma2.attn_logit_softcapping"] == pytest.approx(0.5)
        assert fields["gemma2.final_logit_softcapping"] == pytest.approx(0.3)
        assert fields["gemma2.attention.sliding_window"] == 4
        assert "blk.1.post_ffw_norm.weight" in fields["tensors"]

    def test_phi3(self, tmp_path_factory, tmp_path):
        # The folder is named phi3: llama.cpp then looks up Phi-3's own special tokens, which
        # this tokenizer lacks, so the name written must not say Phi-3.
        folder = tiny_model(tmp_path_factory.mktemp("phi3"), "phi3")
        out = check_export(folder, tmp_path)
        fields = gguf_fields(
            out, "general.architecture", "general.name", "phi3.rope.dimension_count"
        )
        assert fields["general.architecture"] == "phi3"
        assert fields["general.name"] == "phi"
        assert fields["phi3.rope.dimension_count"] == 16
        # The fused weights go as they are: llama.cpp splits them itself.
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= set(fields["tensors"])
        assert "blk.0.ffn_gate.weight" not in fields["tensors"]


def test_gemma2_query_scale_llama_cpp_cannot_run_is_refused(tmp_path):
    import json

    config = {
        "architectures": ["Gemma2ForCausalLM"],
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "head_dim": 16,
        "query_pre_attn_scalar": 256,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Invalid, match="query_pre_attn_scalar=256"):
        read_hyperparameters(tmp_path)


def test_qwen3_with_attention_bias_is_refused(tmp_path):
    """llama.cpp's qwen3 has no output-projection bias, so such a GGUF would never load."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        attention_bias=True,
    )
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "model")
    with pytest.raises(Invalid, match="o_proj.bias"):
        export_gguf(tmp_path / "model", tmp_path / "out.gguf", "f32")
    assert not (tmp_path / "out.gguf").exists()
