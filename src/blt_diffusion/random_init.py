"""Randomly initialised BLT models that behave like trained ones where it matters for testing and benchmarking.

A freshly initialised BLT has two problems. Its patcher predicts near-uniform bytes, so every entropy exceeds any
sensible threshold and every byte becomes its own patch; and its logits are so flat that argmaxes are near-ties
that two correct implementations can break differently. `calibrate_random_model` sharpens both and sets the
patching threshold from the patcher's own entropies so that patches have a chosen mean length.
"""

import torch
from transformers import BltConfig, BltForCausalLM

SUB_CONFIGS = ("patcher_config", "encoder_config", "decoder_config", "global_config")


def tiny_blt_config(**overrides) -> BltConfig:
    """A BLT small enough for unit tests (about 0.2M parameters), with every module of the real architecture."""
    sizes = dict(
        max_position_embeddings=2048,
        local_attention_window_len=48,
        encoder_hash_byte_group_size=[3, 4, 5],
        encoder_hash_byte_group_vocab=101,
        patcher_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            sliding_window=40,
            max_position_embeddings=2048,
        ),
        encoder_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
        decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        global_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    )
    return _build_config(sizes, overrides)


def benchmark_blt_config(**overrides) -> BltConfig:
    """The ~40M-parameter benchmark configuration: patcher 256x2, encoder 256x1, decoder 256x4, global 512x6,
    hash vocabulary 10k."""
    sizes = dict(
        max_position_embeddings=4096,
        local_attention_window_len=512,
        encoder_hash_byte_group_vocab=10000,
        patcher_config=dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=683),
        encoder_config=dict(hidden_size=256, num_hidden_layers=1, num_attention_heads=4, intermediate_size=683),
        decoder_config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=683),
        global_config=dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1366),
    )
    return _build_config(sizes, overrides)


def small_blt_config(**overrides) -> BltConfig:
    """A ~10M-parameter BLT sized to train from scratch on 2 CPU cores in tens of minutes: patcher 128x2, encoder
    128x1, decoder 128x3, global 384x4, hash vocabulary 4096, patches of at most 8 bytes."""
    sizes = dict(
        max_position_embeddings=4096,
        local_attention_window_len=256,
        encoder_hash_byte_group_vocab=4096,
        max_patch_length=8,
        patcher_config=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=341),
        encoder_config=dict(hidden_size=128, num_hidden_layers=1, num_attention_heads=4, intermediate_size=341),
        decoder_config=dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=341),
        global_config=dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1024),
    )
    return _build_config(sizes, overrides)


def _build_config(sizes: dict, overrides: dict) -> BltConfig:
    """Entropy patching, the byte special ids and `sizes`, then `overrides` (sub-config overrides are merged field by
    field). The local modules must know the global width, which stock BLT does not derive, so it is set here."""
    config = dict(
        vocab_size=260,
        patch_in_forward=True,
        patching_threshold=1.0,
        cross_attn_k=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        **sizes,
    )
    for key in SUB_CONFIGS:
        config[key] = {**config[key], **overrides.pop(key, {})}
    config.update(overrides)
    for key in ("encoder_config", "decoder_config"):
        config[key].setdefault("hidden_size_global", config["global_config"]["hidden_size"])
        config[key].setdefault("cross_attn_k", config["cross_attn_k"])
    return BltConfig(**config)


@torch.no_grad()
def calibrate_random_model(
    model: torch.nn.Module,
    sample_ids: torch.Tensor,
    bytes_per_patch: float = 3.5,
    patcher_gain: float = 4.0,
    head_gain: float = 10.0,
) -> float:
    """Make a random BLT patch like a trained one and decide its argmaxes clearly. Modifies `model` in place.

    Works on stock `transformers.BltForCausalLM` and on `BltDiffusionForCausalLM` alike (same parameter names).

    Args:
        model: a randomly initialised BLT with an entropy patcher.
        sample_ids (`torch.Tensor` of shape `(batch, seq)`): bytes on which to measure the patcher's entropies.
        bytes_per_patch: mean patch length to aim for; the threshold is the entropy quantile that gives it.
        patcher_gain: factor on the patcher's LM head, which spreads its entropies apart.
        head_gain: factor on the model's LM head, which widens the gaps between logits.

    Returns:
        The patching threshold now set on `model.config`.
    """
    model.model.patcher.lm_head.weight.mul_(patcher_gain)
    model.lm_head.weight.mul_(head_gain)
    entropies = patcher_entropies(model, sample_ids)[:, 1:].flatten()
    threshold = float(torch.quantile(entropies.float(), 1.0 - 1.0 / bytes_per_patch))
    model.config.patching_threshold = threshold
    return threshold


def patcher_entropies(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-byte entropies (batch, seq) of a BLT model's patcher, stock or ours."""
    if isinstance(model, BltForCausalLM):
        entropies, _, _ = model.model.patcher(input_ids)
        return entropies
    return model.model.patcher_entropies(input_ids)
