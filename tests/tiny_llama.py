"""The tiny llama the tests and the benchmarks train: 2 layers with random weights (seeded) and
SmolLM2's tokenizer, so that a training step takes milliseconds and chat templates are real."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(out: Path, tokenizer) -> Path:
    """Write the tiny llama with `tokenizer` into `out`, as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
