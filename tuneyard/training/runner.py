"""The training job body: load base model and records, build the method's trainer, report
every step, checkpoint, stop on cancel, resume from the last checkpoint, and write the result.

With `workers` > 1 the job process starts that many worker processes (tuneyard.training.rank,
through torch.distributed.run) that each run the same trainer data-parallel; worker 0 alone
reports, checkpoints and writes the model, and the job process records the result.

Runs inside a job process; this is the only training module that imports torch and TRL.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable
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
    with session_scope(ctx.settings) as session:
        inputs = read_inputs(session, ctx, method_of)
        training = session.get_one(Training, inputs.training_id)
        training.status = "running"
        training.job_id = ctx.job_id
        training.error = None
        training.started_at = training.started_at or utcnow()
        training.finished_at = None
        return inputs


def read_inputs(session, ctx: JobContext, method_of=None) -> RunInputs:
    """What a run needs of its training, base model and dataset, writing nothing."""
    training = session.get_one(Training, ctx.params["training_id"])
    base = session.get(BaseModel, training.base_model_id) if training.base_model_id else None
    dataset = session.get(Dataset, training.dataset_id) if training.dataset_id else None
    # A ready base model has its folder, and a ready dataset its format.
    if base is None or base.status != "ready" or base.path is None:
        raise Invalid("The base model of this training was deleted or is not ready.")
    if dataset is None or dataset.status != "ready" or dataset.format is None:
        raise Invalid("The dataset of this training was deleted or is not ready.")
    method = method_of(session, training) if method_of else get_method(training.method)
    return RunInputs(
        training_id=training.id,
        project_id=training.project_id,
        name=training.name,
        method=method,
        params=method.params_model.model_validate(training.params),
        base_path=ctx.layout.local(base.path),
        base_name=base.technical_name,
        base_model_id=base.id,
        dataset_name=dataset.name,
        dataset_digest=dataset.digest,
        dataset_format=dataset.format,
        records_path=records_path(dataset, ctx.layout),
        work_dir=ctx.layout.training_dir(training.id),
        reward_files={
            name: str(ctx.layout.local(path))
            for name, path in (ctx.params.get("reward_files") or {}).items()
        },
    )


def read_records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def cpu_supports_bf16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(params: CommonParams, on_gpu: bool) -> tuple[str, Any, bool]:
    """(precision, dtype to load the base model in, whether to autocast).

    With an adapter in bf16 the frozen base is stored in bf16 and the adapter stays fp32: on
    a CPU with bf16 instructions that made matmuls several times faster, where autocast (fp32
    weights cast on every call) was slower than plain fp32. A full fine-tune keeps fp32
    weights (bf16 weights would lose small updates) and autocasts instead.
    """
    import torch

    choice = params.precision
    if choice == "auto":
        bf16_ok = torch.cuda.is_bf16_supported() if on_gpu else cpu_supports_bf16()
        choice = "bf16" if bf16_ok else "fp32"
    if choice == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise Invalid("This GPU does not support bf16; use fp16 or fp32.")
    if choice == "fp32" or params.adapter == "full":
        return choice, torch.float32, choice != "fp32"
    half = torch.bfloat16 if choice == "bf16" else torch.float16
    return choice, half, on_gpu


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
    inputs: RunInputs, precision: str, autocast: bool, has_eval: bool, on_gpu: bool
) -> dict[str, Any]:
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
        "use_cpu": not on_gpu,
        "ddp_backend": ("nccl" if on_gpu else "gloo") if p.workers > 1 else None,
        "gradient_checkpointing": p.gradient_checkpointing,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def make_reporting_callback(ctx: JobContext, training_id: str):
    """Per-step metrics into the database, progress and ETA."""
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


def make_cancel_callback(requested: Callable[[], bool], data_parallel: bool):
    """Stop at a step boundary, with a checkpoint, once `requested()` says so. Data-parallel,
    every worker asks worker 0 (its `requested`) at each step, so all stop at the same one."""
    from transformers import TrainerCallback

    class StopOnCancel(TrainerCallback):
        stopped = False

        def on_step_end(self, args, state, control, **kwargs):
            wanted = requested()
            if data_parallel:
                import torch
                import torch.distributed as dist

                flag = torch.tensor([1.0 if wanted else 0.0], device=args.device)
                dist.broadcast(flag, src=0)
                wanted = bool(flag.item())
            if wanted:
                self.stopped = True
                control.should_save = True
                control.should_training_stop = True

    return StopOnCancel()


def forget_metrics_after(ctx: JobContext, training_id: str, step: int) -> None:
    """A resumed run logs the steps after its checkpoint again; drop the old rows."""
    with session_scope(ctx.settings) as session:
        session.execute(
            delete(TrainingMetric).where(
                TrainingMetric.training_id == training_id, TrainingMetric.step > step
            )
        )


def check_hardware(params: CommonParams, workers_here: int | None = None) -> int:
    """Refuse the options this machine cannot run, and say how many GPUs each worker trains on
    (`gpus_per_worker`, or for -1: 1 where there is a CUDA GPU, else 0). Checked in the job, on
    the machine that runs it: the server that accepted the training may have another GPU, or
    none. `workers_here` is how many workers train on this machine's GPUs: all of them by
    default; 1 in a worker on a cluster, 0 in a job whose workers run on a cluster."""
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = params.gpus_per_worker if params.gpus_per_worker >= 0 else min(found, 1)
    if params.adapter == "qlora" and not gpus:
        if found:
            raise Invalid(
                "QLoRA loads the base model in 4 bits, which needs a CUDA GPU, and "
                "gpus_per_worker is 0. Start it again with gpus_per_worker=1 or adapter=lora."
            )
        raise Invalid(
            "QLoRA loads the base model in 4 bits, which needs a CUDA GPU; the machine running "
            "this training has none. Start it again with adapter=lora."
        )
    if params.precision == "fp16" and not gpus:
        if found:
            raise Invalid(
                "precision=fp16 needs a GPU, and gpus_per_worker is 0. Start it again with "
                "gpus_per_worker=1, or precision bf16 or fp32."
            )
        raise Invalid(
            "precision=fp16 needs a CUDA GPU, and the machine running this training has none. "
            "Start it again with precision bf16 or fp32."
        )
    here = params.workers if workers_here is None else workers_here
    if here * gpus > found:
        asked = f"workers={params.workers} x " if here == params.workers else ""
        raise Invalid(
            f"{asked}gpus_per_worker={gpus} needs {here * gpus} GPUs, and the machine running "
            f"this training has {found} visible. Start it again with fewer workers or GPUs per "
            "worker, or gpus_per_worker=0 to train on the CPU."
        )
    if params.workers > 1 and gpus > 1:
        raise Invalid(
            "Each worker process trains on one GPU: set gpus_per_worker to 1 and workers to "
            f"the number of GPUs to train on (up to {found} here)."
        )
    return gpus


def hardware(on_gpu: bool | None = None) -> dict[str, Any]:
    import torch

    if on_gpu is None:
        on_gpu = torch.cuda.is_available()
    info: dict[str, Any] = {
        "device": "cuda" if on_gpu else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
    if on_gpu:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def data_parallel_summary(params: CommonParams, gpus: int) -> dict[str, Any]:
    """How the run was spread: its workers, their devices, and the records per optimiser step."""
    return {
        "workers": params.workers,
        "gpus_per_worker": gpus,
        "effective_batch_size": params.batch_size * params.workers * params.grad_accum_steps,
    }


def prepare_trainer(
    inputs: RunInputs, on_gpu: bool, say: Callable[[float, str], None], code_dir: Path
) -> tuple[Any, Any, str]:
    """The method's trainer on the run's records and base model: (trainer, tokenizer,
    precision). Every data-parallel worker builds the same one (same seed, same records, same
    order); the trainer gives each its share of every step."""
    from datasets import Dataset as HFDataset
    from transformers import AutoTokenizer, set_seed

    method = inputs.method
    assert isinstance(method, TrainingMethod), "built-in methods only"
    params = inputs.params
    set_seed(params.seed)
    say(1, "Loading the dataset")
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

    say(3, "Loading the base model")
    precision, dtype, autocast = resolve_precision(params, on_gpu)
    tokenizer = AutoTokenizer.from_pretrained(inputs.base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(inputs, dtype)

    say(5, "Preparing the trainer")
    trainer = method.build_trainer(
        model,
        tokenizer,
        HFDataset.from_list(train_rows),
        HFDataset.from_list(eval_rows) if eval_rows else None,
        training_arguments(inputs, precision, autocast, bool(eval_rows), on_gpu),
        build_peft_config(params),
        params,
        {"reward_files": inputs.reward_files, "code_dir": code_dir},
    )
    return trainer, tokenizer, precision


def refuse_without_data_dir(workers: int) -> None:
    """On a cluster node that shares no disk with the API (an artifact store carries the job's
    folders and files), refuse what would need more: the workers of a data-parallel run read
    and write on other nodes, whose data dirs nothing fills or brings home."""
    if workers > 1:
        raise Invalid(
            "A data-parallel training (workers > 1) cannot run on a Ray cluster with an artifact "
            "store (TUNEYARD_ARTIFACT_STORE): its workers' files would stay on their nodes. Start "
            "it with workers 1, or on a cluster that shares the data dir."
        )


def run_training(ctx: JobContext) -> dict[str, Any]:
    inputs = load_inputs(ctx)
    assert isinstance(inputs.method, TrainingMethod), "load_inputs gives a built-in by default"
    params = inputs.params
    if ctx.settings.api_data_dir is not None:
        refuse_without_data_dir(params.workers)
    on_cluster = params.workers > 1 and ctx.settings.executor == "ray"
    gpus = check_hardware(params, 0 if on_cluster else None)
    if inputs.reward_files:
        from tuneyard.training.custom import require_code_runs

        require_code_runs(ctx.settings, f"Reward file {', '.join(sorted(inputs.reward_files))}")
    if params.workers > 1:
        return _train_data_parallel(ctx, inputs, gpus)
    trainer = None
    try:
        trainer, tokenizer, precision = prepare_trainer(
            inputs, gpus > 0, ctx.progress, scratch_dir(ctx.work_dir)
        )
        trainer.add_callback(make_reporting_callback(ctx, inputs.training_id))
        trainer.add_callback(make_cancel_callback(lambda: ctx.cancel_requested, False))
        return _train_and_keep(ctx, inputs, trainer, tokenizer, precision, gpus)
    finally:
        close_uploaded_rewards(getattr(trainer, "reward_funcs", []))
        remove_tree(scratch_dir(ctx.work_dir))


def _resume_point(ctx: JobContext, inputs: RunInputs) -> Path | None:
    """The last checkpoint, if any; the metrics logged after it are dropped (logged again)."""
    existing = checkpoints(inputs.work_dir)
    if not existing:
        return None
    step = int(existing[-1].name.removeprefix(CHECKPOINT_PREFIX))
    forget_metrics_after(ctx, inputs.training_id, step)
    ctx.progress(5, f"Resuming from checkpoint at step {step}")
    return existing[-1]


def save_model(trainer, tokenizer, work_dir: Path) -> Path:
    """The trained model (adapter or whole model) with its tokenizer, in the result folder."""
    from tuneyard.training import results

    produced = results.fresh_result_dir(work_dir)
    trainer.model.save_pretrained(produced, safe_serialization=True)
    tokenizer.save_pretrained(produced)
    return produced


def _train_and_keep(
    ctx: JobContext, inputs: RunInputs, trainer, tokenizer, precision: str, gpus: int
):
    from tuneyard.training import results

    resume_from = _resume_point(ctx, inputs)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if ctx.cancel_requested:
        raise JobCancelled()

    ctx.progress(99, "Writing the model")
    produced = save_model(trainer, tokenizer, inputs.work_dir)
    outcome = results.write_result(
        ctx,
        inputs.training_id,
        produced,
        full=inputs.params.adapter == "full",
        duration=time.monotonic() - started,
        hw={
            **hardware(gpus > 0),
            "precision": precision,
            **data_parallel_summary(inputs.params, gpus),
        },
    )
    ctx.progress(100, outcome["message"])
    return outcome


def _train_data_parallel(ctx: JobContext, inputs: RunInputs, gpus: int) -> dict[str, Any]:
    """Run the trainer in `workers` processes and record what worker 0 wrote."""
    from tuneyard.training import results
    from tuneyard.training.launch import run_workers

    params = inputs.params
    precision, _, _ = resolve_precision(params, gpus > 0)
    resume_from = _resume_point(ctx, inputs)
    remove_tree(results.result_dir(inputs.work_dir))
    ctx.progress(
        5,
        f"Starting {params.workers} workers on "
        f"{'a GPU each' if gpus else 'the CPU'} (effective batch "
        f"{data_parallel_summary(params, gpus)['effective_batch_size']})",
    )
    started = time.monotonic()
    args = [str(resume_from)] if resume_from else []
    if ctx.settings.executor == "ray":
        from tuneyard.training.ray_train import run_workers_on_ray

        run_workers_on_ray(ctx, params.workers, gpus, WORKER_MODULE, args)
    else:
        run_workers(ctx, params.workers, WORKER_MODULE, args)
    if ctx.cancel_requested:
        raise JobCancelled()
    produced = results.result_dir(inputs.work_dir)
    if not produced.is_dir():
        raise RuntimeError("The workers ended without writing the model; see the job's log.")
    outcome = results.write_result(
        ctx,
        inputs.training_id,
        produced,
        full=params.adapter == "full",
        duration=time.monotonic() - started,
        hw={**hardware(gpus > 0), "precision": precision, **data_parallel_summary(params, gpus)},
    )
    ctx.progress(100, outcome["message"])
    return outcome


# The module each data-parallel worker runs (`python -m`); it calls train_as_worker.
WORKER_MODULE = "tuneyard.training.rank"


def train_as_worker(ctx: JobContext, rank: int, resume_from: str | None) -> None:
    """One worker of a data-parallel run. Worker 0 alone reports progress and metrics, reads
    the cancel request, and writes checkpoints and the model; the others only train."""
    from tuneyard.training.launch import cancel_flag

    with session_scope(ctx.settings) as session:
        inputs = read_inputs(session, ctx)
    lead = rank == 0
    gpus = check_hardware(inputs.params, 1 if ctx.settings.executor == "ray" else None)
    trainer, tokenizer, _ = prepare_trainer(
        inputs,
        gpus > 0,
        ctx.progress if lead else lambda _percent, _message: None,
        scratch_dir(ctx.work_dir) / f"worker-{rank}",
    )
    if lead:
        trainer.add_callback(make_reporting_callback(ctx, inputs.training_id))
    flag = cancel_flag(ctx.work_dir)
    stop = make_cancel_callback(lambda: lead and flag.exists(), True)
    trainer.add_callback(stop)
    trainer.train(resume_from_checkpoint=resume_from)
    if lead and not stop.stopped:
        ctx.progress(99, "Writing the model")
        save_model(trainer, tokenizer, inputs.work_dir)
