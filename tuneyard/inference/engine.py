"""Local models kept in memory for chat: an LRU of loaded models within a memory budget, adapters
applied on their base without merging, and one streamed generation at a time per model.

torch, transformers and peft are imported inside functions: the module itself is cheap to import.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneyard.complete.safetensors_io import read_header
from tuneyard.errors import Invalid, NotFound

log = logging.getLogger(__name__)

# Models run in bfloat16. Measured on a 2-core AVX-512 bf16 CPU with SmolLM2-135M-Instruct:
# a 1000-token prompt is read in 1.3 s against 2.4 s in float32, new tokens come at 19-24 a
# second against 14-15, greedy answers agree (three prompts, first 40 tokens), and a model
# fills half as much of the memory budget.
DTYPE_NAME = "bfloat16"
BYTES_PER_PARAMETER = 2
DEFAULT_MAX_TOKENS = 256
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# A folder with this file carries its own tokenizer (a customized model may bring its own).
TOKENIZER_CONFIG = "tokenizer_config.json"
# How PEFT names a LoRA factor in a saved adapter: the wrapped module's path, then A or B.
LORA_WEIGHT = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<factor>lora_[AB])\.weight$")


@dataclass(frozen=True)
class ChatRequest:
    """What to run and how: the model folder, an optional adapter folder, and sampling."""

    model_dir: Path
    messages: list[dict[str, str]]
    adapter_dir: Path | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def sampling(self) -> bool:
        """Temperature 0, or none given, means greedy decoding."""
        return bool(self.temperature)


@dataclass
class LoadedModel:
    """A model in memory with the adapters loaded on it so far. `lock` is held by the one
    generation that runs on it; `model` becomes a PeftModel when the first adapter loads."""

    key: str
    model: Any
    tokenizer: Any
    nbytes: int
    # PEFT adapter name -> adapter folder. Replaced, never mutated, so /health can read it
    # while a request adds an adapter.
    adapters: dict[str, Path] = field(default_factory=dict)
    adapter_tokenizers: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class ActiveModel:
    """What one request generates with: the model set up for it, and the tokenizer to use."""

    model: Any
    tokenizer: Any


class ModelCache:
    """Models kept loaded between requests, least recently used evicted first when a new one
    would not fit in `budget_bytes`."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.loads = 0
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def loaded(self) -> list[dict[str, Any]]:
        """The loaded models, least recently used first."""
        with self._lock:
            return [
                {
                    "key": entry.key,
                    "bytes": entry.nbytes,
                    "adapters": [str(path) for path in entry.adapters.values()],
                }
                for entry in self._models.values()
            ]

    @contextmanager
    def use(self, model_dir: Path, adapter_dir: Path | None = None) -> Iterator[ActiveModel]:
        """The model with `adapter_dir` active (or every adapter off), held for one
        generation: a second request for the same model waits here."""
        base_dir = check_model_dir(model_dir)
        adapter = check_adapter_dir(adapter_dir) if adapter_dir is not None else None
        entry = self._get(base_dir)
        with entry.lock:
            if adapter is None:
                with _adapters_off(entry.model):
                    yield ActiveModel(entry.model, entry.tokenizer)
                return
            name = self._attach(entry, adapter)
            entry.model.set_adapter(name, inference_mode=True)
            yield ActiveModel(entry.model, entry.adapter_tokenizers.get(name, entry.tokenizer))

    def _get(self, model_dir: Path) -> LoadedModel:
        key = str(model_dir)
        # Loads happen under the cache lock, so two requests for a new model load it once.
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                self._models.move_to_end(key)
                return entry
            self._make_room(estimated_bytes(model_dir), key)
            entry = load_model(model_dir)
            self._models[key] = entry
            self.loads += 1
            log.info("loaded %s (%d bytes)", key, entry.nbytes)
            return entry

    def _make_room(self, needed: int, key: str) -> None:
        if needed > self.budget_bytes:
            log.warning(
                "%s needs about %d bytes, more than the whole budget of %d "
                "(TUNEYARD_INFERENCE_MEMORY_GB): it is loaded alone",
                key,
                needed,
                self.budget_bytes,
            )
        evicted = False
        while self._models and self._used() + needed > self.budget_bytes:
            # A generation still running on an evicted model keeps it alive until it ends.
            old_key, old = self._models.popitem(last=False)
            log.info("evicted %s (%d bytes) to make room for %s", old_key, old.nbytes, key)
            evicted = True
        if evicted:
            gc.collect()

    def _used(self) -> int:
        return sum(entry.nbytes for entry in self._models.values())

    def _attach(self, entry: LoadedModel, adapter_dir: Path) -> str:
        """Load the adapter on the model unless it is there already; its PEFT name."""
        name = adapter_name(adapter_dir)
        if name in entry.adapters:
            return name
        check_adapter_fits(entry.model, adapter_dir, entry.key)
        try:
            entry.model = _load_adapter(entry.model, adapter_dir, name)
        except Exception as exc:
            # PEFT wraps the layers before it loads the weights: the model may be half changed.
            with self._lock:
                if self._models.get(entry.key) is entry:
                    del self._models[entry.key]
            log.exception("loading the adapter %s failed", adapter_dir)
            raise Invalid(
                f"The adapter {adapter_dir} could not be applied to the base model "
                f"{entry.key}: {exc}"
            ) from None
        if (adapter_dir / TOKENIZER_CONFIG).is_file():
            entry.adapter_tokenizers[name] = load_tokenizer(adapter_dir)
        entry.adapters = {**entry.adapters, name: adapter_dir}
        entry.nbytes = model_bytes(entry.model)
        log.info("loaded the adapter %s on %s", adapter_dir, entry.key)
        return name


def check_model_dir(path: Path) -> Path:
    """The resolved model folder; NotFound or Invalid says what is wrong with it."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise NotFound(f"There is no model folder at {path}: check the path.")
    if not (folder / "config.json").is_file():
        if (folder / ADAPTER_CONFIG).is_file():
            raise Invalid(
                f"{path} holds an adapter, not a model: send it as adapter_dir, with its base "
                "model's folder as model_dir."
            )
        raise Invalid(
            f"{path} is not a model folder: it has no config.json (an HF model folder holds "
            "config.json, the tokenizer files and the weights)."
        )
    return folder


def check_adapter_dir(path: Path) -> Path:
    """The resolved adapter folder; NotFound or Invalid says what is wrong with it."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise NotFound(f"There is no adapter folder at {path}: check the path.")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise Invalid(f"{path} is not a PEFT adapter folder: it has no {ADAPTER_CONFIG}.")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise Invalid(f"{path} has no {ADAPTER_WEIGHTS}: save the adapter with safetensors.")
    return folder


def check_adapter_fits(model: Any, adapter_dir: Path, base_key: str) -> None:
    """Compare the adapter's LoRA shapes with the base's layers before PEFT touches the model
    (a PEFT load that fails halfway leaves layers wrapped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, info in read_header(adapter_dir / ADAPTER_WEIGHTS)[0].items():
        match = LORA_WEIGHT.match(name)
        if match is None:
            continue
        module_name = match["module"]
        try:
            module = base.get_submodule(module_name)
        except AttributeError:
            raise Invalid(
                f"The adapter {adapter_dir} changes the layer {module_name}, which the base "
                f"model {base_key} does not have: it was trained on another kind of model."
            ) from None
        if match["factor"] == "lora_A":
            expected, actual = getattr(module, "in_features", None), info.shape[-1]
        else:
            expected, actual = getattr(module, "out_features", None), info.shape[0]
        if expected is not None and expected != actual:
            raise Invalid(
                f"The adapter {adapter_dir} does not fit the base model {base_key}: its layer "
                f"{module_name} has {actual} features where the base has {expected}. Use the "
                "base model the adapter was trained on."
            )


def adapter_name(adapter_dir: Path) -> str:
    """A PEFT adapter name for a folder (PEFT names cannot hold dots or slashes)."""
    return "adapter_" + hashlib.sha256(str(adapter_dir).encode()).hexdigest()[:16]


def estimated_bytes(model_dir: Path) -> int:
    """The memory a model will take once loaded, from its safetensors headers (no tensor is
    read); other weight formats have no header, so their size on disk stands in."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return sum(path.stat().st_size for path in model_dir.glob("*.bin"))
    numel = sum(info.numel for path in files for info in read_header(path)[0].values())
    return numel * BYTES_PER_PARAMETER


def model_bytes(model: Any) -> int:
    """Bytes of a loaded model's parameters and buffers (tied weights counted once)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def load_model(model_dir: Path) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, DTYPE_NAME))
    except Exception as exc:
        log.exception("loading %s failed", model_dir)
        raise Invalid(f"{model_dir} cannot be loaded as a language model: {exc}") from None
    model.eval()
    return LoadedModel(
        key=str(model_dir),
        model=model,
        tokenizer=load_tokenizer(model_dir),
        nbytes=model_bytes(model),
    )


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise Invalid(f"{folder} has no tokenizer that loads: {exc}") from None


def _load_adapter(model: Any, adapter_dir: Path, name: str) -> Any:
    """Apply the adapter unmerged: the first wraps the base in a PeftModel, later ones join it."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(adapter_dir, adapter_name=name)
        return model
    return PeftModel.from_pretrained(model, adapter_dir, adapter_name=name).eval()


def _adapters_off(model: Any) -> Any:
    """A context in which the model runs as its plain base."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt as the model's chat template writes it; a model without a template (a plain
    base model) reads the messages as one text."""
    from jinja2 import TemplateError

    if not tokenizer.chat_template:
        text = "\n\n".join(message["content"] for message in messages)
        return list(tokenizer(text)["input_ids"])
    try:
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
    except (TemplateError, ValueError) as exc:
        raise Invalid(f"The model's chat template refuses these messages: {exc}") from None
    return list(encoded["input_ids"])


class _StopText:
    """Cuts streamed text before the first stop string. A tail that may be the start of a stop
    string is held back until the next piece shows whether it is."""

    def __init__(self, stop: tuple[str, ...]):
        self.stop = stop
        self.pending = ""
        self.found = False

    def push(self, piece: str) -> str:
        """The text that can be sent now."""
        self.pending += piece
        cuts = [at for at in (self.pending.find(word) for word in self.stop) if at >= 0]
        if cuts:
            self.found = True
            text, self.pending = self.pending[: min(cuts)], ""
            return text
        keep = max((_partial_stop(self.pending, word) for word in self.stop), default=0)
        text = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(text) :]
        return text

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def _partial_stop(text: str, word: str) -> int:
    """Length of the longest end of `text` that begins `word` (and is not all of it)."""
    for length in range(min(len(word) - 1, len(text)), 0, -1):
        if text.endswith(word[:length]):
            return length
    return 0


class _Halt:
    """A stopping criterion for generate: the client went away, or a stop string appeared."""

    def __init__(self, tokenizer: Any, prompt_length: int, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = stop
        self.cancelled = threading.Event()
        self.stopped = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if self.stop and not self.stopped:
            new_ids = input_ids[0, self.prompt_length :]
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            self.stopped = any(word in text for word in self.stop)
        done = self.stopped or self.cancelled.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class Generation:
    """One chat completion, run in a thread of its own.

    `start` returns once the model is loaded and the prompt read (or raises why it cannot run);
    iterating gives the text as it comes; `cancel` ends the generation at the next token. The
    counts and `finish_reason` are set when the iteration ends.
    """

    def __init__(self, cache: ModelCache, request: ChatRequest):
        self.request = request
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self._cache = cache
        self._ready = threading.Event()
        self._cancelled = False
        self._error: BaseException | None = None
        self._streamer: Any = None
        self._halt: _Halt | None = None
        self._thread = threading.Thread(target=self._run, name="tuneyard-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._streamer is None and self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._cancelled = True
        if self._halt is not None:
            self._halt.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        stop_text = _StopText(self.request.stop)
        for piece in self._streamer:
            text = stop_text.push(piece)
            if text:
                yield text
            if stop_text.found:
                self.cancel()  # generate has stopped on that token already, or will at the next
                break
        else:
            tail = stop_text.flush()
            if tail:
                yield tail
        self._thread.join()
        if stop_text.found:
            self.finish_reason = "stop"
        if self._error is not None:
            raise self._error

    def text(self) -> str:
        """The whole answer (blocks until it is complete)."""
        return "".join(self)

    def _run(self) -> None:
        from transformers import TextIteratorStreamer

        request = self.request
        generated = False
        try:
            with self._cache.use(request.model_dir, request.adapter_dir) as active:
                ids = prompt_ids(active.tokenizer, request.messages)
                self.prompt_tokens = len(ids)
                self._halt = _Halt(active.tokenizer, len(ids), request.stop)
                if self._cancelled:
                    self._halt.cancelled.set()
                self._streamer = TextIteratorStreamer(
                    active.tokenizer, skip_prompt=True, skip_special_tokens=True
                )
                self._ready.set()
                output = self._generate(active.model, ids)
                generated = True
            self.completion_tokens = output.shape[1] - len(ids)
            if self.completion_tokens >= request.max_tokens and not self._halt.stopped:
                self.finish_reason = "length"
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            # generate ends the streamer itself; after a failure the reader must not wait on.
            if self._streamer is not None and not generated:
                self._streamer.end()

    def _generate(self, model: Any, ids: list[int]) -> Any:
        import torch
        from transformers import StoppingCriteriaList

        request = self.request
        options: dict[str, Any] = {"do_sample": False}
        if request.sampling:
            # top_k 0 turns off the top-k filter that a model's generation config may set.
            options = {
                "do_sample": True,
                "temperature": request.temperature,
                "top_p": request.top_p if request.top_p is not None else 1.0,
                "top_k": request.top_k or 0,
            }
        if request.seed is not None:
            torch.manual_seed(request.seed)
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            return model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=request.max_tokens,
                streamer=self._streamer,
                stopping_criteria=StoppingCriteriaList([self._halt]),
                **options,
            )
