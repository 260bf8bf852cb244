"""The job body of a custom training method: run the uploaded script's
`train(config, output_dir, report)` in a process of its own (see
tuneyard.training.code_process), record what it reports, check what it wrote, and keep that as
the model.

The contract the script follows is in tuneyard.training.custom.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from tuneyard.db import session_scope
from tuneyard.errors import AppError, Invalid
from tuneyard.jobs.context import JobCancelled, JobContext
from tuneyard.models import Training, TrainingMetric
from tuneyard.storage import remove_tree
from tuneyard.training import results
from tuneyard.training.code_process import CodeProcess, scratch_dir
from tuneyard.training.custom import CustomMethod, custom_method_of, require_code_runs
from tuneyard.training.runner import RunInputs, check_hardware, hardware, load_inputs

PEFT_PREFIX = "base_model.model."
MAX_METRICS = 100
MAX_MESSAGE = 500


class TrainingReporter:
    """Writes what the script reports (progress, metrics) to the training and its job."""

    def __init__(self, ctx: JobContext, inputs: RunInputs):
        self._ctx = ctx
        self._training_id = inputs.training_id
        self._started = time.monotonic()
        self._percent = 0.0

    def progress(self, percent: float, message: str | None) -> None:
        elapsed = time.monotonic() - self._started
        eta = elapsed * (100.0 - percent) / percent if percent > 0 else None
        with session_scope(self._ctx.settings) as session:
            training = session.get_one(Training, self._training_id)
            training.progress = percent
            training.eta_seconds = eta
        self._percent = percent
        self._ctx.progress(percent, message)

    def metrics(self, step: int, data: dict[str, float | int]) -> None:
        with session_scope(self._ctx.settings) as session:
            session.execute(
                delete(TrainingMetric).where(
                    TrainingMetric.training_id == self._training_id,
                    TrainingMetric.step == step,
                    TrainingMetric.kind == "train",
                )
            )
            session.add(
                TrainingMetric(training_id=self._training_id, step=step, kind="train", data=data)
            )
        if "loss" in data:
            self._ctx.progress(self._percent, f"Step {step} · loss {data['loss']:.4f}")


class BadRequest(Exception):
    """A request of the script's process that is not answered (its reason goes back)."""


def _number(value: Any, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{what} must be a finite number, not {value!r}")
    return value


def _progress_request(message: dict[str, Any]) -> tuple[float, str | None]:
    percent = min(max(float(_number(message.get("percent"), "percent")), 0.0), 99.0)
    text = message.get("message")
    if text is not None and not isinstance(text, str):
        raise BadRequest("a progress message must be text")
    return percent, text[:MAX_MESSAGE] if text else text


def _metrics_request(message: dict[str, Any]) -> tuple[int, dict[str, float | int]]:
    step, values = message.get("step"), message.get("values")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise BadRequest(f"step must be a whole number >= 0, not {step!r}")
    if not isinstance(values, dict) or len(values) > MAX_METRICS:
        raise BadRequest(f"metrics are at most {MAX_METRICS} names with numbers")
    data = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key or len(key) > 100:
            raise BadRequest(f"a metric name is 1-100 characters, not {key!r}")
        data[key] = _number(value, key)
    return step, data


def _answer(ctx: JobContext, reporter: TrainingReporter, message: dict[str, Any]) -> Any:
    op = message.get("op")
    if op == "should_stop":
        return ctx.cancel_requested
    if op == "progress":
        reporter.progress(*_progress_request(message))
        return None
    if op == "metrics":
        reporter.metrics(*_metrics_request(message))
        return None
    raise BadRequest(f"unknown request {op!r}")


def verified_script(method: CustomMethod, stored: Path, scratch: Path) -> Path:
    """A copy of the stored script (at `stored`, the method's path in this data dir), checked
    to be the one uploaded (its digest), for the code's process to import."""
    if not stored.exists():
        raise Invalid(f"The script of {method.name} is missing from the data dir; upload it again.")
    source = stored.read_bytes()
    if hashlib.sha256(source).hexdigest() != method.digest:
        raise Invalid(
            f"The script of {method.name} changed on disk since it was uploaded; upload it again."
        )
    copy = scratch / f"{method.name.replace('-', '_')}.py"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(source)
    return copy


def run_script(
    ctx: JobContext,
    method: CustomMethod,
    inputs: RunInputs,
    config: dict[str, Any],
    output_dir: Path,
) -> None:
    """Run the script's train in its own process and answer its reports until it ends."""
    scratch = scratch_dir(ctx.work_dir)
    script = verified_script(method, ctx.layout.local(str(method.path)), scratch)
    reporter = TrainingReporter(ctx, inputs)
    process = CodeProcess("method", scratch, f"method {method.name}")
    try:
        process.start(
            {
                "name": method.name,
                "module": f"tuneyard_method_{method.name.replace('-', '_')}",
                "script": str(script),
                "config": config,
                "output_dir": str(output_dir),
                "max_samples": inputs.params.max_samples,
            }
        )
        while True:
            message = process.receive()
            if message.get("op") == "done":
                return
            if message.get("op") == "failed":
                if ctx.cancel_requested:
                    raise JobCancelled()
                raise AppError(f"{method.name} failed: {str(message.get('error'))[:2000]}")
            try:
                process.send({"value": _answer(ctx, reporter, message)})
            except BadRequest as exc:
                process.send({"error": f"report: {exc}"})
    except AppError:
        if ctx.cancel_requested:
            raise JobCancelled() from None
        raise
    finally:
        process.close()
        remove_tree(scratch)


def refuse_links(method: CustomMethod, folder: Path) -> None:
    """The model folder must hold files, not links to files elsewhere (which an archive or a
    deploy of the model would follow)."""
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise Invalid(
                f"{method.name} wrote a link ({path.relative_to(folder)}) into output_dir; "
                "write the files themselves."
            )


def check_adapter(method: CustomMethod, folder: Path, inputs: RunInputs) -> None:
    """The adapter fits the base: its config names the base, and each weight sits on a module
    of the base with matching shapes. Only the safetensors header and a meta-device skeleton
    of the base are read, never the weights."""
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.exists() or not weights_file.exists():
        raise Invalid(
            f"{method.name} returned without writing adapter_config.json and "
            'adapter_model.safetensors to output_dir (RESULT is "adapter"; '
            "PeftModel.save_pretrained(output_dir) writes both)."
        )
    import torch
    from peft import PeftConfig
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise Invalid(
            f"{method.name} wrote an adapter_config.json that PEFT cannot read: {exc}"
        ) from None
    named = config.base_model_name_or_path
    if named and Path(named).resolve() != inputs.base_path.resolve():
        raise Invalid(
            f"{method.name} wrote an adapter for '{named}', but this training's base model is "
            f"{inputs.base_name}; load the base from config['base_model_path']."
        )
    if not named:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
        raw["base_model_name_or_path"] = str(inputs.base_path)
        config_file.write_text(json.dumps(raw, indent=2), encoding="utf-8")

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(inputs.base_path))
    modules = dict(base.named_modules())
    shapes = {name: tuple(tensor.shape) for name, tensor in base.state_dict().items()}
    targets = config.target_modules
    if isinstance(targets, list | set | tuple):
        absent = sorted(
            t for t in targets if not any(n == t or n.endswith(f".{t}") for n in modules)
        )
        if absent:
            raise Invalid(
                f"{method.name} wrote an adapter that targets {', '.join(absent)}, which base "
                f"model {inputs.base_name} does not have."
            )
    with safe_open(weights_file, "pt") as weights:
        names = weights.keys()  # the header only: no tensor is read
        found = {key: tuple(weights.get_slice(key).get_shape()) for key in names}
    if not found:
        raise Invalid(f"{method.name} wrote an adapter_model.safetensors with no weights.")
    for key, shape in found.items():
        path = key.removeprefix(PEFT_PREFIX)
        module_path, lora, part = path.partition(".lora_")
        if not lora:
            if shapes.get(path) != shape:
                raise Invalid(
                    f"{method.name} wrote the weight {key} {list(shape)}, which does not match "
                    f"base model {inputs.base_name}."
                )
            continue
        module = modules.get(module_path)
        if module is None:
            raise Invalid(
                f"{method.name} wrote LoRA weights for {module_path}, which base model "
                f"{inputs.base_name} does not have."
            )
        if isinstance(module, torch.nn.Linear) and (
            (part.startswith("A.") and shape[-1] != module.in_features)
            or (part.startswith("B.") and shape[0] != module.out_features)
        ):
            raise Invalid(
                f"{method.name} wrote {key} with shape {list(shape)}, which does not fit "
                f"{module_path} ({module.in_features} -> {module.out_features}) of base model "
                f"{inputs.base_name}."
            )


def check_full_model(method: CustomMethod, folder: Path) -> None:
    from transformers import AutoConfig

    if not (folder / "config.json").exists() or not any(folder.glob("*.safetensors")):
        raise Invalid(
            f"{method.name} returned without writing config.json and *.safetensors weights to "
            'output_dir (RESULT is "full"; model.save_pretrained(output_dir) writes them).'
        )
    try:
        AutoConfig.from_pretrained(folder)
    except Exception as exc:
        raise Invalid(
            f"{method.name} wrote a config.json that transformers cannot read: {exc}"
        ) from None


def add_base_tokenizer(folder: Path, base_path: Path) -> None:
    """A model folder carries its tokenizer, so it loads alone; the base's unless the script
    saved its own."""
    if (folder / "tokenizer_config.json").exists():
        return
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base_path).save_pretrained(folder)


def run_custom_training(ctx: JobContext) -> dict[str, Any]:
    inputs = load_inputs(ctx, custom_method_of)
    method = inputs.method
    assert isinstance(method, CustomMethod), "custom_method_of gives the uploaded method"
    require_code_runs(ctx.settings, f"Training method {method.name}")
    check_hardware(inputs.params)
    ctx.progress(1, f"Loading the {method.name} script")
    produced = results.fresh_result_dir(inputs.work_dir)
    try:
        config = {
            "params": inputs.params.model_dump(mode="json"),
            "base_model_path": str(inputs.base_path),
            "records_path": str(inputs.records_path),
            "dataset_format": inputs.dataset_format,
            "seed": inputs.params.seed,
        }
        started = time.monotonic()
        run_script(ctx, method, inputs, config, produced)
        duration = time.monotonic() - started
        if ctx.cancel_requested:
            raise JobCancelled()
        ctx.progress(99, "Checking the model it wrote")
        refuse_links(method, produced)
        if method.result == "adapter":
            check_adapter(method, produced, inputs)
        else:
            check_full_model(method, produced)
        add_base_tokenizer(produced, inputs.base_path)
    except BaseException:
        remove_tree(produced)
        raise
    outcome = results.write_result(
        ctx,
        inputs.training_id,
        produced,
        full=method.result == "full",
        duration=duration,
        hw=hardware(),
        lineage={"method_digest": method.digest},
    )
    ctx.progress(100, outcome["message"])
    return outcome
