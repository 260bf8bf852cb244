"""Hugging Face model folders and PEFT LoRA adapters written as GGUF files for llama.cpp.

Both exports stream: every tensor's shape and type is known from the safetensors headers, so
the GGUF header and tensor table are written first and then each tensor is read, converted
and written on its own; memory stays near the largest tensor, not the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneyard.complete.merge import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    base_weight_files,
    read_adapter,
    read_json,
)
from tuneyard.complete.safetensors_io import FLOAT_DTYPES, TensorInfo, read_header, read_tensor
from tuneyard.errors import Invalid
from tuneyard.storage import atomic_path

Progress = Callable[[float, str], None]

GGUF_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    # llama.cpp runs Mistral's dense models as llama (its sliding window aside).
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Phi3ForCausalLM": "phi3",
}
OUTTYPES = ("f16", "f32", "bf16")
# The general.file_type of each (gguf.LlamaFileType).
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}
# HF checkpoints store q_proj/k_proj rows with each head's rotary halves split apart
# (transformers' rotate_half); llama.cpp's llama graph rotates interleaved pairs instead.
ARCHS_WITH_SPLIT_ROTARY = ("llama",)
# Gemma's RMSNorm scales by (1 + weight); llama.cpp's by weight, so the 1 is added on export.
ARCHS_WITH_NORM_OFFSET = ("gemma", "gemma2")
# Architectures whose llama.cpp graph has no output tensor: the embeddings always serve as it.
ARCHS_WITH_TIED_OUTPUT = ("gemma", "gemma2")
# SentencePiece models (tokenizer.model) are small; a bigger file is not a tokenizer.
MAX_SENTENCEPIECE_BYTES = 64 * 1024 * 1024
# Tensors of a checkpoint that llama.cpp's graph of the architecture has no place for: it then
# refuses the whole file ("wrong number of tensors"). Qwen3 with attention_bias biases o_proj too,
# and llama.cpp's qwen3 reads q/k/v biases only.
UNREAD_TENSORS = {"qwen3": (".attn_output.bias", "attention_bias: o_proj's bias")}
# llama.cpp looks these tokens up in the vocabulary of any model whose general.name says
# Phi-3, and fails to load one that lacks any of them.
PHI3_NAME = re.compile(r"phi-?3", re.IGNORECASE)
PHI3_NAME_TOKENS = frozenset({"<unk>", "<s>", "</s>", "<|endoftext|>"})
# Buffers some checkpoints carry that are recomputed at load and have no GGUF tensor.
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)

# Pre-tokenizer split patterns, as tokenizer.json spells them, of the tokenizers whose
# llama.cpp pre-tokenizer name cannot be read off the tokenizer's structure alone.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# For a byte-level tokenizer of unknown make: the one its architecture's family ships with.
DEFAULT_PRE_TOKENIZERS = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}


@dataclass(frozen=True)
class Hyperparameters:
    """What llama.cpp needs to know about a model besides its tensors."""

    arch: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    context_length: int
    rms_eps: float
    rope_theta: float
    rope: dict[str, Any]  # the rope scaling parameters; {} for plain rope
    tied_embeddings: bool
    rope_dims: int = 0  # rotated dimensions per head; 0: the whole head
    # Architecture-specific settings: Gemma 2's soft-capping, sliding window (Gemma 2, Phi-3).
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None


def _model_config(model_dir: Path) -> dict[str, Any]:
    return read_json(model_dir / "config.json", "it is not a Hugging Face model folder.")


def _architecture_of(config: dict[str, Any]) -> str:
    found = (config.get("architectures") or [None])[0]
    if found not in GGUF_ARCHITECTURES:
        raise Invalid(
            f"The model's architecture is {found or 'not given in config.json'}; GGUF export "
            f"supports {', '.join(GGUF_ARCHITECTURES)}. Deploy it to a serving tool that "
            "takes Hugging Face folders instead."
        )
    return GGUF_ARCHITECTURES[found]


def gguf_architecture(model_dir: Path) -> str:
    """The llama.cpp architecture of a model folder; Invalid if GGUF export does not support it."""
    return _architecture_of(_model_config(model_dir))


def _rope_settings(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope theta, scaling parameters) from either transformers' old or new config keys."""
    parameters = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    theta = parameters.pop("rope_theta", None) or config.get("rope_theta") or 10000.0
    rope = parameters or scaling
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "default":
        return float(theta), {}
    if kind not in ("linear", "yarn", "llama3"):
        raise Invalid(
            f"The model uses {kind} rope scaling, which GGUF export does not write; it writes "
            "plain, linear, yarn and llama3 rope."
        )
    if not isinstance(rope.get("factor"), int | float):
        raise Invalid(f"The model's {kind} rope scaling has no factor in config.json.")
    return float(theta), {**rope, "rope_type": kind}


def read_hyperparameters(model_dir: Path) -> Hyperparameters:
    config = _model_config(model_dir)
    arch = _architecture_of(config)
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise Invalid(
            f"The model's weights are quantized ({method}); GGUF export needs float weights. "
            "Save the model unquantized first."
        )
    theta, rope = _rope_settings(config)
    # llama.cpp applies llama3 rope through a rope_freqs tensor only its llama graph reads.
    if rope.get("rope_type") == "llama3" and arch != "llama":
        raise Invalid(f"The model uses llama3 rope scaling, which llama.cpp's {arch} cannot run.")
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or hidden // heads)
        return Hyperparameters(
            arch=arch,
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            context_length=int(config.get("max_position_embeddings") or 2048),
            rms_eps=float(config.get("rms_norm_eps") or 1e-6),
            rope_theta=theta,
            rope=rope,
            tied_embeddings=bool(config.get("tie_word_embeddings", arch in ARCHS_WITH_TIED_OUTPUT)),
            **_architecture_settings(config, arch, hidden, heads, head_dim),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Invalid(f"{model_dir}/config.json lacks or garbles {exc}.") from None


def _architecture_settings(
    config: dict[str, Any], arch: str, hidden: int, heads: int, head_dim: int
) -> dict[str, Any]:
    """The Hyperparameters fields only some architectures have, checked for llama.cpp."""
    if arch in ARCHS_WITH_TIED_OUTPUT and not config.get("tie_word_embeddings", True):
        raise Invalid(
            f"The model's lm_head is not tied to its embeddings, which llama.cpp's {arch} "
            "cannot run: it always uses the embeddings as the output layer."
        )
    if arch == "gemma2":
        # llama.cpp scales Gemma 2's queries by 1/sqrt(head_dim) (by 1/sqrt(hidden / heads)
        # for the 27B model only); transformers by 1/sqrt(query_pre_attn_scalar).
        scalar = config.get("query_pre_attn_scalar")
        if scalar is not None and int(scalar) not in (head_dim, hidden // heads):
            raise Invalid(
                f"The model scales queries by query_pre_attn_scalar={scalar}, which llama.cpp's "
                f"gemma2 cannot run: it uses the head size ({head_dim})."
            )
        capping = (config.get("attn_logit_softcapping"), config.get("final_logit_softcapping"))
        return {
            "attn_softcap": float(capping[0]) if capping[0] is not None else None,
            "final_softcap": float(capping[1]) if capping[1] is not None else None,
            "sliding_window": int(config.get("sliding_window") or 4096),
        }
    if arch == "phi3":
        fraction = float(config.get("partial_rotary_factor") or 1.0)
        if not 0 < fraction <= 1:
            raise Invalid(f"partial_rotary_factor {fraction} is not within (0, 1].")
        # llama.cpp tells Phi-4 (no sliding window) from Phi-3 by a sliding window of 0.
        return {
            "rope_dims": int(fraction * hidden) // heads,
            "sliding_window": int(config.get("sliding_window") or 0),
        }
    return {}


# -- tensors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: where its data comes from and what it is written as."""

    gguf_name: str
    source: Path
    info: TensorInfo
    ggml_type: str  # "F32", "F16" or "BF16"
    permute_heads: int  # > 0: undo HF's rotary row order over this many heads
    offset: float = 0.0  # added to every value (Gemma's norm weights)

    @property
    def nbytes(self) -> int:
        return self.info.numel * (4 if self.ggml_type == "F32" else 2)


def _name_map(hp: Hyperparameters):
    import gguf

    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == hp.arch)
    return gguf.get_tensor_name_map(arch, hp.layers)


def _gguf_name(name_map, hf_name: str) -> str | None:
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def _permute_heads(hp: Hyperparameters, gguf_name: str) -> int:
    if hp.arch not in ARCHS_WITH_SPLIT_ROTARY:
        return 0
    if gguf_name.endswith((".attn_q.weight", ".attn_q.bias")):
        return hp.heads
    if gguf_name.endswith((".attn_k.weight", ".attn_k.bias")):
        return hp.kv_heads
    return 0


def plan_tensors(model_dir: Path, hp: Hyperparameters, outtype: str) -> list[PlannedTensor]:
    """Every weight of the folder with its GGUF name and type, in file order."""
    name_map = _name_map(hp)
    planned: list[PlannedTensor] = []
    for path in base_weight_files(model_dir):
        tensors, _ = read_header(path)
        for info in sorted(tensors.values(), key=lambda t: t.start):
            if info.name.endswith(SKIPPED_SUFFIXES):
                continue
            # A tied lm_head is the embedding itself; llama.cpp reuses token_embd for it.
            if info.name == "lm_head.weight" and hp.tied_embeddings:
                continue
            if info.dtype not in FLOAT_DTYPES:
                raise Invalid(
                    f"Tensor {info.name} in {path.name} is {info.dtype}: the weights are "
                    "quantized or not a model's; GGUF export needs float weights."
                )
            gguf_name = _gguf_name(name_map, info.name)
            if gguf_name is None:
                raise Invalid(
                    f"Tensor {info.name} in {path.name} has no place in a {hp.arch} GGUF: the "
                    "folder is not a plain model of its architecture."
                )
            unread = UNREAD_TENSORS.get(hp.arch)
            if unread and gguf_name.endswith(unread[0]):
                raise Invalid(
                    f"The model has {unread[1]} ({info.name}), which llama.cpp's {hp.arch} "
                    "cannot load. Deploy it to a serving tool that takes Hugging Face folders."
                )
            # llama.cpp reads 1-D tensors (norms, biases) in float32 only.
            ggml_type = "F32" if len(info.shape) == 1 else outtype.upper()
            offset = (
                1.0
                if hp.arch in ARCHS_WITH_NORM_OFFSET and info.name.endswith("norm.weight")
                else 0.0
            )
            planned.append(
                PlannedTensor(
                    gguf_name, path, info, ggml_type, _permute_heads(hp, gguf_name), offset
                )
            )
    if not any(t.gguf_name == "token_embd.weight" for t in planned):
        raise Invalid(f"{model_dir} has no token embedding (model.embed_tokens.weight).")
    if not hp.tied_embeddings and not any(t.gguf_name == "output.weight" for t in planned):
        raise Invalid(
            f"{model_dir} has no lm_head.weight, and its config does not tie the output to the "
            "embeddings (tie_word_embeddings): the weights are incomplete."
        )
    return planned


def rotary_interleaved(tensor, heads: int):
    """HF's per-head [first halves | second halves] rows, back to llama.cpp's interleaved pairs.

    The inverse of the permutation transformers' convert_llama_weights_to_hf.py applies.
    """
    rows = tensor.shape[0]
    rest = tuple(tensor.shape[1:])
    return (
        tensor.reshape(heads, 2, rows // heads // 2, *rest)
        .transpose(1, 2)
        .reshape(rows, *rest)
        .contiguous()
    )


def _as_ggml_array(tensor, ggml_type: str, name: str):
    """A numpy array of the tensor's bytes as the GGUF file stores them."""
    import torch

    if ggml_type == "BF16":
        return tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    if ggml_type == "F32":
        return tensor.to(torch.float32).contiguous().numpy()
    half = tensor.to(torch.float16).contiguous()
    # float16 tops out at 65504, where bfloat16 and float32 weights can go far beyond.
    if not bool(torch.isfinite(half).all()):
        if bool(torch.isfinite(tensor).all()):
            raise Invalid(
                f"Weight {name} holds values beyond float16's range; export as bf16 or f32."
            )
        raise Invalid(f"Weight {name} holds inf or NaN: the model is broken.")
    return half.numpy()


def _llama3_rope_factors(hp: Hyperparameters) -> list[float]:
    """The per-frequency divisors of llama3 rope scaling, as llama.cpp's rope_freqs tensor."""
    factor = float(hp.rope["factor"])
    low = float(hp.rope.get("low_freq_factor", 1.0))
    high = float(hp.rope.get("high_freq_factor", 4.0))
    original = float(hp.rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = original / low, original / high
    factors = []
    for i in range(0, hp.head_dim, 2):
        wavelen = 2 * math.pi * hp.rope_theta ** (i / hp.head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


# -- metadata ---------------------------------------------------------------------------------


def _write_hyperparameters(writer, hp: Hyperparameters, vocab_rows: int) -> None:
    import gguf

    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden)
    writer.add_feed_forward_length(hp.intermediate)
    writer.add_block_count(hp.layers)
    writer.add_head_count(hp.heads)
    writer.add_head_count_kv(hp.kv_heads)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.rope_dims or hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(vocab_rows)
    kind = hp.rope.get("rope_type")
    if kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(kind))
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
    if kind == "yarn":
        original = hp.rope.get("original_max_position_embeddings") or hp.context_length
        writer.add_rope_scaling_orig_ctx_len(int(original))
    if hp.attn_softcap is not None:
        writer.add_attn_logit_softcapping(hp.attn_softcap)
    if hp.final_softcap is not None:
        writer.add_final_logit_softcapping(hp.final_softcap)
    if hp.sliding_window is not None:
        writer.add_sliding_window(hp.sliding_window)


def _pre_tokenizer_name(spec: dict[str, Any] | None, arch: str) -> str:
    """The llama.cpp pre-tokenizer that splits text as tokenizer.json's pre_tokenizer does."""
    steps = (spec.get("pretokenizers") or [spec]) if spec else []
    kinds = [step.get("type") for step in steps]
    splits = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    if splits == [LLAMA3_SPLIT]:
        return "llama-bpe"
    if splits == [QWEN2_SPLIT]:
        return "qwen2"
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level and byte_level.get("use_regex", True):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    if arch not in DEFAULT_PRE_TOKENIZERS:
        raise Invalid(
            "The tokenizer's pre-tokenizer is not one GGUF export knows for a "
            f"{arch} model; llama.cpp would split text differently from transformers."
        )
    return DEFAULT_PRE_TOKENIZERS[arch]


def _byte_level_vocab(tokenizer: dict[str, Any], rows: int) -> tuple[list[str], list[int]]:
    """Tokens and their llama.cpp types, padded to the embedding's rows."""
    import gguf

    tokens: dict[int, tuple[str, int]] = {
        index: (text, gguf.TokenType.NORMAL) for text, index in tokenizer["model"]["vocab"].items()
    }
    for added in tokenizer.get("added_tokens") or []:
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        tokens[int(added["id"])] = (added["content"], kind)
    if tokens and max(tokens) >= rows:
        raise Invalid(
            f"The tokenizer has token id {max(tokens)}, but the embedding has only {rows} rows: "
            "the tokenizer does not belong to these weights."
        )
    texts, types = [], []
    for index in range(rows):
        # Embedding rows past the tokenizer's last id (vocab padded for speed) stay unused.
        text, token_type = tokens.get(index, (f"[PAD{index}]", gguf.TokenType.UNUSED))
        texts.append(text)
        types.append(int(token_type))
    return texts, types


def _sentencepiece_vocab(
    model_file: Path, tokenizer: dict[str, Any], rows: int
) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and llama.cpp types of a SentencePiece model, padded to the embedding."""
    import gguf

    try:
        import sentencepiece
    except ImportError:
        raise Invalid(
            "GGUF export of a SentencePiece tokenizer needs the sentencepiece package: "
            "install tuneyard[train]."
        ) from None
    if model_file.stat().st_size > MAX_SENTENCEPIECE_BYTES:
        raise Invalid(f"{model_file} is over {MAX_SENTENCEPIECE_BYTES >> 20} MiB: not a tokenizer.")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_file.read_bytes())
    except (RuntimeError, OSError) as exc:
        raise Invalid(f"{model_file} is not a SentencePiece model ({exc}).") from None
    size = processor.vocab_size()
    if size > rows:
        raise Invalid(
            f"The tokenizer has {size} tokens, but the embedding has only {rows} rows: "
            "the tokenizer does not belong to these weights."
        )
    texts = [f"[PAD{index}]" for index in range(rows)]
    scores = [-10000.0] * rows
    types = [int(gguf.TokenType.UNUSED)] * rows
    for index in range(size):
        kind = gguf.TokenType.NORMAL
        if processor.IsUnknown(index):
            kind = gguf.TokenType.UNKNOWN
        elif processor.IsControl(index):
            kind = gguf.TokenType.CONTROL
        elif processor.IsUnused(index):
            kind = gguf.TokenType.UNUSED
        elif processor.IsByte(index):
            kind = gguf.TokenType.BYTE
        texts[index] = processor.IdToPiece(index)
        scores[index] = processor.GetScore(index)
        types[index] = int(kind)
    # Tokens transformers added on top of the SentencePiece model (or renamed in it).
    for added in tokenizer.get("added_tokens") or []:
        index = int(added["id"])
        if not 0 <= index < rows:
            raise Invalid(
                f"The tokenizer has token id {index}, but the embedding has only {rows} rows: "
                "the tokenizer does not belong to these weights."
            )
        texts[index] = str(added["content"])
        scores[index] = -1000.0
        special = added.get("special") or types[index] == gguf.TokenType.CONTROL
        types[index] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    return texts, scores, types


def _prepends_space(tokenizer: dict[str, Any], arch: str) -> bool:
    """Whether the tokenizer puts a "▁" before the text, as llama.cpp's add_space_prefix does."""
    if not tokenizer:
        return arch not in ARCHS_WITH_NORM_OFFSET  # Gemma's tokenizers never do
    steps: list[dict[str, Any]] = []
    for part in (tokenizer.get("normalizer"), tokenizer.get("pre_tokenizer")):
        if part:
            steps += part.get("normalizers") or part.get("pretokenizers") or [part]
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") != "never":
            return True
    return False


def _write_sentencepiece_tokenizer(
    writer, model_dir: Path, tokenizer: dict[str, Any], arch: str, rows: int
) -> list[str]:
    import gguf

    tokens, scores, types = _sentencepiece_vocab(model_dir / "tokenizer.model", tokenizer, rows)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(_prepends_space(tokenizer, arch))
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=rows)
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)
    return tokens


def _model_name(name: str, tokens: list[str]) -> str:
    """The folder's name as general.name, without a Phi-3 mark llama.cpp would trip over."""
    if PHI3_NAME.search(name) and not PHI3_NAME_TOKENS.issubset(tokens):
        return PHI3_NAME.sub("phi", name)
    return name


def _write_tokenizer(writer, model_dir: Path, arch: str, rows: int) -> list[str]:
    """Write the tokenizer's metadata; returns its token list."""
    import gguf

    has_model = (model_dir / "tokenizer.model").is_file()
    if has_model and not (model_dir / "tokenizer.json").is_file():
        return _write_sentencepiece_tokenizer(writer, model_dir, {}, arch, rows)
    tokenizer = read_json(
        model_dir / "tokenizer.json",
        "GGUF export reads the tokenizer from tokenizer.json (and tokenizer.model for "
        "SentencePiece tokenizers); save the tokenizer with transformers into the model folder.",
    )
    model = tokenizer.get("model") or {}
    decoder = tokenizer.get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel" and not model.get("byte_fallback")
    if model.get("type") != "BPE" or not byte_level:
        if has_model:
            return _write_sentencepiece_tokenizer(writer, model_dir, tokenizer, arch, rows)
        kind = "SentencePiece-style" if model.get("byte_fallback") else model.get("type")
        raise Invalid(
            f"The tokenizer is a {kind} tokenizer without its tokenizer.model; GGUF export "
            "writes byte-level BPE tokenizers (GPT-2 style, as in Llama 3, Qwen2/3 and SmolLM2) "
            "and SentencePiece tokenizers from tokenizer.model (Llama 2, Mistral, Gemma). Copy "
            "the base model's tokenizer.model into the folder."
        )
    tokens, types = _byte_level_vocab(tokenizer, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer.get("pre_tokenizer"), arch))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # SpecialVocab reads merges, special token ids, add_bos/add_eos and the chat template
    # from tokenizer.json, tokenizer_config.json, chat_template.jinja and config.json.
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=rows)
    if not special.merges:
        raise Invalid(f"{model_dir}/tokenizer.json has no BPE merges: it is damaged.")
    # Unless the tokenizer says otherwise, transformers adds no BOS/EOS; say so explicitly,
    # or llama.cpp applies its own per-tokenizer default.
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)
    return tokens


# -- export -----------------------------------------------------------------------------------


def _check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise Invalid(f"Unknown GGUF type '{outtype}'; export as one of: {', '.join(OUTTYPES)}.")


def export_gguf(
    model_dir: Path, out_file: Path, outtype: str = "f16", progress: Progress | None = None
) -> None:
    """Write the HF model folder `model_dir` as one GGUF file that llama.cpp loads."""
    import gguf
    import numpy as np

    report = progress or (lambda _fraction, _message: None)
    _check_outtype(outtype)
    hp = read_hyperparameters(model_dir)
    planned = plan_tensors(model_dir, hp, outtype)
    rows = next(t.info.shape[0] for t in planned if t.gguf_name == "token_embd.weight")
    rope_factors = _llama3_rope_factors(hp) if hp.rope.get("rope_type") == "llama3" else None
    report(0.0, f"Writing {out_file.name}: metadata and tokenizer")
    with atomic_path(out_file) as staging:
        writer = gguf.GGUFWriter(staging, hp.arch)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[outtype]])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            _write_hyperparameters(writer, hp, rows)
            tokens = _write_tokenizer(writer, model_dir, hp.arch, rows)
            writer.add_name(_model_name(model_dir.name, tokens))
            for tensor in planned:
                writer.add_tensor_info(
                    tensor.gguf_name,
                    tensor.info.shape,
                    np.dtype(np.int16),  # any non-byte dtype: raw_dtype sets the type
                    tensor.nbytes,
                    raw_dtype=gguf.GGMLQuantizationType[tensor.ggml_type],
                )
            if rope_factors is not None:
                writer.add_tensor_info(
                    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                    (len(rope_factors),),
                    np.dtype(np.float32),
                    4 * len(rope_factors),
                )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            _write_tensor_data(writer, planned, report)
            if rope_factors is not None:
                writer.write_tensor_data(np.array(rope_factors, dtype=np.float32))
        finally:
            writer.close()
    report(1.0, f"Wrote {out_file.name}")


def _write_tensor_data(writer, planned: list[PlannedTensor], report: Progress) -> None:
    total = max(sum(t.nbytes for t in planned), 1)
    done = 0
    handles: dict[Path, Any] = {}
    try:
        for tensor in planned:
            if tensor.source not in handles:
                handles[tensor.source] = tensor.source.open("rb")
            data = read_tensor(handles[tensor.source], tensor.info)
            if tensor.permute_heads:
                data = rotary_interleaved(data, tensor.permute_heads)
            if tensor.offset:
                data = data.float() + tensor.offset
            writer.write_tensor_data(_as_ggml_array(data, tensor.ggml_type, tensor.gguf_name))
            del data
            done += tensor.nbytes
            report(done / total, f"Writing {tensor.gguf_name}")
    finally:
        for handle in handles.values():
            handle.close()


# -- LoRA adapters ----------------------------------------------------------------------------

# Adapter settings a GGUF LoRA (W + scale * B @ A per linear weight) cannot express.
UNEXPRESSIBLE_SETTINGS = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "modules_to_save": "whole trained modules (modules_to_save)",
    "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
    "lora_bias": "LoRA biases (lora_bias)",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "fan_in_fan_out": "fan_in_fan_out weights",
}


def lora_exportable(adapter_dir: Path) -> str | None:
    """None if the adapter can be written as a GGUF LoRA; else why (the caller merges first)."""
    config = read_json(adapter_dir / ADAPTER_CONFIG, "it is not a PEFT adapter folder.")
    kind = config.get("peft_type")
    if kind != "LORA":
        return f"it is a {kind} adapter, and llama.cpp takes LoRA adapters only"
    used = [label for key, label in UNEXPRESSIBLE_SETTINGS.items() if config.get(key)]
    if config.get("bias", "none") != "none":
        used.append(f"trained biases (bias={config['bias']})")
    if used:
        return f"it uses {', '.join(used)}, which a GGUF LoRA cannot hold"
    tensors, _ = read_header(adapter_dir / ADAPTER_WEIGHTS)
    if any(".lora_embedding_" in key for key in tensors):
        return "it has LoRA on the embeddings, which a GGUF LoRA cannot hold"
    copies = [key for key in tensors if key.endswith(".base_layer.weight")]
    if copies:
        module = copies[0].removeprefix("base_model.model.").removesuffix(".base_layer.weight")
        return (
            f"it carries a full copy of {module} (PEFT saves one when LoRA targets the "
            "embeddings or lm_head), which a GGUF LoRA cannot hold"
        )
    others = [key for key in tensors if not key.endswith((".lora_A.weight", ".lora_B.weight"))]
    if others:
        return f"it holds {others[0]}, which is not a LoRA A or B weight"
    return None


def _gguf_lora_alpha(config: dict[str, Any]) -> float:
    """The alpha llama.cpp needs to scale the adapter's usual modules as PEFT does.

    llama.cpp scales each pair by alpha / (the pair's rank); PEFT by lora_alpha / r, or by
    lora_alpha / sqrt(r) with rsLoRA.
    """
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return scale * rank


def _lora_pairs(adapter, base_dir: Path, hp: Hyperparameters, gguf_alpha: float) -> list:
    """(GGUF weight name, LoRA pair, factor for B) of each pair, checked against the base.

    A pair whose PEFT scale differs from llama.cpp's alpha / rank (rank_pattern,
    alpha_pattern) gets the difference folded into its B.
    """
    base_shapes = {
        name: info.shape
        for path in base_weight_files(base_dir)
        for name, info in read_header(path)[0].items()
    }
    name_map = _name_map(hp)
    pairs = []
    for weight_name, pair in adapter.pairs.items():
        if weight_name == "lm_head.weight" and hp.tied_embeddings:
            raise Invalid(
                "The adapter has LoRA on lm_head, which the base ties to its embeddings; a "
                "GGUF LoRA cannot hold it. Merge the adapter first."
            )
        expected = base_shapes.get(weight_name)
        update = (pair.b.shape[0], pair.a.shape[1])
        if expected != update:
            raise Invalid(
                f"The adapter's LoRA on {pair.module} makes a {list(update)} update, but the "
                f"base has {list(expected) if expected else 'no such weight'}: the adapter was "
                "trained on another base model."
            )
        gguf_name = _gguf_name(name_map, weight_name)
        if gguf_name is None:
            raise Invalid(f"The adapter targets {pair.module}, which has no GGUF tensor.")
        pairs.append((gguf_name, pair, pair.scale / (gguf_alpha / pair.a.shape[0])))
    return pairs


def export_lora_gguf(
    adapter_dir: Path, base_dir: Path, out_file: Path, progress: Progress | None = None
) -> None:
    """Write a PEFT LoRA adapter trained on `base_dir` as a llama.cpp GGUF LoRA adapter."""
    import gguf
    import numpy as np

    report = progress or (lambda _fraction, _message: None)
    reason = lora_exportable(adapter_dir)
    if reason:
        raise Invalid(f"The adapter cannot be written as a GGUF LoRA: {reason}. Merge it first.")
    hp = read_hyperparameters(base_dir)
    adapter = read_adapter(adapter_dir)
    gguf_alpha = _gguf_lora_alpha(adapter.config)
    pairs = _lora_pairs(adapter, base_dir, hp, gguf_alpha)
    report(0.0, f"Writing {out_file.name}")
    with atomic_path(out_file) as staging:
        writer = gguf.GGUFWriter(staging, hp.arch)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha)
            writer.add_name(adapter_dir.name)
            for gguf_name, pair, _ in pairs:
                for suffix, info in ((".lora_a", pair.a), (".lora_b", pair.b)):
                    writer.add_tensor_info(
                        gguf_name + suffix, info.shape, np.dtype(np.float32), 4 * info.numel
                    )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            with adapter.weights.open("rb") as handle:
                for index, (gguf_name, pair, correction) in enumerate(pairs):
                    a = read_tensor(handle, pair.a).float()
                    b = read_tensor(handle, pair.b).float()
                    if not math.isclose(correction, 1.0, rel_tol=1e-6):
                        b = b * correction
                    heads = _permute_heads(hp, gguf_name)
                    if heads:
                        b = rotary_interleaved(b, heads)
                    writer.write_tensor_data(a.contiguous().numpy())
                    writer.write_tensor_data(b.contiguous().numpy())
                    report((index + 1) / len(pairs), f"Writing {gguf_name} LoRA")
        finally:
            writer.close()
    report(1.0, f"Wrote {out_file.name}")
