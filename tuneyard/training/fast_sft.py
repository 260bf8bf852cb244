"""A faster SFT path for the same loss: padding-free batches, and the LM head applied only
at the positions whose next token is learned.

Plain SFT pads every batch to its longest record and computes vocabulary logits for every
position, prompt and padding included. Here a batch is one row of the records laid end to
end (position ids restart per record, and the model keeps attention inside each record), and
the output projection, the largest single matrix in a small model, runs only where a label
exists. The loss is the same token-mean cross-entropy over completion tokens.

Padded batches are right-padded, so under causal attention no real token can see a pad: the
attention mask changes nothing at the positions that carry a label. Leaving it out lets the
attention kernel take its fast causal path instead of the general masked one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

BACKBONE_INPUTS = ("input_ids", "position_ids")


def padding_free_collator(pad_token_id: int) -> DataCollatorForLanguageModeling:
    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)


def causal_lm_of(model):
    """The transformers causal LM inside a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def selective_lm_loss(model, inputs, num_items_in_batch=None) -> torch.Tensor:
    causal_lm = causal_lm_of(model)
    backbone = causal_lm.get_decoder()
    head = causal_lm.get_output_embeddings()
    hidden = backbone(
        **{k: inputs[k] for k in BACKBONE_INPUTS if k in inputs}, use_cache=False
    ).last_hidden_state
    targets = inputs["labels"][:, 1:]
    learned = targets != -100
    logits = head(hidden[:, :-1][learned]).float()
    total = F.cross_entropy(logits, targets[learned], reduction="sum")
    count = learned.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


class PackedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss skips padding and the LM head where nothing is learned."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = selective_lm_loss(model, inputs, num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = selective_lm_loss(model, inputs)
        return loss.detach(), None, None
