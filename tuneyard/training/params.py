"""Training parameters: one documented pydantic model per method, refusing unknown fields.

Every field here is read by the runner; nothing is accepted and ignored.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneyard.bounds import INT32_MAX, SEED_MAX

MAX_WORKERS = 64
# A worker process trains on one device; a cluster executor may reserve more per worker.
MAX_GPUS_PER_WORKER = 8


class CommonParams(BaseModel):
    """Parameters every method shares: the loop, the optimiser, data and the adapter."""

    # Why a method trains in one process only; None when it can train data-parallel.
    single_process_reason: ClassVar[str | None] = None

    # JSON from Python's parser may hold NaN and Infinity; no parameter means them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # the loop
    epochs: float = Field(1.0, gt=0, le=100, description="Passes over the training records.")
    max_steps: int = Field(
        -1,
        ge=-1,
        le=INT32_MAX,
        description="Stop after this many optimiser steps; -1 runs the epochs.",
    )
    batch_size: int = Field(
        2,
        ge=1,
        le=1024,
        description="Records per worker per batch. One optimiser step sees batch_size x "
        "workers x grad_accum_steps records (the effective batch).",
    )
    grad_accum_steps: int = Field(
        2, ge=1, le=1024, description="Batches accumulated into one optimiser step."
    )
    # data parallel
    workers: int = Field(
        1,
        ge=1,
        le=MAX_WORKERS,
        description="Worker processes training data-parallel: each holds a copy of the model, "
        "trains on its share of every step's records, and the gradients are averaged. 1 trains "
        "in the job's own process.",
    )
    gpus_per_worker: int = Field(
        -1,
        ge=-1,
        le=MAX_GPUS_PER_WORKER,
        description="GPUs each worker trains on: 0 trains on the CPU, 1 on a GPU of its own; "
        "-1: 1 on a machine with a CUDA GPU, else 0. The machine running the training needs "
        "workers x gpus_per_worker GPUs.",
    )
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"
    ] = Field("linear", description="How the learning rate changes over the run.")
    warmup_steps: int = Field(
        0, ge=0, le=INT32_MAX, description="Steps of linear warm-up (wins over ratio)."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warm-up as a share of all steps.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(
        42, ge=0, le=SEED_MAX, description="Seed for shuffling, splits and initialisation."
    )
    # data
    max_seq_length: int = Field(
        1024, ge=16, le=131072, description="Tokens per record; longer records are truncated."
    )
    max_samples: int = Field(
        -1, ge=-1, le=INT32_MAX, description="Use at most this many records; -1 uses them all."
    )
    eval_split: float = Field(
        0.0, ge=0, lt=1, description="Share of records held out for evaluation loss."
    )
    eval_steps: int = Field(
        50, ge=1, le=INT32_MAX, description="Evaluate every N steps when eval_split > 0."
    )
    save_steps: int = Field(50, ge=1, le=INT32_MAX, description="Write a checkpoint every N steps.")
    logging_steps: int = Field(1, ge=1, le=INT32_MAX, description="Record metrics every N steps.")
    # numerics
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 where the hardware supports it (a GPU with bf16, or a CPU "
        "with AVX-512 bf16 or AMX), else fp32. With an adapter, bf16 keeps the frozen base "
        "weights in bf16 and the adapter in fp32. fp16 needs a GPU.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory."
    )
    # the adapter
    adapter: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora: low-rank adapter; qlora: LoRA on a 4-bit base (CUDA GPU only); "
        "full: train every weight (the result is a complete model).",
    )
    lora_rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear."
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling alpha/sqrt(r).")

    @model_validator(mode="after")
    def _adapter_switches(self):
        if self.workers > 1 and self.single_process_reason:
            raise ValueError(f"workers must be 1: {self.single_process_reason}")
        if self.adapter == "full" and (self.use_dora or self.use_rslora):
            raise ValueError("use_dora and use_rslora apply to LoRA adapters, not adapter=full")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is empty; give module names or 'all-linear'")
        return self


class SFTParams(CommonParams):
    """Supervised fine-tuning on chat, prompt/completion or alpaca records."""

    completion_only_loss: bool = Field(
        True, description="Learn only the answer tokens, not the prompt."
    )
    group_by_length: bool = Field(
        True,
        description="Batch records of similar length together, so little compute goes to "
        "padding (the order within an epoch is still shuffled by groups).",
    )
    packing: bool = Field(
        False,
        description="Padding-free batches: a batch's records laid end to end in one row, "
        "attention kept inside each record. Best with FlashAttention on a GPU; on a CPU the "
        "masked attention costs more than the padding it saves.",
    )


class DPOParams(CommonParams):
    """Direct preference optimisation on prompt/chosen/rejected records."""

    learning_rate: float = Field(5e-5, gt=0, le=1, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, le=10, description="Strength of the pull to the reference.")
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust"] = Field(
        "sigmoid", description="The DPO loss variant."
    )


class ORPOParams(CommonParams):
    """Odds-ratio preference optimisation: SFT and preference in one loss, no reference."""

    learning_rate: float = Field(8e-6, gt=0, le=1, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, le=10, description="Weight of the odds-ratio term.")


class KTOParams(CommonParams):
    """Kahneman-Tversky optimisation on desirable/undesirable completions."""

    learning_rate: float = Field(5e-5, gt=0, le=1, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, le=10, description="Strength of the pull to the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of desirable examples.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of undesirable examples.")


BUILTIN_REWARDS = ("answer_match", "numeric_match", "format_regex", "length_penalty")
REWARD_FILE_PREFIX = "file:"
# A reward file's name: it becomes a file name, so nothing that could leave its folder.
REWARD_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REWARD_NAME_RULE = "1-64 letters, digits, '_' or '-'"


class GRPOParams(CommonParams):
    """Group relative policy optimisation: sample completions, score them, reinforce."""

    single_process_reason: ClassVar[str | None] = (
        "GRPO samples and scores its groups of completions in one process; data-parallel "
        "GRPO is not supported"
    )

    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak learning rate.")
    num_generations: int = Field(
        4, ge=2, le=64, description="Completions sampled per prompt (the group)."
    )
    max_completion_length: int = Field(
        128, ge=1, le=8192, description="Longest sampled completion, in tokens."
    )
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature.")
    beta: float = Field(0.0, ge=0, le=10, description="KL penalty to the reference (0 = none).")
    rewards: list[str] = Field(
        ["answer_match"],
        description=f"Reward functions: built-ins {', '.join(BUILTIN_REWARDS)}, or "
        "'file:<name>' for an uploaded reward file.",
    )
    format_regex: str = Field(
        r"(?s).*\S.*", description="Pattern a completion must fully match for format_regex."
    )
    length_target: int = Field(
        64,
        ge=1,
        le=INT32_MAX,
        description="Completions longer than this many characters lose reward.",
    )

    @model_validator(mode="after")
    def _grpo_rules(self):
        if not self.rewards:
            raise ValueError("give at least one reward function")
        if self.max_completion_length >= self.max_seq_length:
            raise ValueError(
                "max_completion_length must be below max_seq_length (prompt and completion "
                "share it)"
            )
        for name in self.rewards:
            if name in BUILTIN_REWARDS:
                continue
            if not name.startswith(REWARD_FILE_PREFIX):
                raise ValueError(
                    f"unknown reward '{name}'; use {', '.join(BUILTIN_REWARDS)} or 'file:<name>'"
                )
            if not REWARD_NAME_RE.fullmatch(name.removeprefix(REWARD_FILE_PREFIX)):
                raise ValueError(
                    f"'{name}' does not name a reward file: a reward file's name is "
                    f"{REWARD_NAME_RULE} (see GET /api/v1/reward-files)"
                )
        if (self.batch_size * self.grad_accum_steps) % self.num_generations:
            raise ValueError(
                "batch_size x grad_accum_steps must be a multiple of num_generations "
                f"({self.batch_size} x {self.grad_accum_steps} vs {self.num_generations})"
            )
        return self
