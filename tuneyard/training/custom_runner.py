"""The job body of a custom training method: import the uploaded script in this process, call
its `train(config, output_dir, report)`, check what it wrote, and keep that as the model.

The contract the script follows is in tuneyard.training.custom.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from tuneyard.db import session_scope
from tuneyard.errors import AppError, Invalid
from tuneyard.jobs.context import JobCancelled, JobContext
from tuneyard.models import Training, TrainingMetric
from tuneyard.storage import remove_tree
from tuneyard.training import results
from tuneyard.training.custom import CustomMethod, custom_method_of
from tuneyard.training.runner import RunInputs, hardware, load_inputs

PEFT_PREFIX = "base_model.model."


class Report:
    """What the script gets as `report`: its records, and ways to report back."""

    def __init__(self, ctx: JobContext, inputs: RunInputs):
        self._ctx = ctx
        self._inputs = inputs
        self._started = time.monotonic()
        self._percent = 0.0
        self.log = logging.getLogger(f"tuneyard.job.{inputs.method.name}")

    def records(self) -> Iterator[dict]:
        """The dataset's normalised records, in file order; at most max_samples when set."""
        limit = self._inputs.params.max_samples
        count = 0
        with self._inputs.records_path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                if 0 < limit <= count:
                    return
                count += 1
                yield json.loads(line)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Progress 0-100 of the training (99 at most: writing the model is the last step)."""
        percent = min(max(float(percent), 0.0), 99.0)
        elapsed = time.monotonic() - self._started
        eta = elapsed * (100.0 - percent) / percent if percent > 0 else None
        with session_scope(self._ctx.settings) as session:
            training = session.get(Training, self._inputs.training_id)
            training.progress = percent
            training.eta_seconds = eta
        self._percent = percent
        self._ctx.progress(percent, message)

    def metrics(self, step: int, **values: float) -> None:
        """Record one step's numbers (loss, learning_rate...) as the built-in methods do."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"report.metrics: step must be a whole number >= 0, not {step!r}")
        data: dict[str, float | int] = {}
        for key, value in values.items():
            if isinstance(value, bool | str):
                raise TypeError(f"report.metrics: {key} must be a number, not {value!r}")
            try:
                number = float(value)  # numpy and 0-d torch numbers too
            except (TypeError, ValueError):
                raise TypeError(f"report.metrics: {key} must be a number, not {value!r}") from None
            if not math.isfinite(number):
                self.log.warning("step %d: %s is %s; not recorded", step, key, number)
                continue
            data[key] = value if type(value) is int else number
        training_id = self._inputs.training_id
        with session_scope(self._ctx.settings) as session:
            session.execute(
                delete(TrainingMetric).where(
                    TrainingMetric.training_id == training_id,
                    TrainingMetric.step == step,
                    TrainingMetric.kind == "train",
                )
            )
            session.add(TrainingMetric(training_id=training_id, step=step, kind="train", data=data))
        if "loss" in data:
            self._ctx.progress(self._percent, f"Step {step} · loss {data['loss']:.4f}")

    def should_stop(self) -> bool:
        """True once a cancel was asked for: return from train() soon."""
        return self._ctx.cancel_requested


def load_train_function(method: CustomMethod) -> Callable[..., Any]:
    """Import the stored script (as uploaded: its digest is checked) and return its train."""
    if not method.path.exists():
        raise Invalid(f"The script of {method.name} is missing from the data dir; upload it again.")
    if hashlib.sha256(method.path.read_bytes()).hexdigest() != method.digest:
        raise Invalid(
            f"The script of {method.name} changed on disk since it was uploaded; upload it again."
        )
    module_name = f"tuneyard_method_{method.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, method.path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling in the script look it up
    spec.loader.exec_module(module)
    return module.train


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
        config = PeftConfig.from_pretrained(folder)
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
    method: CustomMethod = inputs.method
    ctx.progress(1, f"Loading the {method.name} script")
    produced = results.fresh_result_dir(inputs.work_dir)
    try:
        report = Report(ctx, inputs)
        config = {
            "params": inputs.params.model_dump(mode="json"),
            "base_model_path": str(inputs.base_path),
            "records_path": str(inputs.records_path),
            "dataset_format": inputs.dataset_format,
            "seed": inputs.params.seed,
        }
        started = time.monotonic()
        try:
            train = load_train_function(method)
            ctx.progress(2, f"Running {method.name}")
            train(config, produced, report)
        except Exception as exc:
            if ctx.cancel_requested:
                raise JobCancelled() from exc
            if isinstance(exc, AppError):
                raise
            raise AppError(f"{method.name} failed: {type(exc).__name__}: {exc}") from exc
        duration = time.monotonic() - started
        if ctx.cancel_requested:
            raise JobCancelled()
        ctx.progress(99, "Checking the model it wrote")
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
