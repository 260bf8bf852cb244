"""Merging a LoRA adapter into its base model, one tensor at a time, into a standalone folder.

For each weight a LoRA pair targets, W' = W + scale * (B @ A), computed in float32 and then
cast to the saved dtype, exactly as PEFT's merge_and_unload does; every other weight is only
cast. Base weights are read one tensor at a time and written straight into their output
file, so the memory a merge needs is about the largest tensor and the adapter, not the
model. Everything a merge would refuse is found from the files' headers alone (no torch),
so a request is refused before any job exists.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneyard.complete.safetensors_io import (
    FLOAT_DTYPES,
    PlannedTensor,
    SafetensorsWriter,
    TensorInfo,
    read_header,
    read_tensor,
    torch_dtype,
)
from tuneyard.errors import Invalid
from tuneyard.storage import atomic_file

DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
CONFIG_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Output files stay near this size (a base's own larger files are split; smaller kept).
MAX_SHARD_BYTES = 2 * 10**9
LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
EMBEDDING_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_embedding_[AB]")
BASE_LAYER_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.base_layer\.weight")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Adapter settings whose merge is more than W + scale * B @ A (DoRA aside, merged by PEFT).
UNSUPPORTED_SETTINGS = (
    "trainable_token_indices",
    "lora_bias",
    "layer_replication",
    "target_parameters",
    "alora_invocation_tokens",
    "arrow_config",
    "use_bdlora",
    "velora_config",
    "monteclora_config",
    "kasa_config",
    "mica",
    "use_qalora",
)


@dataclass(frozen=True)
class LoraPair:
    """The LoRA factors of one base weight and their scale."""

    module: str
    a: TensorInfo
    b: TensorInfo
    scale: float


@dataclass
class LoraAdapter:
    folder: Path
    config: dict[str, Any]
    # "streaming" (this module's merge) or "peft" (DoRA: merged by PEFT, whole model loaded).
    method: str
    pairs: dict[str, LoraPair] = field(default_factory=dict)  # by base weight name

    @property
    def weights(self) -> Path:
        return self.folder / ADAPTER_WEIGHTS


@dataclass(frozen=True)
class OutputFile:
    name: str
    source: Path
    tensors: list[PlannedTensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass
class MergePlan:
    adapter: LoraAdapter
    base: dict[Path, dict[str, TensorInfo]]  # each base file's tensors, in file order
    outputs: list[OutputFile]
    dtype: str

    @property
    def total_bytes(self) -> int:
        return sum(o.nbytes for o in self.outputs)

    @property
    def parameters(self) -> int:
        return sum(info.numel for tensors in self.base.values() for info in tensors.values())


def _pattern_value(patterns: dict[str, Any], module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Invalid(f"{path.parent} has no {path.name}: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"{path} cannot be read as JSON ({exc}).") from None


def read_adapter(folder: Path) -> LoraAdapter:
    """The adapter's config and LoRA pairs; Invalid for anything a merge cannot take."""
    config = read_json(folder / ADAPTER_CONFIG, "it is not a PEFT adapter folder.")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise Invalid(f"The adapter is a {kind} adapter; save merges LoRA adapters only.")
    if config.get("modules_to_save"):
        raise Invalid(
            "The adapter also trained whole modules (modules_to_save: "
            f"{', '.join(config['modules_to_save'])}), which save does not merge. Train with "
            "LoRA on linear layers only."
        )
    used = [name for name in UNSUPPORTED_SETTINGS if config.get(name)]
    if used:
        raise Invalid(
            f"The adapter uses {', '.join(used)}, which save does not merge: it merges plain "
            "LoRA adapters (and DoRA, through PEFT)."
        )
    tensors, _ = read_header(folder / ADAPTER_WEIGHTS)
    if config.get("use_dora"):
        return LoraAdapter(folder, config, "peft")
    for key in tensors:
        if match := EMBEDDING_KEY.fullmatch(key):
            raise Invalid(
                f"The adapter has LoRA on the embedding layer {match['module']}, which save "
                "does not merge. Train with target_modules that leave out embeddings."
            )
    for key in tensors:
        if match := BASE_LAYER_KEY.fullmatch(key):
            raise Invalid(
                f"The adapter carries a full copy of {match['module']} (PEFT saves one when "
                "LoRA targets the embeddings or lm_head), which save does not merge. Train "
                "with target_modules that leave out the embeddings and lm_head."
            )
    factors: dict[str, dict[str, TensorInfo]] = {}
    for key, info in tensors.items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise Invalid(
                f"The adapter holds tensor '{key}', which is not a LoRA A or B weight; save "
                "merges plain LoRA adapters only."
            )
        factors.setdefault(match["module"], {})[match["part"]] = info
    pairs = {}
    for module, parts in factors.items():
        if set(parts) != {"A", "B"}:
            missing = "B" if "A" in parts else "A"
            raise Invalid(f"The adapter has no lora_{missing} weight for {module}: it is damaged.")
        a, b = parts["A"], parts["B"]
        rank = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r"))
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha"))
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise Invalid(
                f"The adapter's LoRA on {module} is not on a linear layer; save merges LoRA on "
                "linear layers only."
            )
        if not rank or a.shape[0] != rank or b.shape[1] != rank:
            raise Invalid(
                f"The adapter's LoRA weights for {module} have rank {a.shape[0]}, but its "
                f"config says {rank}: the adapter is damaged."
            )
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        pairs[f"{module}.weight"] = LoraPair(module, a, b, scale)
    if not pairs:
        raise Invalid("The adapter holds no LoRA weights; there is nothing to merge.")
    return LoraAdapter(folder, config, "streaming", pairs)


def base_weight_files(base_dir: Path) -> list[Path]:
    """The base's safetensors files: one model.safetensors, or those its index names."""
    index = base_dir / INDEX_FILE
    if index.exists():
        weight_map = read_json(index, "").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise Invalid(f"{index} has no weight_map.")
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not (base_dir / name).is_file()]
        if missing:
            raise Invalid(f"{index} names {', '.join(missing)}, which {base_dir} lacks.")
        return [base_dir / name for name in files]
    if (base_dir / SINGLE_FILE).is_file():
        return [base_dir / SINGLE_FILE]
    raise Invalid(
        f"{base_dir} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}); save merges "
        "into safetensors weights only."
    )


def read_base_config(base_dir: Path) -> dict[str, Any]:
    config = read_json(base_dir / "config.json", "it is not an HF model folder.")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise Invalid(
            f"The base model's weights are quantized ({method}); save merges into an "
            "unquantized base, and saving never quantizes."
        )
    return config


def plan_merge(
    base_dir: Path, adapter: LoraAdapter, dtype: str, max_shard_bytes: int = MAX_SHARD_BYTES
) -> MergePlan:
    """Check that the adapter fits the base, and lay out the output files."""
    if dtype not in DTYPES:
        raise Invalid(f"Unknown dtype '{dtype}'; save as one of: {', '.join(DTYPES)}.")
    config = read_base_config(base_dir)
    base: dict[Path, dict[str, TensorInfo]] = {}
    owner: dict[str, Path] = {}
    for path in base_weight_files(base_dir):
        tensors, _ = read_header(path)
        for name, info in tensors.items():
            if name in owner:
                raise Invalid(f"Tensor {name} is in both {owner[name].name} and {path.name}.")
            if info.dtype.startswith("F8"):
                raise Invalid(
                    f"The base model holds float8 weights ({name}): it is quantized, and save "
                    "merges into an unquantized base."
                )
            owner[name] = path
        base[path] = dict(sorted(tensors.items(), key=lambda item: item[1].start))
    _check_pairs(adapter, owner, base, config)
    outputs: list[tuple[Path, list[PlannedTensor]]] = []
    for path, tensors in base.items():
        current: list[PlannedTensor] = []
        size = 0
        for info in tensors.values():
            out_dtype = DTYPES[dtype] if info.dtype in FLOAT_DTYPES else info.dtype
            planned = PlannedTensor(info.name, out_dtype, info.shape)
            if current and size + planned.nbytes > max_shard_bytes:
                outputs.append((path, current))
                current, size = [], 0
            current.append(planned)
            size += planned.nbytes
        if current:
            outputs.append((path, current))
    count = len(outputs)
    names = (
        [SINGLE_FILE]
        if count == 1
        else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    )
    files = [
        OutputFile(name, source, tensors)
        for name, (source, tensors) in zip(names, outputs, strict=True)
    ]
    return MergePlan(adapter, base, files, dtype)


def _check_pairs(adapter: LoraAdapter, owner: dict, base: dict, config: dict) -> None:
    if adapter.method != "streaming":
        return
    unmatched = sorted(name for name in adapter.pairs if name not in owner)
    if "lm_head.weight" in unmatched and config.get("tie_word_embeddings"):
        raise Invalid(
            "The adapter has LoRA on lm_head, which this base model ties to its input "
            "embeddings (tie_word_embeddings), so a merge would change both; save does not "
            "merge it. Train with target_modules that leave out lm_head."
        )
    if unmatched:
        shown = ", ".join(unmatched[:3])
        if len(unmatched) > 3:
            shown += f" and {len(unmatched) - 3} more"
        raise Invalid(
            f"The adapter has LoRA weights for {shown}, which the base model does not have: "
            "it was trained on another base model."
        )
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out"))
    for name, pair in adapter.pairs.items():
        weight = base[owner[name]][name]
        update = (pair.b.shape[0], pair.a.shape[1])
        if fan_in_fan_out:
            update = update[::-1]
        if weight.shape != update:
            raise Invalid(
                f"The adapter's LoRA on {pair.module} makes a {list(update)} update, but the "
                f"base weight is {list(weight.shape)}: the adapter was trained on another "
                "base model."
            )


def merged_weight(weight, a, b, scale: float, fan_in_fan_out: bool, dtype):
    """W + scale * (B @ A) in float32, as PEFT computes it, then cast to `dtype`.

    In place on the one float32 buffer the product makes: a merge moves every linear weight
    through memory, and each temporary would be another pass over it.
    """
    delta = b.float() @ a.float()
    if fan_in_fan_out:
        delta = delta.T
    delta.mul_(scale)
    delta.add_(weight)
    return delta.to(dtype)


def _check_finite(tensor, name: str, dtype: str) -> None:
    import torch

    if not bool(torch.isfinite(tensor).all()):
        hint = (
            "the values do not fit float16; save as bf16 or fp32"
            if dtype == "fp16"
            else "the adapter is broken (it holds inf or NaN)"
        )
        raise Invalid(f"The merged weight {name} is not finite: {hint}.")


def _load_factors(adapter: LoraAdapter) -> dict:
    """Every LoRA pair in memory (the adapter is small), checked finite.

    With finite factors and base, a float32 or bfloat16 merge is finite too (their range is
    the same), so only a float16 save needs its output checked, tensor by tensor.
    """
    import torch

    factors = {}
    with adapter.weights.open("rb") as handle:
        for name, pair in adapter.pairs.items():
            a, b = read_tensor(handle, pair.a), read_tensor(handle, pair.b)
            if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
                raise Invalid(
                    f"The adapter's LoRA weights for {pair.module} hold inf or NaN: the "
                    "adapter is broken; train it again."
                )
            factors[name] = (a, b)
    return factors


Progress = Callable[[float, str], None]


def merge_adapter_into_base(plan: MergePlan, out_dir: Path, progress: Progress) -> None:
    """Write the merged weights of `plan` into `out_dir` (safetensors, and an index if sharded)."""
    adapter = plan.adapter
    factors = _load_factors(adapter)
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out"))
    target = torch_dtype(DTYPES[plan.dtype])
    done, total = 0, max(plan.total_bytes, 1)
    for output in plan.outputs:
        infos = plan.base[output.source]
        with (
            output.source.open("rb") as handle,
            SafetensorsWriter(out_dir / output.name, output.tensors, {"format": "pt"}) as writer,
        ):
            for planned in writer.order:
                weight = read_tensor(handle, infos[planned.name])
                if planned.name in factors:
                    a, b = factors[planned.name]
                    pair = adapter.pairs[planned.name]
                    weight = merged_weight(weight, a, b, pair.scale, fan_in_fan_out, target)
                elif weight.is_floating_point() and weight.dtype != target:
                    weight = weight.to(target)
                if plan.dtype == "fp16" and weight.is_floating_point():
                    _check_finite(weight, planned.name, plan.dtype)
                writer.write(planned.name, weight)
                del weight
                done += planned.nbytes
                progress(done / total, f"Merging into {output.name}")
    if len(plan.outputs) > 1:
        _write_index(out_dir, plan)


def _write_index(out_dir: Path, plan: MergePlan) -> None:
    weight_map = {t.name: o.name for o in plan.outputs for t in o.tensors}
    index = {
        "metadata": {"total_parameters": plan.parameters, "total_size": plan.total_bytes},
        "weight_map": dict(sorted(weight_map.items())),
    }
    with atomic_file(out_dir / INDEX_FILE, "w") as handle:
        handle.write(json.dumps(index, indent=2) + "\n")


def merge_with_peft(
    base_dir: Path, adapter: LoraAdapter, out_dir: Path, dtype: str, progress: Progress
) -> None:
    """DoRA rescales each merged weight by its column norms: PEFT merges it, whole model loaded."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    progress(0.05, "Loading the base model and the DoRA adapter (merged with PEFT)")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter.folder).merge_and_unload()
    model = model.to(torch_dtype(DTYPES[dtype]))
    for name, tensor in model.state_dict().items():
        _check_finite(tensor, name, dtype)
    progress(0.6, "Writing the merged weights")
    model.save_pretrained(out_dir, max_shard_size=MAX_SHARD_BYTES)


def write_model_files(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str) -> None:
    """config.json (saved dtype, no quantization), generation config, tokenizer, chat template.

    The tokenizer comes from the adapter folder when it has one (training may have changed
    its special tokens or template), else from the base.
    """
    from tuneyard.training.service import has_chat_template

    config = read_base_config(base_dir)
    config["dtype"] = CONFIG_DTYPES[dtype]
    if "torch_dtype" in config:
        config["torch_dtype"] = CONFIG_DTYPES[dtype]
    with atomic_file(out_dir / "config.json", "w") as handle:
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (base_dir / "generation_config.json").is_file():
        shutil.copyfile(base_dir / "generation_config.json", out_dir / "generation_config.json")
    has_tokenizer = any((adapter_dir / n).is_file() for n in TOKENIZER_FILES[:2])
    source, other = (adapter_dir, base_dir) if has_tokenizer else (base_dir, adapter_dir)
    for name in (*TOKENIZER_FILES, *CHAT_TEMPLATE_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    if not has_chat_template(out_dir):
        for name in CHAT_TEMPLATE_FILES:
            if (other / name).is_file():
                shutil.copyfile(other / name, out_dir / name)
