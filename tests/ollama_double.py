"""An in-process Ollama for tests: a real HTTP server that speaks Ollama's API, release by
release.

Ollama cannot run here, so the deploy path is tested against this double over real HTTP on
127.0.0.1. It checks what Ollama checks, in Ollama's words, as the release it plays does
(`version`; FAMILIES holds one release of each family that behaves differently):
- errors: before 0.12.6 every create error is a streamed `{"error", "status"}` line under
  HTTP 200; since, an error before any output is the HTTP status with `{"error"}`, and a
  later one a streamed `{"error"}` line without a status;
- safetensors: converted (not MistralForCausalLM since 0.6.5) until 0.34.1, which imports
  them unconverted (MLX, int4/int8/nvfp4/mxfp4/mxfp8) and takes no safetensors adapters;
- GGUF: `files` must hold GGUF files only; since 0.30 an imported GGUF is rewritten, so the
  stored model digest differs from the uploaded one; since 0.34.1 `quantize` with a GGUF (or
  `from`) is refused before any output;
- adapters: safetensors ones on llama and gemma2 bases with an integer lora_alpha; GGUF ones
  exactly one, which releases before 0.24 fail to load on new-engine architectures (the
  create succeeds, the chat fails);
- `quantize`: F32, F16, BF16, Q8_0, Q4_K_S, Q4_K_M, only from an F16/BF16/F32 source;
- blobs: a POST of a digest the server has answers 200 without reading the body; an upload
  whose bytes do not match its digest is refused and kept under its real digest.
It runs no model: a chat answers "[<model>] <last user message>" (with " (adapter)" for a
model with adapters), enough for a caller to see which model answered.

    with OllamaDouble(tmp_path, version="0.31.0") as ollama:
        client = OllamaClient(ollama.url)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.http_double import BackgroundServer

# One release of each family whose create behaves differently; VERSION is the default.
FAMILIES = ("0.6.8", "0.12.6", "0.31.0", "0.34.1")
VERSION = "0.12.6"
HTTP_ERRORS_SINCE = (0, 12, 6)
NO_MISTRAL_SINCE = (0, 6, 5)
ADAPTER_LOAD_FIXED = (0, 24, 0)
GGUF_REWRITTEN_SINCE = (0, 30, 0)
# From 0.30 a GGUF chat template offering tools or thinking is rendered (through llama.cpp's
# Jinja) in place of the Go TEMPLATE.
GGUF_TEMPLATE_SINCE = (0, 30, 0)
NO_CONVERSION_SINCE = (0, 34, 1)
NEW_ENGINE_FAMILIES = ("qwen3", "gemma3", "mistral3", "llama4")
MLX_QUANTIZE_TYPES = ("int4", "int8", "nvfp4", "mxfp4", "mxfp8")
GGUF_QUANTIZE_REFUSED = (
    "create-time quantization is only supported for safetensors imports; quantize GGUF "
    "models with llama.cpp tools before importing"
)
DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,349}(:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?")
# What Ollama's converter takes from safetensors, and the GGUF architecture (the model's
# family) each becomes: Mistral and Mixtral are written as llama.
CONVERTED_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Phi3ForCausalLM": "phi3",
    "Qwen2ForCausalLM": "qwen2",
    "CohereForCausalLM": "command-r",
    "BertModel": "bert",
}
# Families of the base models whose safetensors LoRA adapters Ollama converts.
ADAPTER_FAMILIES = ("llama", "gemma2")
# `quantize` values Ollama accepts (after upper-casing) and the file type each makes.
QUANTIZE_TYPES = {
    "F32": "F32",
    "F16": "F16",
    "BF16": "BF16",
    "Q8_0": "Q8_0",
    "Q4_K_S": "Q4_K_S",
    "Q4_K_M": "Q4_K_M",
    "Q4_K": "Q4_K_M",
}
LISTED_QUANTIZE_TYPES = "F32, F16, Q4_K_S, Q4_K_M, Q8_0"
FLOAT_FILE_TYPES = ("F32", "F16", "BF16")
# llama.cpp's general.file_type numbers, by name.
GGUF_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}
# Average bits per weight, to scale a model's size as quantizing would.
BITS_PER_WEIGHT = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_1": 5.0,
    "Q4_K_M": 4.85,
    "Q4_K_S": 4.58,
    "Q4_0": 4.5,
}
# A marker of a chat template, and the name Ollama gives the template it detects from it.
TEMPLATE_MARKERS = (
    ("<|im_start|>", "chatml"),
    ("<|start_header_id|>", "llama3-instruct"),
    ("<start_of_turn>", "gemma-instruct"),
    ("[INST]", "mistral-instruct"),
)
DEFAULT_TEMPLATE = "{{ .Prompt }}"


class CreateFailed(Exception):
    """Ollama's words for a failed create, and the HTTP status a non-streamed create gets."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.message = message
        self.status = status


def release(version: str) -> tuple[int, int, int]:
    major, minor, patch = (version.split("-")[0].split(".") + ["0"])[:3]
    return int(major), int(minor), int(patch)


@dataclasses.dataclass(frozen=True)
class Weights:
    """What a create builds on: converted safetensors, a GGUF, or an existing model."""

    family: str
    model_type: str
    file_type: str
    size: int
    digest: str
    format: str = "gguf"
    chat_template: str | None = None
    template: str | None = None
    template_name: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    adapters: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ModelRecord:
    """A model the double created: what /api/tags, /api/show and the chats answer from."""

    name: str
    family: str
    model_type: str
    quantization: str
    size: int
    digest: str
    files: dict[str, str]
    adapters: dict[str, str]
    parent: str | None
    template: str | None
    template_name: str | None
    system: str | None
    parameters: dict[str, Any]
    modified_at: str
    # The model layer's blob as stored: an uploaded GGUF's digest, or its rewrite's (0.30+).
    model_digest: str = ""
    # The chat template the weights carry, and whether prompts are rendered with it (0.30+,
    # tools or thinking) rather than with `template`.
    chat_template: str | None = None
    renders_chat_template: bool = False
    format: str = "gguf"


class OllamaDouble:
    """A real HTTP server on 127.0.0.1 and a free port, in a background thread.

    Test helpers: `models` (full name "x:latest" -> ModelRecord), `blobs_dir`, `requests`
    ((method, path) of every request, in order), `blob_uploads` (one dict per POSTed blob:
    digest, bytes, status, transfer ("content-length" or "chunked"), largest_read) and
    `loaded` (models a chat has loaded, as /api/ps lists them).
    """

    def __init__(self, root: Path, version: str = VERSION):
        self.blobs_dir = root / "ollama-blobs"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.release = release(version)
        self.models: dict[str, ModelRecord] = {}
        self.requests: list[tuple[str, str]] = []
        self.blob_uploads: list[dict[str, Any]] = []
        self.loaded: set[str] = set()
        self.port = 0
        self._background: BackgroundServer | None = None
        self._app = Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/api/version", self._version, methods=["GET"]),
                Route("/api/blobs/{digest}", self._blob, methods=["HEAD", "POST"]),
                Route("/api/create", self._create, methods=["POST"]),
                Route("/api/tags", self._tags, methods=["GET"]),
                Route("/api/show", self._show, methods=["POST"]),
                Route("/api/delete", self._delete, methods=["DELETE"]),
                Route("/api/ps", self._ps, methods=["GET"]),
                Route("/v1/models", self._openai_models, methods=["GET"]),
                Route("/v1/chat/completions", self._openai_chat, methods=["POST"]),
            ]
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OllamaDouble:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._background = BackgroundServer(self._asgi, "Ollama double", interface="asgi3")
        self.port = self._background.start()

    def stop(self) -> None:
        if self._background is not None:
            self._background.stop()

    def blob_path(self, digest: str) -> Path:
        """Where a blob lies, named as Ollama names its blob files (sha256-<hex>)."""
        return self.blobs_dir / digest.replace(":", "-", 1)

    def find(self, name: str) -> ModelRecord | None:
        return self.models.get(full_name(name))

    async def _asgi(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self._app(scope, receive, send)

    # -- server and blobs ------------------------------------------------------------------

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": self.version})

    async def _blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        if not DIGEST.fullmatch(digest):
            return JSONResponse({"error": "invalid digest format"}, 400)
        path = self.blob_path(digest)
        if request.method == "HEAD":
            if path.exists():
                return Response(status_code=200)
            return JSONResponse({"error": f'blob "{digest}" not found'}, 404)
        return await self._receive_blob(request, digest, path)

    async def _receive_blob(self, request: Request, digest: str, path: Path) -> Response:
        """Stream the body to a temporary file while hashing it; keep it only if it matches."""
        if path.exists():
            # Ollama answers before reading a byte of a blob it has.
            self.blob_uploads.append({"digest": digest, "bytes": 0, "status": 200})
            return Response(status_code=200)
        upload = {
            "digest": digest,
            "bytes": 0,
            "largest_read": 0,
            "transfer": "chunked"
            if "chunked" in request.headers.get("transfer-encoding", "")
            else "content-length",
        }
        self.blob_uploads.append(upload)
        partial = self.blobs_dir / f".partial-{uuid.uuid4().hex}"
        hasher = hashlib.sha256()
        try:
            with partial.open("wb") as handle:
                async for piece in request.stream():
                    handle.write(piece)
                    hasher.update(piece)
                    upload["bytes"] += len(piece)
                    upload["largest_read"] = max(upload["largest_read"], len(piece))
            got = f"sha256:{hasher.hexdigest()}"
            if got != digest:
                # The bytes stay, under the digest they really have.
                partial.replace(self.blob_path(got))
                upload["status"] = 400
                message = f'digest mismatch, expected "{digest}", got "{got}"'
                return JSONResponse({"error": message}, 400)
            partial.replace(path)
            upload["status"] = 201
            return Response(status_code=201)
        except ClientDisconnect:
            upload["status"] = "disconnected"
            return Response(status_code=499)
        finally:
            partial.unlink(missing_ok=True)

    # -- create ----------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return JSONResponse({"error": "missing request body"}, 400)
        name = body.get("model") or body.get("name") or ""
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            return JSONResponse({"error": "invalid model name"}, 400)
        problem = self._missing_blob(body)
        if problem:
            return JSONResponse({"error": problem}, 400)
        refused = self._refused_before_streaming(body)
        if refused:
            return JSONResponse({"error": refused}, 400)
        events = self._create_events(full_name(name), body)
        if body.get("stream", True) is False:
            return _single_answer(events)
        if self.release < HTTP_ERRORS_SINCE:
            return StreamingResponse(_ndjson(events, True), media_type="application/x-ndjson")
        try:
            first = next(events)
        except CreateFailed as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        except StopIteration:
            first = None
        return StreamingResponse(
            _ndjson(_chain(first, events), False), media_type="application/x-ndjson"
        )

    def _refused_before_streaming(self, body: dict) -> str | None:
        """What 0.34.1 refuses from the request alone, before it streams anything."""
        if self.release < NO_CONVERSION_SINCE:
            return None
        quantize = body.get("quantize") or body.get("quantization")
        files = body.get("files") or {}
        try:
            kind = self._kind(files) if files else None
        except CreateFailed:
            kind = None
        if quantize and (kind == "gguf" or (kind is None and body.get("from"))):
            return GGUF_QUANTIZE_REFUSED
        if quantize and str(quantize).lower() not in MLX_QUANTIZE_TYPES:
            return (
                f"unsupported quantize type {quantize!r}: supported types are "
                f"{', '.join(MLX_QUANTIZE_TYPES)}"
            ).replace("'", '"')
        return None

    def _missing_blob(self, body: dict) -> str | None:
        """Ollama refuses a create naming a blob it was never sent before streaming anything."""
        for key in ("files", "adapters"):
            named = body.get(key) or {}
            if not isinstance(named, dict):
                return f"{key} must map file names to blob digests"
            for file_name, digest in named.items():
                if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
                    return f"invalid digest format for {file_name}"
                if not self.blob_path(digest).exists():
                    return f"blob not found for {file_name} (digest {digest})"
        return None

    def _create_events(self, name: str, body: dict) -> Iterator[dict]:
        files = body.get("files") or {}
        adapters = body.get("adapters") or {}
        if body.get("from"):
            weights = yield from self._from_model(body["from"])
        elif files and self._kind(files) == "safetensors" and self.release >= NO_CONVERSION_SINCE:
            weights = yield from self._import_unconverted(files, body)
        elif files:
            weights = yield from self._convert_model(files)
        else:
            raise CreateFailed("neither 'from' or 'files' was specified", 400)
        if adapters:
            adapters = yield from self._convert_adapters(adapters, weights)
        quantize = body.get("quantize") or body.get("quantization")
        if quantize and weights.format == "gguf":
            weights = yield from self._quantize(weights, str(quantize))
        template, template_name = weights.template, weights.template_name
        if body.get("template"):
            template, template_name = body["template"], None
            yield {"status": "using provided template"}
        elif weights.chat_template and not template:
            template_name = _template_name(weights.chat_template)
            if template_name:
                yield {"status": f"using autodetected template {template_name}"}
        system = body.get("system") or weights.system
        parameters = {**weights.parameters, **(body.get("parameters") or {})}
        all_adapters = {**weights.adapters, **adapters}
        layers = [weights.digest, *all_adapters.values()]
        layers += [_digest_of(value) for value in (template, system, parameters) if value]
        for layer in layers:
            yield {"status": f"creating new layer {layer}"}
        yield {"status": "writing manifest"}
        size = weights.size + sum(self.blob_path(d).stat().st_size for d in adapters.values())
        self.models[name] = ModelRecord(
            name=name,
            family=weights.family,
            model_type=weights.model_type,
            quantization=weights.file_type,
            size=size,
            digest=_digest_of(layers).split(":", 1)[1],
            files=dict(files),
            model_digest=weights.digest,
            format=weights.format,
            adapters=all_adapters,
            parent=full_name(body["from"]) if body.get("from") else None,
            template=template,
            template_name=template_name,
            system=system,
            parameters=parameters,
            modified_at=datetime.now(UTC).isoformat(),
            chat_template=weights.chat_template,
            renders_chat_template=self.release >= GGUF_TEMPLATE_SINCE
            and _offers_tools_or_thinking(weights.chat_template),
        )
        yield {"status": "success"}

    def _from_model(self, base: str) -> Iterator[dict]:
        record = self.find(base)
        if record is None:
            # Ollama pulls a model it lacks; the double reaches no registry.
            yield {"status": "pulling manifest"}
            raise CreateFailed("pull model manifest: file does not exist")
        return Weights(
            family=record.family,
            model_type=record.model_type,
            file_type=record.quantization,
            size=record.size,
            digest=record.model_digest,
            format=record.format,
            chat_template=record.chat_template,
            template=record.template,
            template_name=record.template_name,
            system=record.system,
            parameters=dict(record.parameters),
            adapters=dict(record.adapters),
        )

    def _convert_model(self, files: dict[str, str]) -> Iterator[dict]:
        if self._kind(files) == "gguf":
            found = []
            for file_name in sorted(files):
                yield {"status": "parsing GGUF"}
                # Every file must be a GGUF: Ollama reads each one's header.
                found.append((files[file_name], read_gguf_info(self.blob_path(files[file_name]))))
            digest, info = next(item for item in found if item[1]["kind"] != "adapter")
            if self.release >= GGUF_REWRITTEN_SINCE:
                yield {"status": "validating GGUF model"}
                digest = self._rewrite(digest)
            return Weights(
                family=info["architecture"],
                model_type=info["architecture"],
                file_type=info["file_type"],
                size=self.blob_path(digest).stat().st_size,
                digest=digest,
                chat_template=info["chat_template"],
            )
        yield {"status": "converting model"}
        config = self._json_blob(files, "config.json")
        architectures = config.get("architectures") or []
        if not architectures:
            raise CreateFailed("unknown architecture", 400)
        family = CONVERTED_FAMILIES.get(architectures[0])
        if architectures[0] == "MistralForCausalLM" and self.release >= NO_MISTRAL_SINCE:
            family = None
        if family is None:
            raise CreateFailed(f'unsupported architecture "{architectures[0]}"', 400)
        chat_template = None
        if "tokenizer_config.json" in files:
            chat_template = self._json_blob(files, "tokenizer_config.json").get("chat_template")
        weights = [d for n, d in files.items() if n.endswith(".safetensors")]
        return Weights(
            family=family,
            model_type=str(config.get("model_type") or family),
            # Ollama writes converted weights as F16, whatever the safetensors held.
            file_type="F16",
            size=sum(self.blob_path(d).stat().st_size for d in weights),
            digest=_digest_of(sorted(files.values())),
            chat_template=chat_template if isinstance(chat_template, str) else None,
        )

    def _import_unconverted(self, files: dict[str, str], body: dict) -> Iterator[dict]:
        """0.34.1: safetensors become an MLX model as they are, quantized to an MLX type."""
        yield {"status": "importing safetensors"}
        config = self._json_blob(files, "config.json")
        architecture = (config.get("architectures") or ["unknown"])[0]
        quantize = str(body.get("quantize") or body.get("quantization") or "")
        weights = [d for n, d in files.items() if n.endswith(".safetensors")]
        return Weights(
            family=CONVERTED_FAMILIES.get(architecture, str(config.get("model_type") or "")),
            model_type=str(config.get("model_type") or ""),
            file_type=quantize.lower() or "bf16",
            size=sum(self.blob_path(d).stat().st_size for d in weights),
            digest=_digest_of(sorted(files.values())),
            format="safetensors",
        )

    def _rewrite(self, digest: str) -> str:
        """0.30+ writes an imported GGUF anew: the same model under another digest."""
        data = self.blob_path(digest).read_bytes() + b"\0" * 32
        rewritten = f"sha256:{hashlib.sha256(data).hexdigest()}"
        self.blob_path(rewritten).write_bytes(data)
        return rewritten

    def _convert_adapters(self, adapters: dict[str, str], weights: Weights) -> Iterator[dict]:
        if self._kind(adapters) == "gguf":
            if len(adapters) != 1:
                raise CreateFailed("only one GGUF adapter is supported", 400)
            yield {"status": "parsing GGUF"}
            read_gguf_info(self.blob_path(next(iter(adapters.values()))))
            return dict(adapters)
        if self.release >= NO_CONVERSION_SINCE:
            raise CreateFailed("supplied file was not in GGUF format", 400)
        yield {"status": "converting adapter"}
        config = self._json_blob(adapters, "adapter_config.json")
        alpha = config.get("lora_alpha")
        if not isinstance(alpha, int) or isinstance(alpha, bool):
            raise CreateFailed(
                f"json: cannot unmarshal number {json.dumps(alpha)} into Go struct field "
                "safetensorsAdapter.lora_alpha of type uint32"
            )
        if weights.family not in ADAPTER_FAMILIES:
            raise CreateFailed("unsupported architecture")
        return dict(adapters)

    def _quantize(self, weights: Weights, value: str) -> Iterator[dict]:
        wanted = QUANTIZE_TYPES.get(value.upper())
        if wanted is None:
            raise CreateFailed(
                f"unsupported quantization type {value.upper()} - supported types are "
                f"{LISTED_QUANTIZE_TYPES}"
            )
        if weights.file_type not in FLOAT_FILE_TYPES:
            raise CreateFailed("quantization is only supported for F16, BF16 and F32 models")
        if wanted == weights.file_type:
            return weights
        status = f"quantizing {weights.file_type} model to {wanted}"
        for completed in (0, weights.size // 2, weights.size):
            yield {
                "status": status,
                "digest": weights.digest,
                "total": weights.size,
                "completed": completed,
            }
        scale = BITS_PER_WEIGHT[wanted] / BITS_PER_WEIGHT[weights.file_type]
        return dataclasses.replace(
            weights,
            file_type=wanted,
            size=round(weights.size * scale),
            digest=_digest_of([weights.digest, wanted]),
        )

    def _kind(self, files: dict[str, str]) -> str:
        """safetensors or gguf, told by the names or else by the GGUF magic, as Ollama does."""
        if any(name.endswith(".safetensors") for name in files):
            return "safetensors"
        if any(self._is_gguf(name, digest) for name, digest in files.items()):
            return "gguf"
        raise CreateFailed("unknown type", 400)

    def _is_gguf(self, name: str, digest: str) -> bool:
        if name.endswith(".gguf"):
            return True
        with self.blob_path(digest).open("rb") as handle:
            return handle.read(4) == b"GGUF"

    def _json_blob(self, files: dict[str, str], file_name: str) -> dict:
        if file_name not in files:
            raise CreateFailed(f"open {file_name}: file does not exist", 400)
        try:
            data = json.loads(self.blob_path(files[file_name]).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CreateFailed(f"{file_name}: {exc}", 400) from None
        if not isinstance(data, dict):
            raise CreateFailed(f"{file_name}: not a JSON object", 400)
        return data

    # -- models ----------------------------------------------------------------------------

    async def _tags(self, request: Request) -> Response:
        return JSONResponse({"models": [self._summary(record) for record in self.models.values()]})

    async def _show(self, request: Request) -> Response:
        body = await _json_body(request) or {}
        record = self.find(str(body.get("model") or body.get("name") or ""))
        if record is None:
            name = body.get("model") or body.get("name")
            return JSONResponse({"error": f"model '{name}' not found"}, 404)
        shown = {
            "license": "",
            "modelfile": _modelfile(record, self.blobs_dir),
            "parameters": _parameter_lines(record.parameters),
            "template": record.template or DEFAULT_TEMPLATE,
            "details": _details(record),
            "model_info": {
                "general.architecture": record.family,
                "general.parameter_count": _parameter_count(record),
            },
            "modified_at": record.modified_at,
        }
        if record.system:
            shown["system"] = record.system
        return JSONResponse(shown)

    async def _delete(self, request: Request) -> Response:
        body = await _json_body(request) or {}
        name = str(body.get("model") or body.get("name") or "")
        if not name:
            return JSONResponse({"error": "model is required"}, 400)
        if self.find(name) is None:
            return JSONResponse({"error": f"model '{name}' not found"}, 404)
        del self.models[full_name(name)]
        self.loaded.discard(full_name(name))
        return Response(status_code=200)

    async def _ps(self, request: Request) -> Response:
        running = []
        for name in sorted(self.loaded):
            record = self.models[name]
            running.append({**self._summary(record), "expires_at": "", "size_vram": 0})
        return JSONResponse({"models": running})

    def _summary(self, record: ModelRecord) -> dict[str, Any]:
        return {
            "name": record.name,
            "model": record.name,
            "modified_at": record.modified_at,
            "size": record.size,
            "digest": record.digest,
            "details": _details(record),
        }

    # -- OpenAI-compatible -----------------------------------------------------------------

    async def _openai_models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "library"}
            for name in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _openai_chat(self, request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return _openai_error(400, "missing request body")
        model = body.get("model")
        messages = body.get("messages")
        if not model:
            return _openai_error(400, "model is required")
        if not isinstance(messages, list):
            return _openai_error(400, "messages must be a list")
        record = self.find(str(model))
        if record is None:
            return _openai_error(404, f'model "{model}" not found, try pulling it first')
        if (
            self.release < ADAPTER_LOAD_FIXED
            and record.family in NEW_ENGINE_FAMILIES
            and any(self._is_gguf(n, d) for n, d in record.adapters.items())
        ):
            return _openai_error(500, "llama runner process has terminated: exit status 2")
        self.loaded.add(record.name)
        answer = f"[{model}] {_last_user_text(messages)}"
        if record.adapters:
            answer += " (adapter)"
        if body.get("stream"):
            return StreamingResponse(_sse_chunks(model, answer), media_type="text/event-stream")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(answer.split())
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().int % 1000}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )


def full_name(name: str) -> str:
    """Ollama's full model name: the tag defaults to "latest"."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def read_gguf_info(path: Path) -> dict[str, Any]:
    """general.architecture, general.file_type and the chat template from a GGUF header."""
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise CreateFailed("invalid file magic", 400)
        version, _tensor_count, kv_count = struct.unpack("<IQQ", handle.read(20))
        if version < 2:
            raise CreateFailed(f"unsupported GGUF version {version}", 400)
        found: dict[str, Any] = {}
        for _ in range(kv_count):
            key = _gguf_string(handle)
            (value_type,) = struct.unpack("<I", handle.read(4))
            found[key] = _gguf_value(handle, value_type)
    file_type = found.get("general.file_type")
    return {
        "architecture": str(found.get("general.architecture", "unknown")),
        "file_type": GGUF_FILE_TYPES.get(file_type, f"type {file_type}")
        if file_type is not None
        else "F16",
        "chat_template": found.get("tokenizer.chat_template"),
        "kind": str(found.get("general.type", "model")),
    }


# GGUF value types: struct format of each fixed-size one; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_GGUF_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}


def _gguf_string(handle) -> str:
    (length,) = struct.unpack("<Q", handle.read(8))
    return handle.read(length).decode("utf-8", errors="replace")


def _gguf_value(handle, value_type: int) -> Any:
    if value_type == 8:
        return _gguf_string(handle)
    if value_type == 9:
        _skip_gguf_array(handle)
        return None
    fmt = _GGUF_SCALARS.get(value_type)
    if fmt is None:
        raise CreateFailed(f"invalid GGUF value type {value_type}", 400)
    (value,) = struct.unpack(fmt, handle.read(struct.calcsize(fmt)))
    return value


def _skip_gguf_array(handle) -> None:
    """Arrays (a vocabulary, its merges) hold nothing the double needs: seek past them."""
    item_type, count = struct.unpack("<IQ", handle.read(12))
    if item_type in _GGUF_SCALARS:
        handle.seek(count * struct.calcsize(_GGUF_SCALARS[item_type]), 1)
        return
    for _ in range(count):
        if item_type == 8:
            (length,) = struct.unpack("<Q", handle.read(8))
            handle.seek(length, 1)
        else:
            _gguf_value(handle, item_type)


async def _json_body(request: Request) -> dict | None:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _chain(first: dict | None, rest: Iterator[dict]) -> Iterator[dict]:
    if first is not None:
        yield first
    yield from rest


def _ndjson(events: Iterator[dict], with_status: bool) -> Iterator[str]:
    try:
        for event in events:
            yield json.dumps(event) + "\n"
    except CreateFailed as exc:
        # Before 0.12.6 an error line carries the HTTP status it stands for; since, a line
        # comes only after some output and carries none.
        error: dict[str, Any] = {"error": exc.message}
        if with_status:
            error["status"] = exc.status
        yield json.dumps(error) + "\n"


def _single_answer(events: Iterator[dict]) -> Response:
    try:
        for _event in events:
            pass
    except CreateFailed as exc:
        return JSONResponse({"error": exc.message}, exc.status)
    return JSONResponse({"status": "success"})


def _offers_tools_or_thinking(chat_template: str | None) -> bool:
    return bool(chat_template) and ("tools" in chat_template or "<think>" in chat_template)


def _template_name(chat_template: str) -> str | None:
    for marker, name in TEMPLATE_MARKERS:
        if marker in chat_template:
            return name
    return None


def _digest_of(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True).encode()
    return f"sha256:{hashlib.sha256(encoded).hexdigest()}"


def _parameter_count(record: ModelRecord) -> int:
    return round(record.size * 8 / BITS_PER_WEIGHT.get(record.quantization, 16.0))


def _details(record: ModelRecord) -> dict[str, Any]:
    count = _parameter_count(record)
    size = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"
    return {
        "parent_model": record.parent or "",
        "format": record.format,
        "family": record.family,
        "families": [record.family],
        "parameter_size": size,
        "quantization_level": record.quantization,
    }


def _parameter_lines(parameters: dict[str, Any]) -> str:
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            shown = json.dumps(item) if isinstance(item, str) else item
            lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


def _modelfile(record: ModelRecord, blobs_dir: Path) -> str:
    lines = ['# Modelfile generated by "ollama show"', f"FROM {record.parent or blobs_dir}"]
    lines += [f"ADAPTER {blobs_dir / d.replace(':', '-')}" for d in record.adapters.values()]
    lines.append(f'TEMPLATE """{record.template or DEFAULT_TEMPLATE}"""')
    if record.system:
        lines.append(f'SYSTEM """{record.system}"""')
    for line in _parameter_lines(record.parameters).splitlines():
        lines.append(f"PARAMETER {' '.join(line.split(maxsplit=1))}")
    return "\n".join(lines)


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


def _openai_error(status: int, message: str) -> Response:
    kinds = {400: "invalid_request_error", 404: "not_found_error"}
    error = {"message": message, "type": kinds.get(status, "api_error"), "param": None}
    return JSONResponse({"error": {**error, "code": None}}, status)


def _sse_chunks(model: str, answer: str) -> Iterator[str]:
    chunk_id = f"chatcmpl-{uuid.uuid4().int % 1000}"
    words = answer.split(" ")
    for index, word in enumerate(words):
        delta = {"role": "assistant", "content": word if index == 0 else f" {word}"}
        yield _sse(chunk_id, model, delta, None)
    yield _sse(chunk_id, model, {"role": "assistant", "content": ""}, "stop")
    yield "data: [DONE]\n\n"


def _sse(chunk_id: str, model: str, delta: dict, finish_reason: str | None) -> str:
    chunk = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk)}\n\n"
