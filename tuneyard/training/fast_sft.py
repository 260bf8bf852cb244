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
from torch.nn.parallel import DistributedDataParallel
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

BACKBONE_INPUTS = ("input_ids", "position_ids")


def padding_free_collator(pad_token_id: int) -> DataCollatorForLanguageModeling:
    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)


def causal_lm_of(model):
    """The transformers causal LM inside a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def selective_lm_loss(model, inputs, num_items_in_batch=None) -> torch.Tensor:
    targets = inputs["labels"][:, 1:]
    learned = targets != -100
    backbone_inputs = {k: inputs[k] for k in BACKBONE_INPUTS if k in inputs}
    if isinstance(model, DistributedDataParallel):
        # Data-parallel, the forward must go through the wrapper, which averages the workers'
        # gradients; the model's own head then runs at the positions where any row learns.
        positions = learned.any(dim=0).nonzero().squeeze(1)
        logits = model(**backbone_inputs, use_cache=False, logits_to_keep=positions).logits
        kept = targets[:, positions]
        logits, wanted = logits[kept != -100].float(), kept[kept != -100]
    else:
        causal_lm = causal_lm_of(model)
        hidden = causal_lm.get_decoder()(**backbone_inputs, use_cache=False).last_hidden_state
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][learned]).float()
        wanted = targets[learned]
    total = F.cross_entropy(logits, wanted, reduction="sum")
    count = learned.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


class PackedSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss skips padding and the LM head where nothing is learned."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = selective_lm_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # Data-parallel, num_items_in_batch counts every worker's tokens and DDP averages
            # the workers' gradients: scale back, as Trainer.compute_loss does, so that a
            # step's loss is the mean over all of its tokens.
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = selective_lm_loss(model, inputs)
        return loss.detach(), None, None
