"""The training job body: load base model and records, build the method's trainer, report
every step, checkpoint, stop on cancel, resume from the last checkpoint, and write the result.

Runs inside a job process; this is the only training module that imports torch and TRL.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from tuneyard.datasets.service import records_path
from tuneyard.db import session_scope
from tuneyard.errors import Invalid
from tuneyard.jobs.context import JobCancelled, JobContext
from tuneyard.models import BaseModel, Dataset, Training, TrainingMetric, utcnow
from tuneyard.storage import remove_tree
from tuneyard.training.checkpoints import CHECKPOINT_PREFIX, checkpoints
from tuneyard.training.code_process import scratch_dir
from tuneyard.training.custom import CustomMethod
from tuneyard.training.methods import TrainingMethod, get_method
from tuneyard.training.params import CommonParams
from tuneyard.training.rewards import close_uploaded_rewards


@dataclass
class RunInputs:
    training_id: str
    project_id: str
    name: str
    method: TrainingMethod | CustomMethod
    params: CommonParams
    base_path: Path
    base_name: str
    base_model_id: str
    dataset_name: str
    dataset_digest: str | None
    dataset_format: str
    records_path: Path
    work_dir: Path
    reward_files: dict[str, str]


def load_inputs(ctx: JobContext, method_of=None) -> RunInputs:
    """Everything a run needs, read once; the training is marked running.

    `method_of(session, training)` gives its method; by default the built-in of that name.
    """
    training_id = ctx.params["training_id"]
    with session_scope(ctx.settings) as session:
        training = session.get_one(Training, training_id)
        base = session.get(BaseModel, training.base_model_id) if training.base_model_id else None
        dataset = session.get(Dataset, training.dataset_id) if training.dataset_id else None
        # A ready base model has its folder, and a ready dataset its format.
        if base is None or base.status != "ready" or base.path is None:
            raise Invalid("The base model of this training was deleted or is not ready.")
        if dataset is None or dataset.status != "ready" or dataset.format is None:
            raise Invalid("The dataset of this training was deleted or is not ready.")
        method = method_of(session, training) if method_of else get_method(training.method)
        training.status = "running"
        training.job_id = ctx.job_id
        training.error = None
        training.started_at = training.started_at or utcnow()
        training.finished_at = None
        return RunInputs(
            training_id=training.id,
            project_id=training.project_id,
            name=training.name,
            method=method,
            params=method.params_model.model_validate(training.params),
            base_path=Path(base.path),
            base_name=base.technical_name,
            base_model_id=base.id,
            dataset_name=dataset.name,
            dataset_digest=dataset.digest,
            dataset_format=dataset.format,
            records_path=records_path(dataset, ctx.layout),
            work_dir=ctx.layout.training_dir(training.id),
            reward_files=dict(ctx.params.get("reward_files", {})),
        )


def read_records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def cpu_supports_bf16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(params: CommonParams) -> tuple[str, Any, bool]:
    """(precision, dtype to load the base model in, whether to autocast).

    With an adapter in bf16 the frozen base is stored in bf16 and the adapter stays fp32: on
    a CPU with bf16 instructions that made matmuls several times faster, where autocast (fp32
    weights cast on every call) was slower than plain fp32. A full fine-tune keeps fp32
    weights (bf16 weights would lose small updates) and autocasts instead.
    """
    import torch

    cuda = torch.cuda.is_available()
    choice = params.precision
    if choice == "auto":
        bf16_ok = torch.cuda.is_bf16_supported() if cuda else cpu_supports_bf16()
        choice = "bf16" if bf16_ok else "fp32"
    if choice == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise Invalid("This GPU does not support bf16; use fp16 or fp32.")
    if choice == "fp32" or params.adapter == "full":
        return choice, torch.float32, choice != "fp32"
    half = torch.bfloat16 if choice == "bf16" else torch.float16
    return choice, half, cuda


def build_peft_config(params: CommonParams):
    if params.adapter == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.target_modules,
        use_dora=params.use_dora,
        use_rslora=params.use_rslora,
        task_type="CAUSAL_LM",
    )


def load_model(inputs: RunInputs, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if inputs.params.adapter == "qlora":  # check_hardware saw a GPU
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    return AutoModelForCausalLM.from_pretrained(inputs.base_path, **kwargs)


def training_arguments(
    inputs: RunInputs, precision: str, autocast: bool, has_eval: bool
) -> dict[str, Any]:
    import torch

    p = inputs.params
    return {
        "output_dir": str(inputs.work_dir / "checkpoints"),
        "num_train_epochs": p.epochs,
        "max_steps": p.max_steps,
        "per_device_train_batch_size": p.batch_size,
        "per_device_eval_batch_size": p.batch_size,
        "gradient_accumulation_steps": p.grad_accum_steps,
        "learning_rate": p.learning_rate,
        "lr_scheduler_type": p.lr_scheduler,
        "warmup_steps": p.warmup_steps if p.warmup_steps else p.warmup_ratio,
        "weight_decay": p.weight_decay,
        "max_grad_norm": p.max_grad_norm,
        "seed": p.seed,
        "data_seed": p.seed,
        "logging_steps": p.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": p.save_steps,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": p.eval_steps if has_eval else None,
        "bf16": autocast and precision == "bf16",
        "fp16": autocast and precision == "fp16",
        "use_cpu": not torch.cuda.is_available(),
        "gradient_checkpointing": p.gradient_checkpointing,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def make_reporting_callback(ctx: JobContext, training_id: str):
    """Per-step metrics into the database, progress and ETA, and cancel at a step boundary."""
    from transformers import TrainerCallback

    class Reporting(TrainerCallback):
        def __init__(self):
            self.step_lr: float | None = None
            self.last_time: float | None = None
            self.last_tokens = 0
            self.started = time.monotonic()
            self.start_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.start_step = state.global_step
            self.last_time = self.started
            self.last_tokens = state.num_input_tokens_seen

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            # The rate this step actually uses; the trainer logs the next step's.
            if optimizer is not None:
                self.step_lr = float(optimizer.param_groups[0]["lr"])

        def on_step_end(self, args, state, control, **kwargs):
            if ctx.cancel_requested:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if not logs or "train_loss" in logs:  # the end-of-run summary, not a step
                return
            for key in ("train_runtime", "train_tokens_per_second", "num_input_tokens_seen"):
                logs.pop(key, None)
            step = state.global_step
            is_eval = any(key.startswith("eval_") for key in logs)
            data = dict(logs)
            if not is_eval:
                now = time.monotonic()
                if self.step_lr is not None:
                    data["learning_rate"] = self.step_lr
                tokens = state.num_input_tokens_seen
                if self.last_time is not None and now > self.last_time:
                    elapsed = now - self.last_time
                    data["step_seconds"] = elapsed / args.logging_steps
                    if tokens > self.last_tokens:
                        data["tokens_per_second"] = (tokens - self.last_tokens) / elapsed
                self.last_time, self.last_tokens = now, tokens
            kind = "eval" if is_eval else "train"
            percent = 100.0 * step / max(state.max_steps, 1)
            done = step - self.start_step
            eta = (
                (time.monotonic() - self.started) / done * (state.max_steps - step)
                if done > 0
                else None
            )
            with session_scope(ctx.settings) as session:
                session.execute(
                    delete(TrainingMetric).where(
                        TrainingMetric.training_id == training_id,
                        TrainingMetric.step == step,
                        TrainingMetric.kind == kind,
                    )
                )
                session.add(
                    TrainingMetric(training_id=training_id, step=step, kind=kind, data=data)
                )
                training = session.get_one(Training, training_id)
                training.progress = min(percent, 99.0)
                training.eta_seconds = eta
            if not is_eval:
                loss = data.get("loss")
                text = f"Step {step}/{state.max_steps}"
                if loss is not None:
                    text += f" · loss {loss:.4f}"
                ctx.progress(min(percent, 99.0), text)

    return Reporting()


def forget_metrics_after(ctx: JobContext, training_id: str, step: int) -> None:
    """A resumed run logs the steps after its checkpoint again; drop the old rows."""
    with session_scope(ctx.settings) as session:
        session.execute(
            delete(TrainingMetric).where(
                TrainingMetric.training_id == training_id, TrainingMetric.step > step
            )
        )


def check_hardware(params: CommonParams) -> None:
    """Refuse the options this machine cannot run. Checked in the job, on the machine that runs
    it: the server that accepted the training may have another GPU, or none."""
    needs_gpu = params.adapter == "qlora" or params.precision == "fp16"
    if not needs_gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    if params.adapter == "qlora":
        raise Invalid(
            "QLoRA loads the base model in 4 bits, which needs a CUDA GPU; the machine running "
            "this training has none. Start it again with adapter=lora."
        )
    raise Invalid(
        "precision=fp16 needs a CUDA GPU, and the machine running this training has none. "
        "Start it again with precision bf16 or fp32."
    )


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def run_training(ctx: JobContext) -> dict[str, Any]:
    from datasets import Dataset as HFDataset
    from transformers import AutoTokenizer, set_seed

    inputs = load_inputs(ctx)
    method = inputs.method
    assert isinstance(method, TrainingMethod), "load_inputs gives a built-in method by default"
    params = inputs.params
    check_hardware(params)
    if inputs.reward_files:
        from tuneyard.training.custom import require_code_runs

        require_code_runs(ctx.settings, f"Reward file {', '.join(sorted(inputs.reward_files))}")
    set_seed(params.seed)
    ctx.progress(1, "Loading the dataset")
    records = read_records(inputs.records_path)
    rows = list(method.to_rows(records, inputs.dataset_format, params))
    random.Random(params.seed).shuffle(rows)
    if params.max_samples > 0:
        rows = rows[: params.max_samples]
    eval_count = int(len(rows) * params.eval_split)
    if params.eval_split > 0 and eval_count == 0:
        eval_count = 1
    if eval_count >= len(rows):
        raise Invalid(
            f"eval_split {params.eval_split} leaves no training records out of {len(rows)}."
        )
    train_rows, eval_rows = rows[eval_count:], rows[:eval_count]

    ctx.progress(3, "Loading the base model")
    precision, dtype, autocast = resolve_precision(params)
    tokenizer = AutoTokenizer.from_pretrained(inputs.base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(inputs, dtype)

    ctx.progress(5, "Preparing the trainer")
    trainer = method.build_trainer(
        model,
        tokenizer,
        HFDataset.from_list(train_rows),
        HFDataset.from_list(eval_rows) if eval_rows else None,
        training_arguments(inputs, precision, autocast, bool(eval_rows)),
        build_peft_config(params),
        params,
        {"reward_files": inputs.reward_files, "code_dir": scratch_dir(ctx.work_dir)},
    )
    trainer.add_callback(make_reporting_callback(ctx, inputs.training_id))
    try:
        return _train_and_keep(ctx, inputs, trainer, tokenizer, precision)
    finally:
        close_uploaded_rewards(getattr(trainer, "reward_funcs", []))
        remove_tree(scratch_dir(ctx.work_dir))


def _train_and_keep(ctx: JobContext, inputs: RunInputs, trainer, tokenizer, precision: str):
    from tuneyard.training import results

    existing = checkpoints(inputs.work_dir)
    resume_from = existing[-1] if existing else None
    if resume_from is not None:
        step = int(resume_from.name.removeprefix(CHECKPOINT_PREFIX))
        forget_metrics_after(ctx, inputs.training_id, step)
        ctx.progress(5, f"Resuming from checkpoint at step {step}")
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if ctx.cancel_requested:
        raise JobCancelled()

    ctx.progress(99, "Writing the model")
    produced = results.fresh_result_dir(inputs.work_dir)
    trainer.model.save_pretrained(produced, safe_serialization=True)
    tokenizer.save_pretrained(produced)
    outcome = results.write_result(
        ctx,
        inputs.training_id,
        produced,
        full=inputs.params.adapter == "full",
        duration=time.monotonic() - started,
        hw={**hardware(), "precision": precision},
    )
    ctx.progress(100, outcome["message"])
    return outcome
