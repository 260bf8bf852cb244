"""The padding-free, selective-head SFT loss equals the padded full-logits loss."""

from __future__ import annotations

import pytest
import torch

# Computation alone: runs once, on SQLite's run; the database is out of reach.
pytestmark = pytest.mark.nodb


def test_packed_loss_and_gradients_match_padded(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tuneyard.training.fast_sft import padding_free_collator, selective_lm_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = []
    for length, prompt in ((9, 4), (5, 2), (12, 7)):
        ids = torch.randint(10, 1000, (length,)).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})

    packed = padding_free_collator(pad_token_id=0)(examples)
    assert packed["input_ids"].shape == (1, 26)  # no padding at all
    packed_loss = selective_lm_loss(model, packed)
    packed_loss.backward()
    packed_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()

    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.zeros(3, width, dtype=torch.long)
    attention = torch.zeros(3, width, dtype=torch.long)
    labels = torch.full((3, width), -100)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(example["labels"])
    padded_loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    padded_loss.backward()
    padded_grad = model.model.layers[0].mlp.up_proj.weight.grad

    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-4, atol=1e-6)


def test_right_padded_batch_without_mask_gives_the_same_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tuneyard.training.fast_sft import selective_lm_loss

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = []
    for length, prompt in ((9, 4), (5, 2), (12, 7)):
        ids = torch.randint(10, 1000, (length,)).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    batch = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # there is padding
    masked = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    torch.testing.assert_close(selective_lm_loss(model, batch), masked, rtol=1e-5, atol=1e-5)
