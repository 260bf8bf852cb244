"""What an HF-format model folder holds: its check on registration, and its model card."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from tuneyard.cards import folder_size
from tuneyard.errors import Invalid
from tuneyard.storage import entry_path

FOLDER_CONTENTS = (
    "an HF-format model folder holds config.json, a tokenizer (tokenizer.json, or "
    "tokenizer.model / vocab files with tokenizer_config.json) and weights (*.safetensors or "
    "pytorch_model*.bin)"
)
VOCAB_FILES = (
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_sequence_length",
    "max_seq_len",
    "seq_length",
    "n_ctx",
)
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
SUMMARY_CHARS = 500
# A safetensors header is a few MB at most even for the largest models; more means a bad file.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def check_model_folder(folder: Path) -> None:
    """Raise Invalid naming every missing piece, so one fix makes the folder usable."""
    if not folder.exists():
        raise Invalid(f"{folder} does not exist: give the path of a model folder on this machine.")
    if not folder.is_dir():
        hint = " To import a GGUF file, give it as gguf_path." if folder.suffix == ".gguf" else ""
        raise Invalid(f"{folder} is not a folder: {FOLDER_CONTENTS}.{hint}")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not (folder / "tokenizer.json").is_file():
        has_vocab = any((folder / name).is_file() for name in VOCAB_FILES)
        if not has_vocab:
            missing.append("tokenizer")
        elif not (folder / "tokenizer_config.json").is_file():
            missing.append("tokenizer_config.json (beside its vocab files)")
    weights = weight_files(folder)
    if not weights:
        missing.append("weights")
    missing.extend(f"{path.name} (listed in its index)" for path in weights if not path.is_file())
    if missing:
        raise Invalid(f"{folder} has no {' and no '.join(missing)}: {FOLDER_CONTENTS}.")
    _read_json(folder / "config.json")


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(_read_json(index).get("weight_map", {}).values()))
        try:
            return [entry_path(folder, str(name)) for name in names]
        except ValueError:
            raise Invalid(
                f"{index} lists weight files outside its folder; each shard must be a file "
                "name in the folder."
            ) from None
    found = sorted(folder.glob("*.safetensors"))
    return found or sorted(folder.glob("pytorch_model*.bin"))


def read_chat_template(folder: Path) -> tuple[str | None, str | None]:
    """The tokenizer's chat template and the file it came from, wherever transformers put it."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), jinja.name
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        template = _read_json(as_json).get("chat_template")
        if template:
            return _default_template(template), as_json.name
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        template = _read_json(tokenizer_config).get("chat_template")
        if template:
            return _default_template(template), tokenizer_config.name
    return None, None


def read_model_card(folder: Path) -> dict[str, Any]:
    """Facts a user compares models by, read from headers and small files only."""
    config = _read_json(folder / "config.json")
    text_config = config.get("text_config") or {}
    parameters, dtype, weights_format = _count_parameters(folder)
    license_name, summary = _read_readme(folder / "README.md")
    chat_template, chat_template_source = read_chat_template(folder)
    architectures = config.get("architectures") or []
    return {
        "architecture": architectures[0] if architectures else config.get("model_type"),
        "model_family": config.get("model_type"),
        "parameter_count": parameters,
        "dtype": dtype or config.get("dtype") or config.get("torch_dtype"),
        "weights_format": weights_format,
        "context_length": _first(config, text_config, CONTEXT_KEYS),
        "vocab_size": _first(config, text_config, ("vocab_size",)),
        "hidden_size": _first(config, text_config, HIDDEN_KEYS),
        "num_layers": _first(config, text_config, LAYER_KEYS),
        "license": license_name,
        "summary": summary,
        "chat_template": chat_template is not None,
        "chat_template_source": chat_template_source,
        "special_tokens": _special_tokens(folder),
        "disk_size_bytes": folder_size(folder),
    }


def format_count(count: int | None) -> str:
    if count is None:
        return "unknown"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            return f"{count / size:.1f}{suffix}"
    return str(count)


def format_bytes(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table at the start of a safetensors file.

    Parsed by hand (8-byte length, then JSON) so that reading a card needs neither torch nor
    numpy, and never touches the weights.
    """
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header length {length} is implausible")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise Invalid(f"{path} is not a readable safetensors file ({exc}).") from None
    header.pop("__metadata__", None)
    return header


def _count_parameters(folder: Path) -> tuple[int | None, str | None, str]:
    files = weight_files(folder)
    if not files or files[0].suffix != ".safetensors":
        # Counting pickled weights means unpickling them; the card leaves it unknown.
        return None, None, "pytorch"
    total = 0
    by_dtype: Counter[str] = Counter()
    for path in files:
        for entry in read_safetensors_header(path).values():
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
            by_dtype[entry["dtype"]] += count
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else None
    return total, SAFETENSORS_DTYPES.get(dtype, dtype) if dtype else None, "safetensors"


def _read_readme(path: Path) -> tuple[str | None, str | None]:
    """License from the YAML front matter, summary from the first paragraph of prose."""
    if not path.is_file():
        return None, None
    text = path.read_text(encoding="utf-8", errors="replace")
    meta: dict[str, Any] = {}
    if text.startswith("---"):
        head, sep, body = text[3:].partition("\n---")
        if sep:
            try:
                loaded = yaml.safe_load(head)
            except yaml.YAMLError:
                loaded = None
            meta = loaded if isinstance(loaded, dict) else {}
            text = body.split("\n", 1)[1] if "\n" in body else ""
    license_name = meta.get("license")
    if license_name == "other" and meta.get("license_name"):
        license_name = meta["license_name"]
    if isinstance(license_name, list):
        license_name = ", ".join(str(item) for item in license_name)
    return (str(license_name) if license_name else None), _first_paragraph(text)


def _first_paragraph(markdown: str) -> str | None:
    paragraph: list[str] = []
    in_code = False
    for raw in markdown.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            in_code = not in_code
            continue
        prose = line and not line.startswith(("#", "<", "![", "[![", "|", ">", "---"))
        if in_code or not prose:
            if paragraph:
                break
            continue
        paragraph.append(line)
    if not paragraph:
        return None
    summary = " ".join(paragraph)
    if len(summary) > SUMMARY_CHARS:
        summary = summary[: SUMMARY_CHARS - 1].rstrip() + "…"
    return summary


def _special_tokens(folder: Path) -> dict[str, str | None]:
    found: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            data = _read_json(path)
            found.update(
                {key: data[key] for key in ("bos_token", "eos_token", "pad_token") if key in data}
            )
    return {role: _token_text(found.get(f"{role}_token")) for role in ("bos", "eos", "pad")}


def _token_text(token: Any) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _default_template(template: Any) -> str | None:
    """Tokenizers may carry several named templates; the one named "default" is for chat."""
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template}
        return named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _first(config: dict, text_config: dict, keys: tuple[str, ...]) -> Any:
    for source in (config, text_config):
        for key in keys:
            if source.get(key) is not None:
                return source[key]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Invalid(f"{path} is not valid JSON ({exc}); fix or replace the file.") from None
    if not isinstance(data, dict):
        raise Invalid(f"{path} should hold a JSON object; fix or replace the file.")
    return data
