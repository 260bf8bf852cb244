"""The training methods registry: each method is a documented parameter model, the dataset
formats it accepts, its own checks of a dataset, how records become its trainer's rows, and
how its trainer is built.

Built-ins register through `register_method`, exactly as an extension would. Nothing heavy is
imported at module level: trainer construction imports TRL inside the builder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneyard.errors import Invalid
from tuneyard.training.params import (
    CommonParams,
    DPOParams,
    GRPOParams,
    KTOParams,
    ORPOParams,
    SFTParams,
)

if TYPE_CHECKING:
    from tuneyard.models import Dataset


@dataclass(frozen=True)
class TrainingMethod:
    name: str
    title: str
    description: str
    params_model: type[CommonParams]
    formats: tuple[str, ...]  # dataset formats it trains on
    needs_chat_template: bool
    # (records, dataset format, an instance of params_model)
    to_rows: Callable[[Iterable[dict], str, Any], Iterator[dict]]
    # (model, tokenizer, train rows, eval rows, training args dict, peft config, params, extra)
    build_trainer: Callable[..., Any]
    # What the method needs of a dataset beyond its format, checked before a job exists:
    # raises Invalid saying what is missing.
    check_dataset: Callable[[Dataset, Any], None] | None = None

    def schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()


_METHODS: dict[str, TrainingMethod] = {}


def register_method(method: TrainingMethod) -> TrainingMethod:
    if method.name in _METHODS:
        raise ValueError(f"Training method '{method.name}' is registered twice.")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> TrainingMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise Invalid(
            f"Unknown training method '{name}'; choose one of: {', '.join(sorted(_METHODS))}."
        ) from None


def all_methods() -> list[TrainingMethod]:
    return [_METHODS[name] for name in sorted(_METHODS)]


# -- records -> trainer rows ----------------------------------------------------------------


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _alpaca_prompt(record: dict) -> str:
    extra = record.get("input") or ""
    return f"{record['instruction']}\n\n{extra}".strip() if extra else record["instruction"]


def sft_rows(records: Iterable[dict], fmt: str, params: SFTParams) -> Iterator[dict]:
    """Conversational prompt/completion rows, so the loss can cover only the answer."""
    for record in records:
        if fmt == "chat":
            messages = record["messages"]
            if params.completion_only_loss and messages[-1]["role"] == "assistant":
                yield {"prompt": messages[:-1], "completion": messages[-1:]}
            else:
                yield {"messages": messages}
        elif fmt == "prompt_completion":
            yield {
                "prompt": _user(record["prompt"]),
                "completion": _assistant(record["completion"]),
            }
        elif fmt == "alpaca":
            yield {
                "prompt": _user(_alpaca_prompt(record)),
                "completion": _assistant(record["output"]),
            }


def preference_rows(records: Iterable[dict], fmt: str, params: CommonParams) -> Iterator[dict]:
    for record in records:
        yield {
            "prompt": _user(record["prompt"]),
            "chosen": _assistant(record["chosen"]),
            "rejected": _assistant(record["rejected"]),
        }


def kto_rows(records: Iterable[dict], fmt: str, params: KTOParams) -> Iterator[dict]:
    """Unpaired rows: a preference pair gives one desirable and one undesirable example."""
    for record in records:
        if fmt == "preference":
            prompt = _user(record["prompt"])
            yield {"prompt": prompt, "completion": _assistant(record["chosen"]), "label": True}
            yield {"prompt": prompt, "completion": _assistant(record["rejected"]), "label": False}
        else:  # prompt_completion with a boolean `label`
            yield {
                "prompt": _user(record["prompt"]),
                "completion": _assistant(record["completion"]),
                "label": bool(record["label"]),
            }


def grpo_rows(records: Iterable[dict], fmt: str, params: GRPOParams) -> Iterator[dict]:
    for record in records:
        row: dict[str, Any] = {"prompt": _user(record["prompt"])}
        if "answer" in record:
            row["answer"] = str(record["answer"])
        yield row


# -- what a method needs of a dataset ----------------------------------------------------------


def kto_dataset_check(dataset: Dataset, params: KTOParams) -> None:
    """Unpaired prompt_completion records say which answers are desirable in `label`."""
    if dataset.format == "prompt_completion" and "label" not in (dataset.fields or []):
        raise Invalid(
            f"KTO on prompt_completion records needs a boolean 'label' field (true = desirable); "
            f"dataset '{dataset.name}' has none. Add it, or use a preference dataset."
        )


def grpo_dataset_check(dataset: Dataset, params: GRPOParams) -> None:
    """Rewards that compare with a reference answer need each record's `answer`."""
    needs_answer = {"answer_match", "numeric_match"} & set(params.rewards)
    if needs_answer and "answer" not in (dataset.fields or []):
        raise Invalid(
            f"Rewards {', '.join(sorted(needs_answer))} compare with each record's "
            f"'answer', and dataset '{dataset.name}' has no answer field."
        )


# -- trainers -------------------------------------------------------------------------------


def _sft_trainer(model, tokenizer, train, evaluation, args, peft_config, params: SFTParams, extra):
    from trl import SFTConfig

    from tuneyard.training.fast_sft import PackedSFTTrainer, padding_free_collator

    config = SFTConfig(
        **args,
        max_length=params.max_seq_length,
        completion_only_loss=params.completion_only_loss,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
    )
    collator = padding_free_collator(tokenizer.pad_token_id) if params.packing else None
    return PackedSFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
        data_collator=collator,
    )


def _trl_trainer(trainer_class, config, model, tokenizer, train, evaluation, peft_config):
    return trainer_class(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _dpo_trainer(model, tokenizer, train, evaluation, args, peft_config, params: DPOParams, extra):
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        **args, max_length=params.max_seq_length, beta=params.beta, loss_type=[params.loss_type]
    )
    return _trl_trainer(DPOTrainer, config, model, tokenizer, train, evaluation, peft_config)


def _orpo_trainer(
    model, tokenizer, train, evaluation, args, peft_config, params: ORPOParams, extra
):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    config = ORPOConfig(**args, max_length=params.max_seq_length, beta=params.beta)
    return _trl_trainer(ORPOTrainer, config, model, tokenizer, train, evaluation, peft_config)


def _kto_trainer(model, tokenizer, train, evaluation, args, peft_config, params: KTOParams, extra):
    from trl import KTOConfig, KTOTrainer

    config = KTOConfig(
        **args,
        max_length=params.max_seq_length,
        beta=params.beta,
        desirable_weight=params.desirable_weight,
        undesirable_weight=params.undesirable_weight,
    )
    return _trl_trainer(KTOTrainer, config, model, tokenizer, train, evaluation, peft_config)


def _prompts_that_fit(rows, tokenizer, params: GRPOParams):
    """Keep prompts that leave room for a full completion within max_seq_length."""
    import logging

    room = params.max_seq_length - params.max_completion_length
    kept = rows.filter(
        lambda row: (
            len(
                tokenizer.apply_chat_template(
                    row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
            <= room
        )
    )
    dropped = len(rows) - len(kept)
    if dropped:
        logging.getLogger("tuneyard.job").warning(
            "%d prompts are longer than max_seq_length - max_completion_length = %d tokens; "
            "left out",
            dropped,
            room,
        )
    if len(kept) == 0:
        raise Invalid(
            f"Every prompt is longer than max_seq_length - max_completion_length ({room} "
            "tokens); raise max_seq_length or lower max_completion_length."
        )
    return kept


def _grpo_trainer(
    model, tokenizer, train, evaluation, args, peft_config, params: GRPOParams, extra
):
    from trl import GRPOConfig, GRPOTrainer

    from tuneyard.training.rewards import build_reward_functions

    train = _prompts_that_fit(train, tokenizer, params)
    if evaluation is not None:
        evaluation = _prompts_that_fit(evaluation, tokenizer, params)
    config = GRPOConfig(
        **args,
        num_generations=params.num_generations,
        max_completion_length=params.max_completion_length,
        temperature=params.temperature,
        beta=params.beta,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=list(
            build_reward_functions(params, extra.get("reward_files", {}), extra["code_dir"])
        ),
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


register_method(
    TrainingMethod(
        name="sft",
        title="Supervised fine-tuning",
        description="Learn to answer like the examples: chat, prompt/completion or alpaca.",
        params_model=SFTParams,
        formats=("chat", "prompt_completion", "alpaca"),
        needs_chat_template=True,
        to_rows=sft_rows,
        build_trainer=_sft_trainer,
    )
)
register_method(
    TrainingMethod(
        name="dpo",
        title="Direct preference optimisation",
        description="Prefer the chosen answer over the rejected one, against a reference.",
        params_model=DPOParams,
        formats=("preference",),
        needs_chat_template=True,
        to_rows=preference_rows,
        build_trainer=_dpo_trainer,
    )
)
register_method(
    TrainingMethod(
        name="orpo",
        title="Odds-ratio preference optimisation",
        description="SFT on the chosen answer and a preference term, without a reference.",
        params_model=ORPOParams,
        formats=("preference",),
        needs_chat_template=True,
        to_rows=preference_rows,
        build_trainer=_orpo_trainer,
    )
)
register_method(
    TrainingMethod(
        name="kto",
        title="Kahneman-Tversky optimisation",
        description="Learn from answers marked desirable or undesirable (pairs not needed).",
        params_model=KTOParams,
        formats=("preference", "prompt_completion"),
        needs_chat_template=True,
        to_rows=kto_rows,
        build_trainer=_kto_trainer,
        check_dataset=kto_dataset_check,
    )
)
register_method(
    TrainingMethod(
        name="grpo",
        title="Group relative policy optimisation",
        description="Sample several answers per prompt, score them with rewards, reinforce.",
        params_model=GRPOParams,
        formats=("prompt_only",),
        needs_chat_template=True,
        to_rows=grpo_rows,
        build_trainer=_grpo_trainer,
        check_dataset=grpo_dataset_check,
    )
)
