"""SFT throughput: Tuneyard's training job against plain TRL SFTTrainer + PEFT.

Both train the same LoRA (r=8, alpha=16, all linear layers) on SmolLM2-135M-Instruct with the
same records, batch size, learning rate and number of steps, each in its own process, one
after the other. The baseline keeps every other TRL default (padded batches; TRL's default
bf16 autocast). Tuneyard runs its real path: a base model registered, a dataset uploaded and
parsed, a training job run by the executor, with its default parameters. Throughput is
non-padding tokens per second of wall time over the steps after the first (warm-up).

    python benchmarks/train_throughput.py [--steps 8] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the",
    "model",
    "answer",
    "question",
    "customer",
    "order",
    "invoice",
    "delivery",
    "refund",
    "account",
    "password",
    "server",
    "network",
    "error",
    "please",
    "thanks",
    "help",
    "update",
    "install",
    "configure",
    "restart",
    "backup",
    "data",
    "report",
    "weekly",
    "monthly",
    "policy",
    "contract",
    "warranty",
    "shipping",
    "address",
    "payment",
    "card",
    "bank",
    "support",
    "ticket",
    "issue",
    "resolved",
    "pending",
    "urgent",
    "schedule",
    "meeting",
    "team",
    "manager",
    "review",
)
LORA = {"lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_records(count: int, seed: int = 0) -> list[dict]:
    """Short support chats of varied length, like a typical fine-tuning set."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        question = sentence(rng, rng.randint(6, 40))
        answer = " ".join(sentence(rng, rng.randint(5, 18)) for _ in range(rng.randint(1, 8)))
        records.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return records


def run_baseline(model_dir: str, data: str, steps: int, batch: int, lr: float, out: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = []
    for line in Path(data).read_text().splitlines():
        messages = json.loads(line)["messages"]
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    timing: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1 and "start" not in timing:
                timing["start"], timing["tokens0"] = time.monotonic(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            timing["end"], timing["tokens"] = time.monotonic(), state.num_input_tokens_seen

    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(
            r=LORA["lora_rank"],
            lora_alpha=LORA["lora_alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[Clock()],
    )
    trainer.train()
    trainer.save_model(out)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    seconds = timing["end"] - timing["start"]
    return {
        "tokens_per_second": (timing["tokens"] - timing["tokens0"]) / seconds,
        "seconds": seconds,
        "losses": losses,
        "bf16": config.bf16,
        "adapter": out,
    }


def run_tuneyard(model_dir: str, data: str, steps: int, batch: int, lr: float, out: str) -> dict:
    os.environ["TUNEYARD_DATA_DIR"] = tempfile.mkdtemp(prefix="tuneyard-bench-")
    from tuneyard.api import prepare
    from tuneyard.auth.service import local_principal
    from tuneyard.basemodels.service import register_path
    from tuneyard.datasets.service import create_dataset
    from tuneyard.db import session_scope
    from tuneyard.jobs.executor import Executor
    from tuneyard.models import CustomizedModel, Training, TrainingMetric
    from tuneyard.training.service import start_training

    prepare(announce=lambda _text: None)
    executor = Executor()
    with session_scope() as session:
        principal = local_principal(session)
        base = register_path(session, principal, technical_name="smollm2", path=model_dir)
        with open(data, "rb") as handle:
            dataset, parse = create_dataset(
                session, principal, name="chats", filename="chats.jsonl", content=handle
            )
        parse_job = parse.id
    assert executor.run_until_finished(parse_job).status == "succeeded"
    params = {**LORA, "max_steps": steps, "batch_size": batch, "grad_accum_steps": 1}
    params.update(learning_rate=lr, save_steps=10_000)
    with session_scope() as session:
        training = start_training(
            session,
            principal,
            name="bench",
            method="sft",
            base_model_id=base.id,
            dataset_id=dataset.id,
            params=params,
        )
        training_id, job_id = training.id, training.job_id
    job = executor.run_until_finished(job_id)
    assert job.status == "succeeded", job.error
    with session_scope() as session:
        rows = session.query(TrainingMetric).filter_by(training_id=training_id, kind="train")
        metrics = sorted((r.step, r.data) for r in rows)
        model_id = session.get(Training, training_id).customized_model_id
        adapter = session.get(CustomizedModel, model_id).path
    timed = [d for step, d in metrics if step > 1 and "tokens_per_second" in d]
    seconds = sum(d["step_seconds"] for d in timed)
    tokens = sum(d["tokens_per_second"] * d["step_seconds"] for d in timed)
    return {
        "tokens_per_second": tokens / seconds,
        "seconds": seconds,
        "losses": [d["loss"] for _, d in metrics if "loss" in d],
        "adapter": adapter,
    }


HELD_OUT = 32


def held_out_loss(model_dir: Path, adapter: str | None, records: list[dict]) -> float:
    """Mean answer-token loss in fp32 on records neither run trained on: the fair comparison
    (per-step training losses depend on which records each batch happened to hold)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for record in records:
            messages = record["messages"]
            prompt = tokenizer.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            ids = torch.tensor([full])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            answer_tokens = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * answer_tokens
            count += answer_tokens
    return total / count


def child(args) -> None:
    runner = run_baseline if args.run == "baseline" else run_tuneyard
    result = runner(
        args.model, args.data, args.steps, args.batch_size, args.learning_rate, args.out
    )
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--run", choices=["baseline", "tuneyard"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args)
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from _models import smollm2_folder

    model = smollm2_folder()
    work = Path(tempfile.mkdtemp())
    data = work / "chats.jsonl"
    records = make_records(args.records + HELD_OUT)
    data.write_text("\n".join(json.dumps(r) for r in records[HELD_OUT:]))
    results = {}
    for name in ("baseline", "tuneyard"):
        print(f"Running {name} ({args.steps} steps of {args.batch_size} records)...", flush=True)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--run",
                name,
                "--model",
                str(model),
                "--data",
                str(data),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--learning-rate",
                str(args.learning_rate),
                "--out",
                str(work / f"{name}-adapter"),
            ],
            capture_output=True,
            text=True,
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[name] = json.loads(lines[-1].removeprefix("RESULT "))

    base, ours = results["baseline"], results["tuneyard"]
    print(f"Scoring both adapters on {HELD_OUT} held-out records...", flush=True)
    held_out = records[:HELD_OUT]
    untrained = held_out_loss(model, None, held_out)
    base["held_out"] = held_out_loss(model, base["adapter"], held_out)
    ours["held_out"] = held_out_loss(model, ours["adapter"], held_out)
    print()
    print(f"{'':24}{'TRL + PEFT':>14}{'Tuneyard':>14}")
    print(f"{'tokens/s':24}{base['tokens_per_second']:14.1f}{ours['tokens_per_second']:14.1f}")
    print(f"{'first loss':24}{base['losses'][0]:14.4f}{ours['losses'][0]:14.4f}")
    print(f"{'final loss':24}{base['losses'][-1]:14.4f}{ours['losses'][-1]:14.4f}")
    mean_base = sum(base["losses"]) / len(base["losses"])
    mean_ours = sum(ours["losses"]) / len(ours["losses"])
    print(f"{'mean train loss':24}{mean_base:14.4f}{mean_ours:14.4f}")
    print(f"{'held-out loss':24}{base['held_out']:14.4f}{ours['held_out']:14.4f}")
    print(f"(held-out loss of the untrained model: {untrained:.4f})")
    ratio = ours["tokens_per_second"] / base["tokens_per_second"]
    print(f"throughput ratio (Tuneyard / baseline): {ratio:.2f}x")


if __name__ == "__main__":
    main()
