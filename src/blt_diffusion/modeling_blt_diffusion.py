"""Byte Latent Transformer with incremental caches at every level, for BLT, BLT-D, BLT-S and BLT-DV decoding.

The modules and parameter names are those of `transformers.BltForCausalLM`, so stock checkpoints load unchanged and
the full-sequence forward reproduces stock BLT's logits. What differs is how the work is organised: one code path,
`BltDiffusionModel.forward`, appends bytes to a `BltDiffusionCache` (or to an empty, throw-away one in training),
and every level only processes what is new:

1. the patcher (a small causal byte LM) gives the entropy of each new byte;
2. a byte ends its patch when it is the first byte, when its entropy exceeds the threshold, or when the patch
   reaches `max_patch_length`;
3. the local encoder embeds the new bytes (with hash n-gram embeddings) and pools each newly closed patch into a
   latent;
4. the global transformer runs once per newly closed patch;
5. the local decoder reads each new byte against the latent of the latest patch closed at or before it.

A byte's patch boundary depends only on bytes up to it, so appending never changes earlier work.
"""

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import AttentionInterface, PreTrainedModel, slice_logits_to_keep
from transformers.utils import ModelOutput, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .block_diffusion_blt_diffusion import (
    BlockDiffusionLayout,
    DiffusionBlocks,
    block_diffusion_attention,
    diffusion_losses,
    sample_diffusion_blocks,
    true_positions,
)
from .cache_blt_diffusion import (
    AttentionContext,
    BltDiffusionCache,
    KeyValueBuffer,
    RightToLeftPadding,
    build_attention_context,
    build_query_attention_context,
    left_padding,
    num_cross_attention_layers,
)
from .compiled_steps_blt_diffusion import CompiledDecodingSteps, StepOutput
from .configuration_blt_diffusion import BltDiffusionConfig
from .generation_blt_diffusion import BltDiffusionGenerationConfig, BltDiffusionGenerationMixin
from .modelcard_blt_diffusion import MODEL_CARD_NAME, is_transformers_placeholder, write_model_card

HASH_PRIMES = (
    1000000007,
    5915587277,
    1500450271,
    3267000013,
    5754853343,
    4093082899,
    9576890767,
    3628273133,
    2860486313,
    5463458053,
    3367900313,
)
# BLT-D's only new parameters: a checkpoint saved without them (a stock BLT's, or one converted with block size 0)
# loads into a BLT-D model with them freshly initialised, and one saved with them loads into a plain BLT without them.
NEW_PARAMETERS = re.compile(r"(^|\.)diffusion_(embed_tokens|mask_embedding)\.")
# How many weight names an error about a checkpoint lists.
LISTED_WEIGHTS = 3
# The transformer stacks, by the attribute name of their module, in the order a forward call runs them.
STACKS = ("patcher", "local_encoder", "global_transformer", "local_decoder")

logger = logging.get_logger(__name__)


class BltDiffusionRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype == self.weight.dtype == torch.float32:
            # One fused call instead of seven; in float32 it gives the unfused result below bit for bit.
            return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(
            hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon
        )
        return self.weight * hidden_states.to(input_dtype)


class BltDiffusionMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class BltDiffusionRotaryEmbedding(nn.Module):
    """RoPE with BLT's interleaved layout: frequencies are repeated pairwise, not concatenated as in Llama."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        inv_freq, self.attention_scaling = self.compute_inv_freq()
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)

    def compute_inv_freq(self) -> tuple[torch.Tensor, float]:
        """Inverse frequencies (head_dim / 2,) and the cos/sin scaling, from the config's RoPE parameters."""
        rope_type = self.config.rope_parameters.get("rope_type", "default")
        if rope_type != "default":
            return ROPE_INIT_FUNCTIONS[rope_type](self.config)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        base = self.config.rope_parameters["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0

    @torch.no_grad()
    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """`position_ids` (batch, seq) -> rotations (batch, seq, 1, head_dim / 2): one unit complex number (times
        the attention scaling) per channel pair, computed once per stack call and shared by its layers."""
        angles = position_ids[..., None].float() * self.inv_freq.to(hidden_states.device)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        if torch.compiler.is_compiling():
            # Inductor generates no code for complex numbers: compiled steps rotate by (cos, sin) pairs,
            # (2, batch, seq, 1, head_dim / 2), in real arithmetic.
            return torch.stack([cos, sin])[:, :, :, None]
        return torch.complex(cos, sin)[:, :, None]


def apply_rotary_pos_emb(
    query: torch.Tensor, key: torch.Tensor, rotations: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each (even, odd) channel pair of `query` and `key` (batch, seq, heads, head_dim) by its angle.

    BLT pairs adjacent channels (its interleaved layout), so a pair is a complex number and the rotation a complex
    multiplication by `rotations` (batch, seq, 1, head_dim / 2): a few operations instead of `rotate_half`'s
    slice-negate-stack, computed in float32 whatever the states' dtype.
    """

    def rotate(states: torch.Tensor) -> torch.Tensor:
        if not rotations.is_complex():
            real, imaginary = states.float().unflatten(-1, (-1, 2)).unbind(-1)
            cos, sin = rotations
            rotated = torch.stack([real * cos - imaginary * sin, real * sin + imaginary * cos], dim=-1)
            return rotated.flatten(-2).to(states.dtype)
        pairs = torch.view_as_complex(states.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * rotations).flatten(-2).to(states.dtype)

    return rotate(query), rotate(key)


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * groups, seq, head_dim), each key/value head repeated for
    the `groups` query heads that share it."""
    if groups == 1:
        return states
    batch_size, num_kv_heads, seq_len, head_dim = states.shape
    expanded = states[:, :, None].expand(batch_size, num_kv_heads, groups, seq_len, head_dim)
    return expanded.reshape(batch_size, num_kv_heads * groups, seq_len, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in plain PyTorch operations, which also returns its weights (`attn_implementation="eager"`).

    Takes what every attention function of this model takes, `sdpa`'s inputs: `query` (batch, heads, queries,
    head_dim), `key` and `value` (batch, kv_heads, keys, head_dim) and a boolean `attention_mask` (batch, 1, queries,
    keys), True where a query may attend, or None for all.

    Returns:
        the output (batch, queries, heads, head_dim) and the weights after softmax (batch, heads, queries, keys).
    """
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    attn_weights = attn_weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`attn_implementation="sdpa"`: torch's `scaled_dot_product_attention` on the inputs of
    `eager_attention_forward`, grouped key/value heads read in place. transformers' version adapts to every model
    and device in Python, which a single-byte decoding step would pay in every layer of every stack.

    Returns:
        the output (batch, queries, heads, head_dim) and no weights.
    """
    attn_output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=module.num_key_value_groups > 1,
    )
    return attn_output.transpose(1, 2), None


AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]

# transformers' registry of attention functions with `sdpa` overridden for this model only, as `AttentionInterface`
# provides (and as transformers' Doge model does, under the same name): functions registered with
# `AttentionInterface.register` under other names work here too.
ALL_ATTENTION_FUNCTIONS = AttentionInterface()
ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_attention_forward


def attention_function(config) -> AttentionFunction:
    """The attention function that `config._attn_implementation` names (`"eager"`: this model's own), looked up once
    per stack call: reading a config attribute costs a microsecond, too much to spend in every layer of a
    single-byte decoding step."""
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


class BltDiffusionSelfAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.dropout
        self.layer_idx = layer_idx
        # Every mask is explicit (None means no query is masked), so attention functions must not add causality.
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotations: torch.Tensor,
        context: AttentionContext,
        attention_interface: AttentionFunction,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`hidden_states` (batch, new, hidden) -> (batch, new, hidden) and the attention weights (batch, heads, new,
        keys) when `attention_interface` gives them; `rotations` from the stack's rotary embedding."""
        batch_size, num_new, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch_size, num_new, self.num_heads, self.head_dim)
        key = self.k_proj(hidden_states).view(batch_size, num_new, -1, self.head_dim)
        value = self.v_proj(hidden_states).view(batch_size, num_new, -1, self.head_dim).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, rotations)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        key, value = context.keys_values(self.layer_idx, key, value)
        dropout = self.dropout if self.training else 0.0
        if context.block_layout is not None:
            # Block-diffusion training attends in parts that no dense attention function computes.
            attn_output = block_diffusion_attention(
                query,
                repeat_kv(key, self.num_key_value_groups),
                repeat_kv(value, self.num_key_value_groups),
                context.block_layout,
                dropout,
            )
            return self.o_proj(attn_output.transpose(1, 2).reshape(batch_size, num_new, -1)), None
        attn_output, attn_weights = attention_interface(
            self, query, key, value, context.mask, dropout=dropout, scaling=self.scaling
        )
        return self.o_proj(attn_output.reshape(batch_size, num_new, -1)), attn_weights


class BltDiffusionCrossAttention(nn.Module):
    """Cross-attention between bytes and patch latents, without positions. The residual is added inside (as in BLT)."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.dropout
        self.is_causal = False
        self.q_norm = BltDiffusionRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.k_norm = BltDiffusionRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def project_queries(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, queries, hidden) -> (batch, heads, queries, head_dim)."""
        batch_size, num_queries, _ = hidden_states.shape
        query = self.q_proj(self.q_norm(hidden_states))
        return query.view(batch_size, num_queries, self.num_heads, self.head_dim).transpose(1, 2)

    def project_keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., hidden) -> keys, values of shape (..., kv_heads, head_dim)."""
        normed = self.k_norm(states)
        key = self.k_proj(normed).unflatten(-1, (self.num_key_value_heads, self.head_dim))
        value = self.v_proj(normed).unflatten(-1, (self.num_key_value_heads, self.head_dim))
        return key, value

    def finish(self, hidden_states: torch.Tensor, attn_output: torch.Tensor) -> torch.Tensor:
        """attn_output (batch, queries, heads, head_dim) -> output projection plus the internal residual."""
        batch_size, num_queries, _, _ = attn_output.shape
        return self.o_proj(attn_output.reshape(batch_size, num_queries, -1)) + hidden_states

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_states: torch.Tensor,
        mask: torch.Tensor,
        attention_interface: AttentionFunction,
    ) -> torch.Tensor:
        """Dense form, patches reading bytes: `hidden_states` (batch, queries, hidden), `key_states` (batch, keys,
        hidden), `mask` (batch, 1, queries, keys) boolean."""
        query = self.project_queries(hidden_states)
        key, value = self.project_keys_values(key_states)
        attn_output, _ = attention_interface(
            self,
            query,
            key.transpose(1, 2),
            value.transpose(1, 2),
            mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        return self.finish(hidden_states, attn_output)

    def forward_gathered(self, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Gathered form, each byte reading only its own latent: `hidden_states` (batch, queries, hidden), `keys`,
        `values` (batch, queries, splits, kv_heads, head_dim), already projected once per patch."""
        query = self.project_queries(hidden_states)
        group = self.num_heads // self.num_key_value_heads
        if group > 1:
            keys, values = keys.repeat_interleave(group, dim=3), values.repeat_interleave(group, dim=3)
        # (batch, queries, splits, heads, head_dim) -> (batch, heads, queries, splits, head_dim)
        keys, values = keys.permute(0, 3, 1, 2, 4), values.permute(0, 3, 1, 2, 4)
        # Each query reads only `splits` keys, so broadcasting beats a batched matmul here.
        scores = (query.unsqueeze(3) * keys).sum(dim=-1) * self.head_dim**-0.5
        weights = F.dropout(scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype), self.dropout, self.training)
        attn_output = (weights.unsqueeze(-1) * values).sum(dim=3)
        return self.finish(hidden_states, attn_output.transpose(1, 2))


class BltDiffusionTransformerLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.self_attn = BltDiffusionSelfAttention(config, layer_idx)
        self.mlp = BltDiffusionMLP(config)
        self.input_layernorm = BltDiffusionRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BltDiffusionRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotations: torch.Tensor,
        context: AttentionContext,
        attention_interface: AttentionFunction,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, new, hidden) -> (batch, new, hidden) and the self-attention weights, if any."""
        attn_output, attn_weights = self.self_attn(
            self.input_layernorm(hidden_states), rotations, context, attention_interface
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), attn_weights


def transformer_layers(config) -> nn.ModuleList:
    return nn.ModuleList(BltDiffusionTransformerLayer(config, idx) for idx in range(config.num_hidden_layers))


def cross_attention_layers(config) -> nn.ModuleList:
    return nn.ModuleList(BltDiffusionCrossAttention(config) for _ in range(num_cross_attention_layers(config)))


class LayerOutputs:
    """The per-layer outputs that one `BltDiffusionModel.forward` call collects, by stack (`STACKS`).

    A stack's hidden states are the input of its first layer, then the output of each layer, as transformers records
    them for `output_hidden_states`; its attentions are the self-attention weights of each layer that the attention
    function returns, for `output_attentions`. The stacks look the active collector (`collecting`) up once per call,
    so a forward that asks for neither, like every decoding step, records nothing.
    """

    def __init__(self, hidden_states: bool, attentions: bool):
        self.record_hidden_states = hidden_states
        self.record_attentions = attentions
        self.hidden_states: dict[str, list[torch.Tensor]] = {stack: [] for stack in STACKS}
        self.attentions: dict[str, list[torch.Tensor]] = {stack: [] for stack in STACKS}

    @contextmanager
    def collecting(self) -> Iterator["LayerOutputs"]:
        """Make this the collector of the stacks that run in the block, if it records anything."""
        token = ACTIVE_LAYER_OUTPUTS.set(self) if self.record_hidden_states or self.record_attentions else None
        try:
            yield self
        finally:
            if token is not None:
                ACTIVE_LAYER_OUTPUTS.reset(token)

    def add(
        self,
        stack: str,
        layer_input: torch.Tensor,
        layer_output: torch.Tensor,
        attn_weights: torch.Tensor | None,
    ) -> None:
        """Record one layer of `stack`: its input (kept for the stack's first layer only), output and weights."""
        if self.record_hidden_states:
            states = self.hidden_states[stack]
            if not states:
                states.append(layer_input)
            states.append(layer_output)
        if self.record_attentions and attn_weights is not None:
            self.attentions[stack].append(attn_weights)


# The collector of the `BltDiffusionModel.forward` call running in this thread or task, if it records anything.
ACTIVE_LAYER_OUTPUTS: ContextVar[LayerOutputs | None] = ContextVar("blt_diffusion_layer_outputs", default=None)


def active_layer_outputs() -> LayerOutputs | None:
    """The collector that the running stacks record into, if any. Compiled decoding steps record nothing (and
    dynamo cannot read a `ContextVar`)."""
    return None if torch.compiler.is_compiling() else ACTIVE_LAYER_OUTPUTS.get()


def run_layers(
    stack: str,
    layers: nn.ModuleList,
    rotary_emb: BltDiffusionRotaryEmbedding,
    hidden_states: torch.Tensor,
    context: AttentionContext,
    attention_interface: AttentionFunction,
) -> torch.Tensor:
    """Run the transformer layers of `stack` (a name in `STACKS`) on `hidden_states` (batch, new, hidden)."""
    rotations = rotary_emb(hidden_states, context.position_ids)
    collector = active_layer_outputs()
    for layer in layers:
        layer_input = hidden_states
        hidden_states, attn_weights = layer(hidden_states, rotations, context, attention_interface)
        if collector is not None:
            collector.add(stack, layer_input, hidden_states, attn_weights)
    return hidden_states


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last dimension.

    The same operations as `torch.distributions.Categorical(logits=...).entropy()`, so patch boundaries match stock
    BLT to the last bit, without the distribution object's argument validation on every decoding step.
    """
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    probabilities = normalized.softmax(dim=-1)
    return -(normalized.clamp(min=torch.finfo(logits.dtype).min) * probabilities).sum(dim=-1)


class BltDiffusionPatcher(nn.Module):
    """The entropy model: a small causal byte LM whose next-byte entropy decides where patches end. Frozen."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rotary_emb = BltDiffusionRotaryEmbedding(config)
        self.layers = transformer_layers(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = BltDiffusionRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        """`input_ids` (batch, new) -> entropy in nats of the byte following each position (batch, new)."""
        return categorical_entropy(self.next_byte_logits(input_ids, context))

    def next_byte_logits(self, input_ids: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        """`input_ids` (batch, new) -> the patcher's logits for the byte after each position (batch, new, vocab)."""
        hidden_states = run_layers(
            "patcher",
            self.layers,
            self.rotary_emb,
            self.embed_tokens(input_ids),
            context,
            attention_function(self.config),
        )
        return self.lm_head(self.norm(hidden_states))


class BltDiffusionLocalEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = transformer_layers(config)
        self.rotary_emb = BltDiffusionRotaryEmbedding(config)
        self.patch_embedding_projection = nn.Linear(
            config.hidden_size, config.hidden_size * config.cross_attn_k, bias=False
        )
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.cross_attn_layers = cross_attention_layers(config)

    def forward(self, embeddings: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        """Byte embeddings (batch, new, hidden) -> byte hidden states (batch, new, hidden)."""
        hidden_states = F.dropout(embeddings, p=self.config.dropout, training=self.training)
        return run_layers(
            "local_encoder", self.layers, self.rotary_emb, hidden_states, context, attention_function(self.config)
        )

    def pool_patches(
        self, byte_states: torch.Tensor, byte_patch_index: torch.Tensor, num_patches: int
    ) -> torch.Tensor:
        """Pool bytes into patch latents: max over each patch's bytes, then the patches cross-attend their bytes.

        Args:
            byte_states (`torch.Tensor` of shape `(batch, bytes, hidden)`): encoder outputs.
            byte_patch_index (`torch.Tensor` of shape `(batch, bytes)`): patch of each byte in `[0, num_patches)`,
                or `num_patches` for bytes that belong to none of them.
            num_patches (`int`): patches to produce.

        Returns:
            `torch.Tensor` of shape `(batch, num_patches, hidden * cross_attn_k)`.
        """
        batch_size, _, hidden_size = byte_states.shape
        splits = self.config.cross_attn_k
        pooled = byte_states.new_zeros(batch_size, num_patches + 1, hidden_size).scatter_reduce(
            1, byte_patch_index[..., None].expand(-1, -1, hidden_size), byte_states, reduce="amax", include_self=False
        )[:, :num_patches]
        patch_queries = self.patch_embedding_projection(pooled).reshape(batch_size, num_patches * splits, hidden_size)
        query_patch = torch.arange(num_patches, device=byte_states.device).repeat_interleave(splits)
        mask = query_patch[None, :, None] == byte_patch_index[:, None, :]
        # A query without bytes (a padding patch) would be all -inf; let it read everything and be discarded.
        mask |= ~mask.any(dim=-1, keepdim=True)
        # Stock BLT runs a cross-attention per encoder layer but re-pools before each, so only the last one counts.
        cross_attention = self.cross_attn_layers[-1]
        patch_queries = patch_queries + cross_attention(
            patch_queries, byte_states, mask[:, None], attention_function(self.config)
        )
        return patch_queries.reshape(batch_size, num_patches, splits * hidden_size)


class BltDiffusionGlobalTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = transformer_layers(config)
        self.rotary_emb = BltDiffusionRotaryEmbedding(config)
        if getattr(config, "encoder_cross_output_size", None) is not None:
            self.token_embedding_projection = nn.Linear(
                config.encoder_cross_output_size, config.hidden_size, bias=False
            )
        else:
            self.token_embedding_projection = nn.Identity()

    def forward(self, patch_embeddings: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        """Patch latents (batch, new_patches, encoder_hidden * k) -> global states (batch, new_patches, hidden)."""
        hidden_states = self.token_embedding_projection(patch_embeddings)
        hidden_states = F.dropout(hidden_states, p=self.config.dropout, training=self.training)
        return run_layers(
            "global_transformer",
            self.layers,
            self.rotary_emb,
            hidden_states,
            context,
            attention_function(self.config),
        )


class BltDiffusionLocalDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = transformer_layers(config)
        self.rotary_emb = BltDiffusionRotaryEmbedding(config)
        self.patch_embedding_projection = nn.Linear(
            config.hidden_size_global, config.hidden_size * config.cross_attn_k, bias=False
        )
        self.norm = BltDiffusionRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.cross_attn_layers = cross_attention_layers(config)

    def latent_keys_values(self, global_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Project patch states once per patch for every cross-attention layer.

        `global_states` (batch, patches, global_hidden) -> per layer, keys and values of shape
        (batch, patches, cross_attn_k, kv_heads, head_dim).
        """
        latents = self.patch_embedding_projection(global_states)
        latents = latents.unflatten(-1, (self.config.cross_attn_k, self.config.hidden_size))
        return [layer.project_keys_values(latents) for layer in self.cross_attn_layers]

    def forward(
        self,
        byte_states: torch.Tensor,
        latent_keys_values: list[tuple[torch.Tensor, torch.Tensor]],
        context: AttentionContext,
    ) -> torch.Tensor:
        """Decode bytes against their latents.

        Args:
            byte_states (`torch.Tensor` of shape `(batch, new, hidden)`): encoder outputs of the bytes.
            latent_keys_values: per cross-attention layer, keys and values already gathered for each byte, of shape
                `(batch, new, cross_attn_k, kv_heads, head_dim)`.
            context (`AttentionContext`): self-attention positions, mask and cache.

        Returns:
            `torch.Tensor` of shape `(batch, new, hidden)`, normalised, ready for the LM head.
        """
        rotations = self.rotary_emb(byte_states, context.position_ids)
        attention_interface = attention_function(self.config)
        collector = active_layer_outputs()
        hidden_states = F.dropout(byte_states, p=self.config.dropout, training=self.training)
        for layer_idx, layer in enumerate(self.layers):
            if layer_idx < len(self.cross_attn_layers):
                keys, values = latent_keys_values[layer_idx]
                hidden_states = hidden_states + self.cross_attn_layers[layer_idx].forward_gathered(
                    hidden_states, keys, values
                )
            layer_input = hidden_states
            hidden_states, attn_weights = layer(hidden_states, rotations, context, attention_interface)
            if collector is not None:
                collector.add("local_decoder", layer_input, hidden_states, attn_weights)
        return self.norm(hidden_states)


class BltDiffusionByteNgramHasher(nn.Module):
    """Bucket ids of every byte's hash n-grams in all of BLT's hash tables at once.

    Table t hashes the n-gram of `group_sizes[t]` bytes ending at a byte with the rolling hash
    `sum_j byte[j] * prime_t ** j` in wrapping int64 arithmetic, modulo the table's buckets, and offsets the result
    into one shared embedding. As the arithmetic wraps, the sum can be taken in any order: one product with a
    (window, tables) matrix of powers, zero outside each table's n-gram, gives the ids the BLT checkpoints were
    trained with, in a handful of operations instead of a dozen per table.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        powers, table_offsets = self.compute_buffers()
        self.powers = nn.Buffer(powers, persistent=False)
        self.table_offsets = nn.Buffer(table_offsets, persistent=False)

    @property
    def window(self) -> int:
        """Bytes an n-gram id depends on: the byte and `window - 1` before it."""
        return max(self.config.encoder_hash_byte_group_size)

    @property
    def group_sizes(self) -> list[int]:
        """The n-gram length of each table, in table order."""
        config = self.config
        return list(config.encoder_hash_byte_group_size) * config.encoder_hash_byte_group_nb_functions

    def compute_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Powers (window, tables) and per-table offsets (tables,), in the checkpoints' table order: hash function
        outer, group size inner."""
        config = self.config
        columns = []
        for function_idx in range(config.encoder_hash_byte_group_nb_functions):
            prime = torch.tensor(HASH_PRIMES[function_idx % len(HASH_PRIMES)], dtype=torch.int64)
            for group_size in config.encoder_hash_byte_group_size:
                column = torch.zeros(self.window, dtype=torch.int64)
                column[self.window - group_size :] = prime ** torch.arange(group_size)
                columns.append(column)
        table_offsets = torch.arange(len(columns), dtype=torch.int64) * config.encoder_hash_byte_group_vocab
        return torch.stack(columns, dim=1), table_offsets

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """`token_ids` (batch, window - 1 + new), the new bytes after `window - 1` bytes of left context (zeros
        before a sequence's start) -> ids into the shared hash embedding (batch, new, tables)."""
        windows = token_ids.unfold(1, self.window, 1)
        hashes = (windows[..., None] * self.powers).sum(dim=-2)
        return hashes % self.config.encoder_hash_byte_group_vocab + self.table_offsets


@dataclass
class PatchSegmentation:
    """Where patches end among the bytes of one call and which latent each byte reads.

    All tensors are (batch, new). `ends_patch`: the byte closes its patch. `patch_index`: global index of the
    patch holding the byte. `decoder_target`: global index of the patch latent the decoder reads at that byte.
    `new_patches` (batch,): patches closed in this call.
    """

    ends_patch: torch.Tensor
    patch_index: torch.Tensor
    decoder_target: torch.Tensor
    new_patches: torch.Tensor


@dataclass
class EncodedBytes:
    """What `BltDiffusionModel.encode` hands to the local decoder for the bytes of one call.

    `byte_states` (batch, new, encoder_hidden): encoder outputs. `segmentation`: patch ends and latent targets.
    `latent_keys_values`: per decoder cross-attention layer, keys and values (batch, patches, k, kv_heads, head_dim)
    of every patch the decoder may read. `starts` (batch,): first real slot of each row. `byte_ends` (batch,): bytes
    held before this call. `real` (batch, new): False for left padding. `byte_context`: the encoder's attention
    context for the new bytes; the decoder attends over the same slots with the same window, so it reuses it.
    `patch_keys`: without a cache, when asked for, the global transformer's keys and values of this call's patches,
    which the provisional latents of training blocks anchored inside patches attend. `token_ids` (batch, new): the
    new bytes' ids, 0 for left padding. `decoder_lags`: whether the cache's decoder holds fewer bytes than the other
    buffers before this call, when the host knows it (None: `_decode` reads it from the device). `patches_closed`:
    whether any of the new bytes may close a patch, known on the host.
    """

    byte_states: torch.Tensor
    segmentation: PatchSegmentation
    latent_keys_values: list[tuple[torch.Tensor, torch.Tensor]]
    starts: torch.Tensor
    byte_ends: torch.Tensor
    real: torch.Tensor
    byte_context: AttentionContext
    patch_keys: KeyValueBuffer | None = None
    token_ids: torch.Tensor | None = None
    decoder_lags: bool | None = None
    patches_closed: bool = True


@dataclass
class StepPlan:
    """What the host must know to run the data-dependent parts of a call, read from the device in one transfer (one
    synchronisation on a GPU): `max_new_patches`, the most patches a row's new bytes close (the global transformer
    runs when it, or the provisional open patch, is positive); `pooling_window`, the slots `[start, end)` that hold
    the earlier bytes of the rows' open patches, which pooling reads from the cache; `decoder_lags`, whether the
    cache's decoder holds fewer bytes than the other buffers in some row (False when the cache's host-side flag says
    it cannot)."""

    max_new_patches: int
    pooling_window: tuple[int, int]
    decoder_lags: bool

    @classmethod
    def read(
        cls,
        new_patches: torch.Tensor,
        open_patch_start: torch.Tensor,
        byte_ends: torch.Tensor,
        cache: BltDiffusionCache | None,
    ) -> "StepPlan":
        """Read the plan from `new_patches`, `open_patch_start` and `byte_ends` (each (batch,)) and `cache`."""
        values = [new_patches.max(), open_patch_start.min(), byte_ends.max()]
        may_lag = cache is not None and cache.decoder_may_lag
        if may_lag:
            values.append(cache.decoder_lag_rows(byte_ends).any())
        values_read = torch.stack([value.long() for value in values]).tolist()
        return cls(values_read[0], (values_read[1], values_read[2]), bool(values_read[3]) if may_lag else False)


def step_runner(cache: BltDiffusionCache | None, num_new: int) -> CompiledDecodingSteps | None:
    """The compiled steps that run this call's stacks: those `generate` gave the cache, for single-position calls."""
    return cache.compiled_steps if cache is not None and num_new == 1 else None


def run_stack(steps: CompiledDecodingSteps | None, stack: Callable[..., StepOutput], *inputs) -> StepOutput:
    """`stack(*inputs)`, compiled when `steps` are given (their context built with `fixed_keys`)."""
    return stack(*inputs) if steps is None else steps.run(stack, *inputs)


def gather_latents(
    latent_keys_values: list[tuple[torch.Tensor, torch.Tensor]], patch_ids: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, pick each query's patch: (batch, patches, ...) indexed by `patch_ids` (batch, queries) ->
    (batch, queries, ...)."""
    rows = torch.arange(patch_ids.shape[0], device=patch_ids.device)[:, None]
    return [(keys[rows, patch_ids], values[rows, patch_ids]) for keys, values in latent_keys_values]


@dataclass
class FrontierTwins:
    """Twin queries for verifying several appended bytes at once with `max_patch_length`.

    BLT's newest byte reads the latent before its own patch (see `BltDiffusionCache`). Appending several bytes at
    once must still give each byte the output that appending it alone would give, so each new byte but the last that
    closes a patch gets a twin query: same input, at the same position, reading the latent before its patch and only
    the bytes before it and itself. All tensors are (batch, twins); rows with fewer twins repeat the last new byte.

    `index`: which new byte each twin copies. `is_twin`: False for the repeats. `slots`: the copied byte's slot, its
    position and attention horizon. `write_slots`: where the twin writes its keys, past the row's end, where nothing
    keeps them. `targets`: the latent each twin reads.
    """

    index: torch.Tensor
    is_twin: torch.Tensor
    slots: torch.Tensor
    write_slots: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def build(cls, cache: BltDiffusionCache, encoded: EncodedBytes) -> "FrontierTwins | None":
        """The twin queries that appending several bytes at once needs (see `FrontierTwins`), or None for none; the
        decoder buffer is grown to hold their keys."""
        closes = encoded.segmentation.ends_patch[:, :-1]
        num_twins = int(closes.sum(dim=1).max()) if closes.numel() else 0
        if num_twins == 0:
            return None
        num_new = encoded.byte_states.shape[1]
        # Rows with fewer twins repeat the last byte, whose output is not replaced.
        index = true_positions(closes, fill=num_new - 1)
        end = encoded.byte_ends + num_new
        cache.reserve(int(end.max()) + num_twins)
        return cls(
            index=index,
            is_twin=index < num_new - 1,
            slots=encoded.byte_ends[:, None] + index,
            write_slots=end[:, None] + torch.arange(num_twins, device=index.device),
            targets=(encoded.segmentation.patch_index.gather(1, index) - 1).clamp(min=0),
        )


def bytes_before(token_ids: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` byte ids before each slot of `ends` in `token_ids` (batch, slots), 0 before a row's first real
    slot `starts[r]` (batch,), as stock BLT pads the left context of hash n-grams.

    `ends` is (batch,) or (batch, anchors) -> (batch, count) or (batch, anchors, count).
    """
    slots = ends[..., None] - count + torch.arange(count, device=ends.device)
    history = token_ids.gather(1, slots.clamp(min=0).flatten(1)).view_as(slots)
    row_starts = starts.view(-1, *[1] * (slots.dim() - 1))
    return history.masked_fill(slots < row_starts, 0)


def reaches_max_patch_length(
    ends_patch: torch.Tensor, open_patch_length: torch.Tensor, max_patch_length: int
) -> torch.Tensor:
    """Bytes where a patch (counted from its entropy-defined start) reaches a multiple of `max_patch_length`."""
    num_new = ends_patch.shape[1]
    offsets = torch.arange(num_new, device=ends_patch.device).expand_as(ends_patch)
    starts_run = torch.zeros_like(ends_patch)
    starts_run[:, 1:] = ends_patch[:, :-1]
    run_start = torch.where(starts_run, offsets, torch.full_like(offsets, -(1 << 40)))
    run_start[:, 0] = torch.where(starts_run[:, 0], 0, -open_patch_length)
    run_start = run_start.cummax(dim=1).values
    return (offsets - run_start + 1) % max_patch_length == 0


def check_loaded_weights(loading_info: dict, check_shapes: bool) -> None:
    """Raise a `ValueError` naming the weights that `from_pretrained` (its `loading_info`) found not to match the
    model: missing ones and unexpected ones other than `NEW_PARAMETERS`, and, with `check_shapes`, mismatched ones."""
    problems = []
    missing = sorted(name for name in loading_info["missing_keys"] if not NEW_PARAMETERS.search(name))
    if missing:
        problems.append(f"it lacks {list_weights(missing)}, which would start at random")
    unexpected = sorted(name for name in loading_info["unexpected_keys"] if not NEW_PARAMETERS.search(name))
    if unexpected:
        problems.append(f"the model has no {list_weights(unexpected)}, which would be dropped")
    mismatched = sorted(loading_info["mismatched_keys"]) if check_shapes else []
    if mismatched:
        name, saved_shape, model_shape = mismatched[0]
        others = f" (and {len(mismatched) - 1} other weights)" if len(mismatched) > 1 else ""
        problems.append(
            f"{name} has shape {list(saved_shape)} in the checkpoint but {list(model_shape)} in the model{others}"
        )
    if problems:
        raise ValueError(f"The checkpoint's weights do not match the model's config: {'; '.join(problems)}.")


def list_weights(names: list[str]) -> str:
    """The first `LISTED_WEIGHTS` of `names` and how many others there are."""
    listed = ", ".join(names[:LISTED_WEIGHTS])
    return listed + (f" and {len(names) - LISTED_WEIGHTS} other weights" if len(names) > LISTED_WEIGHTS else "")


class BltDiffusionPreTrainedModel(PreTrainedModel):
    config_class = BltDiffusionConfig
    config: BltDiffusionConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BltDiffusionTransformerLayer", "BltDiffusionCrossAttention"]
    # As stock BLT: `attn_implementation` "sdpa" (the default) or "eager", or a function registered with
    # transformers' `AttentionInterface` that reads what `sdpa` reads (a boolean mask).
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.(original_)?inv_freq"]

    def __init__(self, config: BltDiffusionConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self._share_attn_implementation()

    def _share_attn_implementation(self) -> None:
        """The stacks read their sub-config's attention implementation (see `attention_function`); transformers sets
        only the model config's when it builds a model, so a sub-config left unset takes it."""
        for name in self.config.sub_configs:
            sub_config = getattr(self.config, name)
            if sub_config._attn_implementation is None:
                sub_config._attn_implementation_internal = self.config._attn_implementation

    def set_attn_implementation(self, attn_implementation: str | dict, allow_all_kernels: bool = False) -> None:
        """transformers' `set_attn_implementation`. The stacks are not sub-models but read their sub-configs, which
        transformers sets with a warning that it found no sub-model to check them with: an implementation named for
        the whole model is checked here and set on them first, which leaves nothing to warn about."""
        if isinstance(attn_implementation, str):
            checked = self._check_and_adjust_attn_implementation(
                attn_implementation, is_init_check=False, allow_all_kernels=allow_all_kernels
            )
            for name in self.config.sub_configs:
                getattr(self.config, name)._attn_implementation_internal = checked
        super().set_attn_implementation(attn_implementation, allow_all_kernels)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """transformers' choice of attention implementation, refusing paged attention: it needs transformers'
        paged cache, which BLT's multi-level cache is not."""
        if isinstance(requested_attention, str) and requested_attention.startswith("paged|"):
            raise ValueError(
                f"`attn_implementation={requested_attention!r}` needs transformers' paged cache, which BLT models do "
                'not use; choose "sdpa" or "eager".'
            )
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    def validate_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Reject byte ids and masks the model cannot read with a message that names the problem."""
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"`input_ids` must hold integer byte ids, got dtype {input_ids.dtype}.")
        if input_ids.numel() > 0:
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"`input_ids` contains id {bad}, outside the model's vocabulary [0, {self.config.vocab_size})."
                )
        if attention_mask is None:
            return
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has shape "
                f"{tuple(input_ids.shape)}; they must match."
            )
        mask = attention_mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("Every row of `attention_mask` needs at least one 1 (a row without tokens).")
        # Rows must be one contiguous run of tokens, with padding on the left, the right or both.
        starts_run = mask[:, 1:] & ~mask[:, :-1]
        if bool((starts_run.sum(dim=1) + mask[:, 0].long() > 1).any()):
            raise ValueError("`attention_mask` has holes: each row must be padding, then tokens, then padding.")

    def validate_forward_inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        cache: BltDiffusionCache | None,
    ) -> None:
        """`validate_inputs` for a forward call, which also needs ids (not embeddings) and padding only in the first
        call on a cache."""
        if inputs_embeds is not None:
            raise ValueError(
                "BLT needs byte ids (its hash n-gram embeddings are computed from them): pass `input_ids`."
            )
        if input_ids is None:
            raise ValueError("`input_ids` is required.")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"`input_ids` must have shape (batch, seq) with seq >= 1, got {tuple(input_ids.shape)}.")
        self.validate_inputs(input_ids, attention_mask)
        has_padding = attention_mask is not None and not bool(attention_mask.bool().all())
        if has_padding and cache is not None and not cache.is_empty():
            raise ValueError("Padding is only allowed in the first call on a cache (the prompt).")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a checkpoint whose weights do not match the config.

        transformers only logs a table of the weights that do not match, initialises the missing ones at random and
        drops the unexpected ones: a directory with renamed weights, or whose config was edited, would load as a model
        that writes noise. Here a missing or unexpected weight, or one of another shape (unless
        `ignore_mismatched_sizes=True`), raises a `ValueError` naming a few; only BLT-D's new parameters
        (`NEW_PARAMETERS`) may be missing or unexpected, so that `diffusion_block_size=8` turns a stock BLT checkpoint
        into a BLT-D model to fine-tune.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        check_shapes = not kwargs.pop("ignore_mismatched_sizes", False)
        # Shapes are checked below, to name the weights: transformers' own error points at its logged table.
        kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        check_loaded_weights(loading_info, check_shapes)
        if model.base_model.patcher is not None:
            # transformers' loader makes every loaded parameter trainable again: the patcher stays frozen, as
            # `BltDiffusionModel` builds it, out of every optimizer.
            model.base_model.patcher.requires_grad_(False)
        return (model, loading_info) if output_loading_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated normal with std 1/sqrt(fan_in), as the original BLT; norms start at 1."""
        if isinstance(module, nn.Linear):
            std = module.in_features**-0.5
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        elif isinstance(module, nn.Embedding):
            std = module.embedding_dim**-0.5
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        elif isinstance(module, BltDiffusionRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, BltDiffusionRotaryEmbedding):
            # Buffers are not in checkpoints; models built on the meta device must recompute them.
            init.copy_(module.inv_freq, module.compute_inv_freq()[0])
        elif isinstance(module, BltDiffusionByteNgramHasher):
            powers, table_offsets = module.compute_buffers()
            init.copy_(module.powers, powers)
            init.copy_(module.table_offsets, table_offsets)


class BltDiffusionBlockDecodingMixin:
    """What BLT-D adds to `BltDiffusionModel`: decoding blocks of cells, in training over whole sequences and one
    denoising step at a time at inference. It reads the model's local encoder, global transformer, local decoder and
    cell embedding (`diffusion_embed_tokens` or `diffusion_mask_embedding`, see `config.diffusion_cell_embedding`);
    `BltDiffusionModel` does everything autoregressive."""

    def decode_with_blocks(self, encoded: EncodedBytes, blocks: DiffusionBlocks) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time decoder pass over [clean bytes ; corrupted block cells] of whole sequences (no cache).

        Clean bytes are decoded exactly as by `forward`. Block cells enter through `train_cell_states`, keep their
        original positions for RoPE, read the latent that decoding gives a block
        at their anchor (see `DiffusionBlocks`; `provisional_latents` for blocks inside patches), and attend as
        `BlockDiffusionLayout` allows.

        Returns:
            clean states `(batch, seq, decoder_hidden)` and cell states `(batch, blocks, B, decoder_hidden)`.
        """
        if self.config.diffusion_block_size <= 0:
            raise ValueError("This model has no diffusion parameters: set `diffusion_block_size` > 0 in its config.")
        byte_states = encoded.byte_states
        batch_size, num_clean, _ = byte_states.shape
        cell_slots = blocks.cell_slots()
        # Patches closed before the anchor; at a patch start, the last of them is the one the byte before it ends.
        segmentation = encoded.segmentation
        closed_through = segmentation.patch_index + segmentation.ends_patch.long()
        closed_before = closed_through.gather(1, (blocks.starts - 1).clamp(min=0))
        block_latent = (closed_before - 1).clamp(min=0)
        latent_keys_values = encoded.latent_keys_values
        mid_patch = blocks.mid_patch
        if bool(mid_patch.any()):
            # Provisional latents go after the closed patches' in the table the decoder gathers from.
            provisional = self.provisional_latents(encoded, blocks, closed_before)
            num_closed = latent_keys_values[0][0].shape[1]
            latent_keys_values = [
                (torch.cat([keys, more_keys], dim=1), torch.cat([values, more_values], dim=1))
                for (keys, values), (more_keys, more_values) in zip(latent_keys_values, provisional, strict=True)
            ]
            block_latent = torch.where(mid_patch, num_closed + mid_patch.long().cumsum(dim=1) - 1, block_latent)
        cell_targets = block_latent.repeat_interleave(blocks.block_size, dim=1)

        slots = torch.cat([torch.arange(num_clean, device=byte_states.device).expand(batch_size, -1), cell_slots], 1)
        context = AttentionContext(
            position_ids=(slots - encoded.starts[:, None]).clamp(min=0),
            mask=None,
            block_layout=BlockDiffusionLayout.build(
                encoded.starts, num_clean, blocks, self.config.local_attention_window_len
            ),
        )
        decoder_inputs = torch.cat([byte_states, self.train_cell_states(encoded, blocks, context)], dim=1)
        latent_targets = torch.cat([encoded.segmentation.decoder_target, cell_targets], dim=1)
        states = self.decode_bytes(decoder_inputs, latent_keys_values, latent_targets, context)
        return states[:, :num_clean], states[:, num_clean:].unflatten(1, blocks.starts.shape[1:] + (-1,))

    def train_cell_states(
        self, encoded: EncodedBytes, blocks: DiffusionBlocks, context: AttentionContext
    ) -> torch.Tensor:
        """The decoder inputs of training cells, (batch, blocks * B, hidden).

        With `diffusion_cell_embedding="encoder"`, the local encoder reads [clean bytes ; cells] under the same block
        layout as the decoder (`context`), so each cell reads the clean bytes before its anchor and its own block,
        and the clean bytes give exactly `encoded.byte_states`; otherwise each cell's input is looked up in
        `diffusion_embed_tokens`. The encoder's share of the diffusion gradient is scaled by
        `config.diffusion_encoder_gradient_scale`.
        """
        if self.diffusion_mask_embedding is None:
            return self.diffusion_embed_tokens(blocks.input_ids.flatten(1)).to(encoded.byte_states.dtype)
        history = bytes_before(encoded.token_ids, encoded.starts, blocks.starts, self.ngram_hasher.window - 1)
        cell_embeddings = self.embed_cells(blocks.input_ids.flatten(0, 1), history.flatten(0, 1))
        num_clean = encoded.token_ids.shape[1]
        clean_embeddings = self.embed_bytes(encoded.token_ids, num_clean)
        cell_embeddings = cell_embeddings.reshape(clean_embeddings.shape[0], -1, clean_embeddings.shape[-1])
        embeddings = torch.cat([clean_embeddings, cell_embeddings], dim=1)
        cell_states = self.local_encoder(embeddings, context)[:, num_clean:]
        gradient_scale = self.config.diffusion_encoder_gradient_scale
        if gradient_scale != 1.0 and cell_states.requires_grad:
            cell_states.register_hook(lambda gradient: gradient * gradient_scale)
        return cell_states

    def embed_cells(self, cell_ids: torch.Tensor, history_ids: torch.Tensor) -> torch.Tensor:
        """Encoder inputs of block cells, made as clean bytes' are: a revealed cell's byte embedding plus the hash
        embedding of every n-gram ending at it whose bytes are all known (the clean bytes before the block and
        revealed cells); a masked cell's input is the mask embedding alone, so no masked byte leaks.

        Args:
            cell_ids (`torch.Tensor` of shape `(rows, B)`): byte ids, `config.diffusion_mask_id` for masked cells.
            history_ids (`torch.Tensor` of shape `(rows, window - 1)`): the clean bytes before each block, 0 before a
                row's start.

        Returns:
            `torch.Tensor` of shape `(rows, B, encoder_hidden)`.
        """
        masked = cell_ids == self.config.diffusion_mask_id
        known_ids = cell_ids.masked_fill(masked, 0)
        embeddings = self.local_encoder.embed_tokens(known_ids)
        embeddings = torch.where(masked[..., None], self.diffusion_mask_embedding.weight[0], embeddings)
        table_embeddings = self.encoder_hash_tok_embedding(self.ngram_hasher(torch.cat([history_ids, known_ids], 1)))
        # masked_before[:, j]: masked cells among the block's first j.
        masked_before = F.pad(masked.long().cumsum(dim=1), (1, 0))
        offsets = torch.arange(cell_ids.shape[1], device=cell_ids.device)
        group_sizes = self.ngram_hasher.group_sizes
        for table_embedding, group_size in zip(table_embeddings.unbind(dim=2), group_sizes, strict=True):
            first = (offsets - group_size + 1).clamp(min=0)
            known = masked_before[:, offsets + 1] == masked_before[:, first]
            embeddings = embeddings + table_embedding * known[..., None]
        return embeddings

    def block_cell_states(self, cache: BltDiffusionCache, cell_ids: torch.Tensor) -> torch.Tensor:
        """The decoder inputs of a block's cells at inference, (batch, B, hidden): as in `train_cell_states`, the
        local encoder reads the cells against the cached clean bytes (its keys for the cells are written past the
        cache's end and never kept), or `diffusion_embed_tokens` is looked up."""
        if self.diffusion_mask_embedding is None:
            return self.diffusion_embed_tokens(cell_ids).to(cache.encoder_states.dtype)
        block_starts, block_size = cache.byte_ends, cell_ids.shape[1]
        history = bytes_before(cache.token_ids, cache.starts, block_starts, self.ngram_hasher.window - 1)
        query_slots = block_starts[:, None] + torch.arange(block_size, device=cell_ids.device)
        context = build_query_attention_context(
            cache.starts,
            query_slots,
            visible_until=(block_starts + block_size)[:, None].expand_as(query_slots),
            sliding_window=self.config.local_attention_window_len,
            buffer=cache.encoder,
        )
        return self.local_encoder(self.embed_cells(cell_ids, history), context).to(cache.encoder_states.dtype)

    def provisional_latents(
        self, encoded: EncodedBytes, blocks: DiffusionBlocks, closed_before: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The provisional latent of every training block anchored inside a patch, as decoding computes it there.

        A block's open patch is its patch's bytes before the anchor. They are pooled as if the patch closed there,
        and the global transformer reads the result at the position after the closed patches, attending those
        patches' keys (`encoded.patch_keys`) and its own, as `encode(..., with_open_patch=True)` does at inference.
        The open patches of different blocks never share bytes (see `move_anchors_into_patches`).

        Args:
            encoded (`EncodedBytes`): from `encode(..., keep_patch_keys=True)` on the clean bytes.
            blocks (`DiffusionBlocks`): the blocks, some anchored inside patches.
            closed_before (`torch.Tensor` of shape `(batch, blocks)`): patches closed before each anchor.

        Returns:
            per decoder cross-attention layer, keys and values of shape `(batch, mid_blocks, k, kv_heads, head_dim)`,
            the row's blocks inside patches in order (rows with fewer repeat harmless padding latents).
        """
        if encoded.patch_keys is None:
            raise ValueError("Blocks anchored inside patches need `encode(..., keep_patch_keys=True)`.")
        mid_patch = blocks.mid_patch
        num_provisional = int(mid_patch.sum(dim=1).max())
        order = mid_patch.long().cumsum(dim=1) - 1
        byte_slots = torch.arange(encoded.byte_states.shape[1], device=mid_patch.device)
        in_open_patch = (
            mid_patch[..., None]
            & (byte_slots >= blocks.open_patch_starts[..., None])
            & (byte_slots < blocks.starts[..., None])
        )
        byte_patch_index = torch.where(in_open_patch, order[..., None], num_provisional).amin(dim=1)
        patch_embeddings = self.local_encoder.pool_patches(encoded.byte_states, byte_patch_index, num_provisional)

        mid_blocks = true_positions(mid_patch, fill=-1)
        positions = closed_before.gather(1, mid_blocks.clamp(min=0)).masked_fill(mid_blocks < 0, 0)
        num_closed = encoded.latent_keys_values[0][0].shape[1]
        context = build_query_attention_context(
            torch.zeros_like(positions[:, 0]),
            positions,
            visible_until=positions,
            sliding_window=None,
            buffer=encoded.patch_keys.extended(num_closed + num_provisional),
            write_slots=num_closed + torch.arange(num_provisional, device=positions.device).expand_as(positions),
        )
        return self.local_decoder.latent_keys_values(self.global_transformer(patch_embeddings, context))

    def decode_block(self, cache: BltDiffusionCache, cell_ids: torch.Tensor) -> torch.Tensor:
        """One denoising step of block diffusion (BLT-D inference): decode a block of cells after the cache's bytes.

        The cells read the newest latent: the open patch's provisional one (from `encode(..., with_open_patch=True)`,
        one slot past the closed patches), or the last closed patch's when the newest byte closed it, as training
        gives blocks anchored inside patches and at patch starts (`DiffusionBlocks`). Clean bytes the decoder has not
        seen yet are decoded first, in the same call, causally and with their own latents, as in training. Cells
        attend every clean byte (within the window) and each other, bidirectionally; their keys are written past the
        cache's end and never kept.

        Args:
            cache (`BltDiffusionCache`): holds the clean bytes, encoded with the open patch's latent.
            cell_ids (`torch.Tensor` of shape `(batch, block)`): byte ids, `diffusion_mask_id` for masked cells.

        Returns:
            `torch.Tensor` of shape `(batch, block, decoder_hidden)`: the cells' decoder states.
        """
        block_size = cell_ids.shape[1]
        starts, block_starts = cache.starts, cache.byte_ends
        # Rows may hold different numbers of bytes (speculative decoding): each row's queries end at its own block.
        # Every row decodes as many clean bytes as the row furthest behind needs; re-decoding a byte that was
        # already decoded for good rewrites the same keys.
        num_clean = int((block_starts - cache.decoder.ends).max())
        cache.reserve(int(block_starts.max()) + block_size)
        offsets = torch.arange(-num_clean, block_size, device=cell_ids.device)
        query_slots = (block_starts[:, None] + offsets).clamp(min=0)
        clean_slots = query_slots[:, :num_clean]

        ends_patch = cache.ends_patch.gather(1, clean_slots)
        closed_after = ends_patch.flip(1).cumsum(1).flip(1) - ends_patch.long()
        clean_targets = cache.num_patches[:, None] - closed_after - 1
        newest_is_final = cache.ends_patch.gather(1, (block_starts - 1).clamp(min=0)[:, None])[:, 0]
        newest_latent = (cache.num_patches - newest_is_final.long()).clamp(min=0)
        latent_targets = torch.cat([clean_targets.clamp(min=0), newest_latent[:, None].expand_as(cell_ids)], dim=1)

        rows = torch.arange(cell_ids.shape[0], device=cell_ids.device)[:, None]
        clean_states = cache.encoder_states[rows, clean_slots]
        cell_states = self.block_cell_states(cache, cell_ids)
        # Clean bytes read causally; cells read every real byte before the block and the whole block.
        block_ends = (block_starts + block_size)[:, None]
        visible_until = torch.where(offsets < 0, query_slots + 1, block_ends)
        aligned = bool((block_starts == block_starts[0]).all()) and int(block_starts[0]) >= num_clean
        context = build_query_attention_context(
            starts,
            query_slots,
            visible_until,
            self.config.local_attention_window_len,
            cache.decoder,
            shared_write_start=int(query_slots[0, 0]) if aligned else None,
        )
        states = self.decode_bytes(
            torch.cat([clean_states, cell_states], dim=1), cache.latent_keys_values, latent_targets, context
        )
        cache.mark_decoded(block_starts, newest_is_final)
        return states[:, -block_size:]


@dataclass
class BltDiffusionModelOutput(BaseModelOutputWithPast):
    """
    Output of [`BltDiffusionModel`]: transformers' `BaseModelOutputWithPast`, whose `hidden_states` and `attentions`
    are the local decoder's, plus those of the other stacks.

    BLT has four transformer stacks. The local decoder is the one whose states the LM head reads, over the same bytes
    as the input; its states are `hidden_states` and `attentions`, as stock `BltModel` returns them when it has no
    entropy patcher (with one, stock puts the patcher's first: an accident of its output hooks). Each stack's
    `*_hidden_states` are the input of its first layer, then the output of each layer; its `*_attentions` are each
    layer's self-attention weights, given only by an attention function that computes them
    (`attn_implementation="eager"`). A stack that did not run in the call (the global transformer when no patch
    closed, a patcher the model lacks) gives an empty tuple.

    last_hidden_state (`torch.FloatTensor` of shape `(batch, seq, decoder_hidden)`): the local decoder's normalised
        states, one per input byte.
    cache (`BltDiffusionCache`, *optional*): the updated cache, when one was used.
    hidden_states (`tuple[torch.FloatTensor]`, *optional*): with `output_hidden_states`, the local decoder's, each
        `(batch, seq, decoder_hidden)`: the input of its first layer (after that layer's cross-attention), then the
        output of each layer, the last replaced by `last_hidden_state`, as transformers does.
    attentions (`tuple[torch.FloatTensor]`, *optional*): with `output_attentions`, the local decoder's, each
        `(batch, heads, seq, keys)`. Without a cache the keys are the input bytes; with one, the cache slots read.
    patcher_hidden_states, patcher_attentions (*optional*): the same for the entropy patcher, over the input bytes.
    local_encoder_hidden_states, local_encoder_attentions (*optional*): the same for the local encoder.
    global_hidden_states, global_attentions (*optional*): the same for the global transformer, over the patches that
        the input bytes closed, `(batch, patches, global_hidden)` and `(batch, heads, patches, patch_keys)`.
    """

    patcher_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    patcher_attentions: tuple[torch.FloatTensor, ...] | None = None
    local_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    local_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    global_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    global_attentions: tuple[torch.FloatTensor, ...] | None = None


class BltDiffusionModel(BltDiffusionBlockDecodingMixin, BltDiffusionPreTrainedModel):
    def __init__(self, config: BltDiffusionConfig):
        # The config validated itself when built, but `from_pretrained` sets its overrides afterwards.
        config.validate_architecture()
        super().__init__(config)
        self.local_encoder = BltDiffusionLocalEncoder(config.encoder_config)
        self.global_transformer = BltDiffusionGlobalTransformer(config.global_config)
        self.local_decoder = BltDiffusionLocalDecoder(config.decoder_config)
        self.ngram_hasher = BltDiffusionByteNgramHasher(config)
        num_hash_tables = self.ngram_hasher.table_offsets.numel()
        self.encoder_hash_tok_embedding = nn.Embedding(
            config.encoder_hash_byte_group_vocab * num_hash_tables, config.encoder_config.hidden_size
        )
        if config.patch_in_forward:
            self.patcher = BltDiffusionPatcher(config.patcher_config)
            self.patcher.requires_grad_(False)
        else:
            self.patcher = None
        # BLT-D's only new parameters: a stock checkpoint keeps every weight and its autoregressive path.
        self.diffusion_embed_tokens = self.diffusion_mask_embedding = None
        if config.diffusion_block_size > 0 and config.diffusion_cell_embedding == "encoder":
            # Cells go through the local encoder as clean bytes do; a masked cell needs an input of its own.
            self.diffusion_mask_embedding = nn.Embedding(1, config.encoder_config.hidden_size)
        elif config.diffusion_block_size > 0:
            # Cells enter the decoder through a byte-and-mask table of their own, beside the encoder's outputs.
            self.diffusion_embed_tokens = nn.Embedding(config.diffusion_mask_id + 1, config.decoder_config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.local_encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.local_encoder.embed_tokens = value

    def patcher_entropies(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-byte entropies of whole sequences (batch, seq) -> (batch, seq), without a cache."""
        if self.patcher is None:
            raise ValueError("This model has no entropy patcher (`patch_in_forward=False`).")
        no_padding = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        context = build_attention_context(
            no_padding, no_padding, input_ids.shape[1], self.config.patcher_config.sliding_window, None
        )
        return self.patcher(input_ids, context)

    def embed_bytes(self, token_ids: torch.Tensor, num_new: int) -> torch.Tensor:
        """Byte plus hash n-gram embeddings of the last `num_new` bytes of `token_ids` (batch, context + num_new),
        whose first bytes are left context for the n-grams. Returns (batch, num_new, encoder_hidden)."""
        context = self.ngram_hasher.window - 1
        padded = F.pad(token_ids, (max(0, context + num_new - token_ids.shape[1]), 0))
        embeddings = self.local_encoder.embed_tokens(padded[:, -num_new:])
        table_embeddings = self.encoder_hash_tok_embedding(self.ngram_hasher(padded[:, -(context + num_new) :]))
        # Added one table at a time, in stock BLT's order, so that the float sums match it bit for bit.
        for table_embedding in table_embeddings.unbind(dim=2):
            embeddings = embeddings + table_embedding
        return embeddings

    def segment(
        self,
        entropies: torch.Tensor | None,
        positions: torch.Tensor,
        real: torch.Tensor,
        open_patch_length: torch.Tensor,
        num_patches: torch.Tensor,
        frontier: bool,
    ) -> PatchSegmentation:
        """Decide which new bytes close a patch and which latent the decoder reads at each.

        Args:
            entropies (`torch.Tensor` of shape `(batch, new)`, *optional*): patcher entropies; None without a patcher,
                which makes every byte its own patch (stock BLT with `patch_in_forward=False`).
            positions (`torch.Tensor` of shape `(batch, new)`): byte positions (0 is the first byte of a row).
            real (`torch.Tensor` of shape `(batch, new)`): False for left padding.
            open_patch_length (`torch.Tensor` of shape `(batch,)`): bytes already in the open patch.
            num_patches (`torch.Tensor` of shape `(batch,)`): patches closed before this call.
            frontier (`bool`): the last new byte is the newest byte of the sequence (stock BLT's quirk below).
        """
        config = self.config
        if entropies is None:
            ends_patch = real.clone()
        else:
            ends_patch = real & ((positions == 0) | (entropies > config.patching_threshold))
            if config.max_patch_length is not None:
                ends_patch |= real & reaches_max_patch_length(ends_patch, open_patch_length, config.max_patch_length)
        closed_through = num_patches[:, None] + ends_patch.long().cumsum(dim=1)
        patch_index = closed_through - ends_patch.long()
        decoder_target = closed_through - 1
        if frontier and entropies is not None and config.max_patch_length is not None:
            # Stock BLT drops the trailing empty patch when splitting long patches, so its newest byte reads the
            # latent before its own patch even when it closes that patch.
            decoder_target[:, -1] = (patch_index[:, -1] - 1).clamp(min=0)
        return PatchSegmentation(
            ends_patch=ends_patch,
            patch_index=patch_index,
            decoder_target=decoder_target.clamp(min=0),
            new_patches=ends_patch.sum(dim=1),
        )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: BltDiffusionCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BltDiffusionModelOutput:
        r"""
        Append `input_ids` to `cache` (or to an empty sequence) and decode them.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): byte ids. With a non-empty `cache`, the bytes
                that follow what the cache holds.
            attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*): 0 for padding, before or after each
                row's bytes; padding only in the first call on a cache. Rows are read left-padded: a row that ends in
                padding is moved right before it is read and its outputs are moved back, so every row gives the
                outputs it gives alone. A cache keeps the rows left-padded, and a later call continues each row after
                its last byte.
            cache (`BltDiffusionCache`, *optional*): updated in place; `use_cache=True` creates one. Formerly
                `past_key_values`, still accepted until transformers 5.40 as for every transformers model.
            output_attentions (`bool`, *optional*): return every stack's self-attention weights (see
                [`BltDiffusionModelOutput`]); defaults to `config.output_attentions`.
            output_hidden_states (`bool`, *optional*): return every stack's hidden states; defaults to
                `config.output_hidden_states`.
            return_dict (`bool`, *optional*): False returns `to_tuple()` of the output; defaults to
                `config.return_dict`.
        """
        self.validate_forward_inputs(input_ids, attention_mask, inputs_embeds, cache)
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if not isinstance(output_hidden_states, bool):
            # transformers also takes indices here, to keep only some states, which this model does not select.
            raise ValueError(f"`output_hidden_states` must be True or False, got {output_hidden_states!r}.")
        # Any integer dtype of ids is accepted; embeddings and caches take int64.
        input_ids = input_ids.long()
        if cache is None and use_cache:
            batch_size, num_new = input_ids.shape
            cache = BltDiffusionCache(self.config, batch_size, num_new, self.dtype, input_ids.device)
        right_padding = RightToLeftPadding.of(attention_mask)
        if right_padding is not None:
            input_ids, attention_mask = right_padding.apply(input_ids), right_padding.apply(attention_mask)
        collector = LayerOutputs(
            hidden_states=output_hidden_states,
            attentions=self.config.output_attentions if output_attentions is None else output_attentions,
        )
        with collector.collecting():
            last_hidden_state = self.append_bytes(input_ids, cache, attention_mask)
        output = self._model_output(last_hidden_state, cache, collector)
        return output if right_padding is None else self._undo_right_padding(output, right_padding)

    @staticmethod
    def _undo_right_padding(
        output: BltDiffusionModelOutput, right_padding: RightToLeftPadding
    ) -> BltDiffusionModelOutput:
        """`output` of left-aligned rows with every byte-level field rolled back to the rows' own layout; the global
        transformer's fields are per patch and stay as they are."""

        def states(tensors: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
            return None if tensors is None else tuple(right_padding.undo(tensor, dim=1) for tensor in tensors)

        def weights(tensors: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
            # (batch, heads, queries, keys): on a first call, queries and keys are both the rows' bytes.
            if tensors is None:
                return None
            return tuple(right_padding.undo(right_padding.undo(tensor, dim=2), dim=3) for tensor in tensors)

        return replace(
            output,
            last_hidden_state=right_padding.undo(output.last_hidden_state, dim=1),
            hidden_states=states(output.hidden_states),
            attentions=weights(output.attentions),
            patcher_hidden_states=states(output.patcher_hidden_states),
            patcher_attentions=weights(output.patcher_attentions),
            local_encoder_hidden_states=states(output.local_encoder_hidden_states),
            local_encoder_attentions=weights(output.local_encoder_attentions),
        )

    def _model_output(
        self, last_hidden_state: torch.Tensor, cache: BltDiffusionCache | None, collector: LayerOutputs
    ) -> BltDiffusionModelOutput:
        """The output of a forward call from what its stacks recorded (see [`BltDiffusionModelOutput`])."""
        # The decoder may also have re-read the byte before the new ones (see `_decode`): keep the new bytes' rows.
        num_new = last_hidden_state.shape[1]
        if collector.record_attentions and not collector.attentions["local_decoder"]:
            logger.warning_once(
                f"`output_attentions=True`, but attention implementation {self.config._attn_implementation!r} "
                'returns no attention weights: the attentions are empty. Use `attn_implementation="eager"`.'
            )

        def hidden_states(stack: str) -> tuple[torch.Tensor, ...] | None:
            return tuple(collector.hidden_states[stack]) if collector.record_hidden_states else None

        def attentions(stack: str) -> tuple[torch.Tensor, ...] | None:
            return tuple(collector.attentions[stack]) if collector.record_attentions else None

        decoder_states = hidden_states("local_decoder")
        if decoder_states is not None:
            decoder_states = tuple(states[:, -num_new:] for states in decoder_states[:-1]) + (last_hidden_state,)
        decoder_attentions = attentions("local_decoder")
        if decoder_attentions is not None:
            decoder_attentions = tuple(weights[:, :, -num_new:] for weights in decoder_attentions)
        return BltDiffusionModelOutput(
            last_hidden_state=last_hidden_state,
            cache=cache,
            hidden_states=decoder_states,
            attentions=decoder_attentions,
            patcher_hidden_states=hidden_states("patcher"),
            patcher_attentions=attentions("patcher"),
            local_encoder_hidden_states=hidden_states("local_encoder"),
            local_encoder_attentions=attentions("local_encoder"),
            global_hidden_states=hidden_states("global_transformer"),
            global_attentions=attentions("global_transformer"),
        )

    def append_bytes(
        self,
        input_ids: torch.Tensor,
        cache: BltDiffusionCache | None = None,
        attention_mask: torch.Tensor | None = None,
        stepwise: bool = False,
        with_open_patch: bool = False,
    ) -> torch.Tensor:
        """Decoding interface: append `input_ids` to `cache` (or to an empty sequence) and decode them, with no
        checks and no outputs but the states, as every decoding step does.

        Args:
            input_ids (`torch.Tensor` of shape `(batch, new)`): int64 byte ids. Without a cache, a whole (left-padded)
                sequence; with one, the bytes that follow what the cache holds.
            cache (`BltDiffusionCache`, *optional*): updated in place.
            attention_mask (`torch.Tensor` of shape `(batch, new)`, *optional*): 0 for left padding; only on an
                empty cache.
            stepwise (`bool`, *optional*): with a cache, give every new byte the output that appending the bytes one
                at a time would give, as verifying a draft needs. It differs from a full forward only with
                `max_patch_length`, at bytes that close a patch (see `BltDiffusionCache`).
            with_open_patch (`bool`, *optional*): with a cache, also give the open patch the provisional latent that a
                diffusion block appended next reads (see `encode`).

        Returns:
            `torch.Tensor` of shape `(batch, new, decoder_hidden)`: decoder states, one per new byte.
        """
        return self._decode(cache, self.encode(input_ids, cache, attention_mask, with_open_patch), stepwise)

    def encode(
        self,
        input_ids: torch.Tensor,
        cache: BltDiffusionCache | None = None,
        attention_mask: torch.Tensor | None = None,
        with_open_patch: bool = False,
        keep_patch_keys: bool = False,
    ) -> EncodedBytes:
        """Everything but the local decoder: patcher, segmentation, encoder, and the global transformer on every
        patch the new bytes close. Arguments as in `append_bytes`; the cache's byte-level buffers (except the
        decoder's) and patch buffers are updated in place.

        `with_open_patch` (with a cache) also gives the open patch a provisional latent, as block decoding needs:
        see `decode_block`. `keep_patch_keys` (without a cache) keeps the global transformer's keys and values in
        `EncodedBytes.patch_keys`, as training blocks anchored inside patches need: see `decode_with_blocks`."""
        num_new = input_ids.shape[1]
        starts, byte_ends, slots, real = self._append_slots(input_ids, cache, attention_mask)
        positions = slots - starts[:, None]
        token_ids = input_ids.masked_fill(~real, 0)
        context_ids = self._bytes_with_context(token_ids, cache, starts, byte_ends)

        steps = step_runner(cache, num_new)
        fixed_keys = cache.fixed_byte_keys(num_new) if steps is not None else None
        patcher_context = None
        if self.patcher is not None:
            patcher_context = build_attention_context(
                starts,
                byte_ends,
                num_new,
                self.config.patcher_config.sliding_window,
                cache.patcher if cache is not None else None,
                fixed_keys,
            )
        window = self.config.local_attention_window_len
        encoder_context = build_attention_context(
            starts, byte_ends, num_new, window, cache.encoder if cache is not None else None, fixed_keys
        )
        entropies, byte_states = run_stack(
            steps, type(self).encode_new_bytes, self, context_ids, num_new, encoder_context, patcher_context
        )

        num_patches = cache.num_patches if cache is not None else torch.zeros_like(starts)
        open_patch_start = cache.open_patch_starts() if cache is not None else starts
        segmentation = self.segment(
            entropies, positions, real, (byte_ends - open_patch_start).clamp(min=0), num_patches, frontier=True
        )

        patch_keys = None
        if cache is None and keep_patch_keys:
            patch_keys = KeyValueBuffer.for_stack(
                self.config.global_config, input_ids.shape[0], num_new, byte_states.dtype, byte_states.device
            )
        # The one host read a step needs: whether the global transformer runs, where pooling looks, whether the
        # decoder lags.
        plan = StepPlan.read(segmentation.new_patches, open_patch_start, byte_ends, cache)
        latent_keys_values = self._close_patches(
            cache,
            byte_states,
            segmentation,
            plan,
            open_patch_start,
            byte_ends,
            starts,
            num_patches,
            with_open_patch,
            patch_keys,
        )
        if cache is not None:
            cache.append_bytes(slots, token_ids, byte_states, segmentation.ends_patch)
        return EncodedBytes(
            byte_states=byte_states,
            segmentation=segmentation,
            latent_keys_values=latent_keys_values,
            starts=starts,
            byte_ends=byte_ends,
            real=real,
            byte_context=encoder_context,
            patch_keys=patch_keys,
            token_ids=token_ids,
            decoder_lags=plan.decoder_lags,
            patches_closed=plan.max_new_patches > 0,
        )

    def _append_slots(
        self, input_ids: torch.Tensor, cache: BltDiffusionCache | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where new bytes go: `starts` (batch,) first real slot per row (set from `attention_mask` on an empty
        cache), `byte_ends` (batch,) bytes held before them, `slots` (batch, new) and `real` (batch, new), False for
        left padding."""
        batch_size, num_new = input_ids.shape
        device = input_ids.device
        if cache is None or cache.is_empty():
            starts = (
                torch.zeros(batch_size, dtype=torch.long, device=device)
                if attention_mask is None
                else left_padding(attention_mask)
            )
            if cache is not None:
                cache.start_rows(starts)
        else:
            starts = cache.starts
        byte_ends = cache.byte_ends if cache is not None else torch.zeros_like(starts)
        slots = byte_ends[:, None] + torch.arange(num_new, device=device)
        return starts, byte_ends, slots, slots >= starts[:, None]

    def _bytes_with_context(
        self,
        token_ids: torch.Tensor,
        cache: BltDiffusionCache | None,
        starts: torch.Tensor,
        byte_ends: torch.Tensor,
    ) -> torch.Tensor:
        """New bytes (batch, new) after the bytes before them that their hash n-grams read, from the cache when there
        is one: (batch, context + new), as `encode_new_bytes` takes them."""
        if cache is None:
            return token_ids
        # One slot more for a provisional open-patch latent.
        cache.reserve_after_ends(token_ids.shape[1] + 1)
        history = bytes_before(cache.token_ids, starts, byte_ends, self.ngram_hasher.window - 1)
        return torch.cat([history, token_ids], dim=1)

    def decode_bytes(
        self,
        byte_states: torch.Tensor,
        latent_keys_values: list[tuple[torch.Tensor, torch.Tensor]],
        latent_targets: torch.Tensor,
        context: AttentionContext,
    ) -> torch.Tensor:
        """Local decoder states (batch, queries, decoder_hidden) of `byte_states` (batch, queries, encoder_hidden),
        query i cross-attending patch `latent_targets[:, i]` of `latent_keys_values` (per cross-attention layer, keys
        and values (batch, patches, k, kv_heads, head_dim)): one function, so that a compiled step picks the latents
        and decodes in one graph."""
        return self.local_decoder(byte_states, gather_latents(latent_keys_values, latent_targets), context)

    def encode_new_bytes(
        self,
        context_ids: torch.Tensor,
        num_new: int,
        context: AttentionContext,
        patcher_context: AttentionContext | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Local encoder states (batch, num_new, encoder_hidden) of the last `num_new` bytes of `context_ids`
        (batch, context + num_new), embedded with their hash n-grams, and with a `patcher_context` the patcher's
        entropies of the same bytes (batch, num_new), else None: one function, so that a compiled step runs the
        patcher, embeds and encodes in one graph."""
        new_ids = context_ids[:, -num_new:]
        entropies = None if patcher_context is None else self.patcher(new_ids, patcher_context)
        return entropies, self.local_encoder(self.embed_bytes(context_ids, num_new), context)

    def draft_byte(self, cache: BltDiffusionCache, input_ids: torch.Tensor) -> torch.Tensor:
        """Append one drafted byte per row (batch, 1) to the encoder and decoder only, for self-speculative drafting.

        The patcher does not run and no patch closes, so the byte reads the last closed latent, as every byte of an
        open patch does, and the global transformer does not run. The caller rolls the encoder and decoder back
        (`BltDiffusionCache.crop` to the lengths before drafting) before the drafted bytes are verified by
        `append_bytes`, which is why only the byte itself is stored (the next drafted byte's hash n-grams read it):
        its encoder state and patch end are written by the verifying call.

        Returns:
            `torch.Tensor` of shape `(batch, 1, decoder_hidden)`: the drafted byte's decoder state.
        """
        starts, byte_ends, slots, real = self._append_slots(input_ids, cache, None)
        context_ids = self._bytes_with_context(input_ids, cache, starts, byte_ends)
        decoder_lags = None if cache.decoder_may_lag else False
        steps = step_runner(cache, 1)
        encoder_context = build_attention_context(
            starts,
            byte_ends,
            1,
            self.config.local_attention_window_len,
            cache.encoder,
            cache.fixed_byte_keys(1) if steps is not None else None,
        )
        _, byte_states = run_stack(steps, type(self).encode_new_bytes, self, context_ids, 1, encoder_context)
        cache.append_draft_byte(slots, input_ids)
        num_patches = cache.num_patches[:, None]
        open_patch = PatchSegmentation(
            ends_patch=torch.zeros_like(real),
            patch_index=num_patches,
            decoder_target=(num_patches - 1).clamp(min=0),
            new_patches=torch.zeros_like(cache.num_patches),
        )
        encoded = EncodedBytes(
            byte_states,
            open_patch,
            cache.latent_keys_values,
            starts,
            byte_ends,
            real,
            encoder_context,
            decoder_lags=decoder_lags,
            patches_closed=False,
        )
        return self._decode(cache, encoded)

    def _close_patches(
        self,
        cache: BltDiffusionCache | None,
        byte_states: torch.Tensor,
        segmentation: PatchSegmentation,
        plan: StepPlan,
        open_patch_start: torch.Tensor,
        byte_ends: torch.Tensor,
        starts: torch.Tensor,
        num_patches: torch.Tensor,
        with_open_patch: bool = False,
        patch_keys: KeyValueBuffer | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pool, globally encode and project the patches closed by this call's bytes, at most
        `plan.max_new_patches` in a row.

        With `with_open_patch` (caching only), the open patch is pooled too, as if it were closed, in the same
        global call: its latent is provisional, stored one slot past the closed patches and not counted in them.
        Without a cache, the global keys and values go to `patch_keys` when given.

        Returns, per decoder cross-attention layer, the keys and values of every patch the decoder may read: the
        cache's buffers when caching, else those of this call's patches (batch, patches, k, kv_heads, head_dim).
        """
        num_pooled = plan.max_new_patches + int(with_open_patch)
        if num_pooled == 0:
            return cache.latent_keys_values if cache is not None else []
        device = byte_states.device
        batch_size = byte_states.shape[0]
        if cache is not None:
            # The open patch's earlier bytes live in the cache; pool over them and the new bytes together.
            window_start, window_end = plan.pooling_window
            history_states = cache.encoder_states[:, window_start:window_end]
            history_slots = torch.arange(window_start, window_start + history_states.shape[1], device=device)
            in_open_patch = (history_slots >= open_patch_start[:, None]) & (history_slots < byte_ends[:, None])
            history_patch = torch.where(in_open_patch, 0, num_pooled)
            window_states = torch.cat([history_states.to(byte_states.dtype), byte_states], dim=1)
        else:
            window_states = byte_states
            history_patch = byte_states.new_zeros(batch_size, 0, dtype=torch.long)
        local_patch = segmentation.patch_index - num_patches[:, None]
        slots_new = byte_ends[:, None] + torch.arange(byte_states.shape[1], device=device)
        # Bytes after a row's last patch end form its open patch, local index `new_patches`.
        pooled = slots_new >= starts[:, None]
        if not with_open_patch:
            pooled &= local_patch < segmentation.new_patches[:, None]
        local_patch = torch.where(pooled, local_patch, num_pooled)
        byte_patch_index = torch.cat([history_patch, local_patch], dim=1)
        patch_embeddings = self.local_encoder.pool_patches(window_states, byte_patch_index, num_pooled)

        steps = step_runner(cache, num_pooled)
        global_context = build_attention_context(
            torch.zeros_like(num_patches),
            num_patches,
            num_pooled,
            None,
            cache.global_transformer if cache is not None else patch_keys,
            cache.fixed_patch_keys(num_pooled) if steps is not None else None,
        )
        global_states = run_stack(steps, self.global_transformer, patch_embeddings, global_context)
        new_keys_values = self.local_decoder.latent_keys_values(global_states)
        if cache is None:
            return new_keys_values
        cache.append_patches(new_keys_values, segmentation.new_patches)
        return cache.latent_keys_values

    def _decode(self, cache: BltDiffusionCache | None, encoded: EncodedBytes, stepwise: bool = False) -> torch.Tensor:
        """Run the local decoder on the new bytes, re-decoding the previous newest byte when its latent changed."""
        byte_states = encoded.byte_states
        num_new = byte_states.shape[1]
        decoder_targets = encoded.segmentation.decoder_target
        decoder_start = encoded.byte_ends
        decoder_lags = encoded.decoder_lags
        if decoder_lags is None and cache is not None:
            decoder_lags = bool(cache.decoder_lag_rows(encoded.byte_ends).any())
        if decoder_lags:
            # The previous newest byte was decoded against a provisional latent (see `BltDiffusionCache`): decode it
            # again with its final one, in every row to keep one shape (identically where it was final already).
            decoder_start = encoded.byte_ends - 1
            rows = torch.arange(byte_states.shape[0], device=byte_states.device)
            previous_state = cache.encoder_states[rows, decoder_start].to(byte_states.dtype)
            previous_target = (cache.num_patches - encoded.segmentation.new_patches - 1).clamp(min=0)
            byte_states = torch.cat([previous_state[:, None], byte_states], dim=1)
            decoder_targets = torch.cat([previous_target[:, None], decoder_targets], dim=1)
        twins = None
        if stepwise and cache is not None and cache.newest_byte_is_provisional:
            twins = FrontierTwins.build(cache, encoded)
        if twins is None:
            # A single new byte (with maybe the previous one again) runs the compiled decoder step, as it ran the
            # encoder's.
            steps = step_runner(cache, num_new)
            decoder_context = self._decoder_context(cache, encoded, decoder_start, byte_states.shape[1], steps)
            decoder_states = run_stack(
                steps,
                type(self).decode_bytes,
                self,
                byte_states,
                encoded.latent_keys_values,
                decoder_targets,
                decoder_context,
            )[:, -num_new:]
        else:
            decoder_states = self._decode_with_twins(
                cache, encoded, byte_states, decoder_targets, decoder_start, twins
            )
        if cache is not None:
            cache.mark_decoded(
                decoder_start + byte_states.shape[1],
                encoded.segmentation.ends_patch[:, -1],
                caught_up=True,
                newest_may_close_patch=encoded.patches_closed,
            )
        return decoder_states

    def _decoder_context(
        self,
        cache: BltDiffusionCache | None,
        encoded: EncodedBytes,
        decoder_start: torch.Tensor,
        num_queries: int,
        steps: CompiledDecodingSteps | None,
    ) -> AttentionContext:
        """The decoder's attention context for `num_queries` bytes from slot `decoder_start` (batch,) on, in
        fixed-shape form when compiled `steps` run the decoder."""
        buffer = cache.decoder if cache is not None else None
        if num_queries == encoded.byte_states.shape[1]:
            # Exactly the encoder's bytes, positions and window (and form): only the buffer differs.
            return replace(encoded.byte_context, buffer=buffer)
        return build_attention_context(
            encoded.starts,
            decoder_start,
            num_queries,
            self.config.local_attention_window_len,
            buffer,
            # This call's bytes are in the cache's bound already.
            cache.fixed_byte_keys(0) if steps is not None else None,
        )

    def _decode_with_twins(
        self,
        cache: BltDiffusionCache,
        encoded: EncodedBytes,
        byte_states: torch.Tensor,
        decoder_targets: torch.Tensor,
        decoder_start: torch.Tensor,
        twins: FrontierTwins,
    ) -> torch.Tensor:
        """Decode the queries `byte_states` (batch, queries, hidden), whose last ones are the new bytes, and the
        twins in one decoder call; returns the new bytes' states (batch, new, hidden), the twins' outputs in place of
        those of the bytes they copy.

        A twin writes its keys past the row's end, so the bytes' queries, which read nothing after themselves, never
        see it; it reads the bytes' keys of the same layer before it, as it would once they were in the cache.
        """
        num_queries, num_new = byte_states.shape[1], encoded.byte_states.shape[1]
        slots = decoder_start[:, None] + torch.arange(num_queries, device=byte_states.device)
        hidden_size = byte_states.shape[-1]
        twin_inputs = encoded.byte_states.gather(1, twins.index[..., None].expand(-1, -1, hidden_size))
        query_slots = torch.cat([slots, twins.slots], dim=1)
        context = build_query_attention_context(
            encoded.starts,
            query_slots,
            visible_until=query_slots,
            sliding_window=self.config.local_attention_window_len,
            buffer=cache.decoder,
            write_slots=torch.cat([slots, twins.write_slots], dim=1),
        )
        outputs = self.decode_bytes(
            torch.cat([byte_states, twin_inputs], dim=1),
            encoded.latent_keys_values,
            torch.cat([decoder_targets, twins.targets], dim=1),
            context,
        )
        decoder_states, twin_states = outputs[:, num_queries - num_new : num_queries], outputs[:, num_queries:]
        index = twins.index[..., None].expand(-1, -1, decoder_states.shape[-1])
        current = decoder_states.gather(1, index)
        return decoder_states.scatter(1, index, torch.where(twins.is_twin[..., None], twin_states, current))


@dataclass
class BltDiffusionCausalLMOutput(ModelOutput):
    """
    Output of [`BltDiffusionForCausalLM`].

    loss (`torch.FloatTensor` of shape `()`, *optional*): with `labels`, the next-byte cross-entropy; for a BLT-D
        model (`diffusion_block_size` > 0) `clean_loss + config.diffusion_loss_weight * diffusion_loss`.
    logits (`torch.FloatTensor` of shape `(batch, kept, vocab)`): next-byte logits for the kept positions.
    cache (`BltDiffusionCache`, *optional*): the updated cache, when one was used (transformers 5 names this field
        `cache`, formerly `past_key_values`).
    hidden_states, attentions, patcher_*, local_encoder_*, global_* (*optional*): every stack's hidden states and
        attention weights, with `output_hidden_states` and `output_attentions`: see [`BltDiffusionModelOutput`].
    clean_loss (`torch.FloatTensor` of shape `()`, *optional*): BLT-D only, the next-byte term (Eq. 5 of the paper);
        with the default reduction it equals a plain BLT's loss, so it gives held-out bits per byte.
    diffusion_loss (`torch.FloatTensor` of shape `()`, *optional*): BLT-D only, the masked-cell term (Eq. 6).
    diffusion_logits (`torch.FloatTensor` of shape `(batch, blocks, B, vocab)`, *optional*): BLT-D only, each block
        cell's logits for the byte at its own position.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: BltDiffusionCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    patcher_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    patcher_attentions: tuple[torch.FloatTensor, ...] | None = None
    local_encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    local_encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    global_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    global_attentions: tuple[torch.FloatTensor, ...] | None = None
    clean_loss: torch.FloatTensor | None = None
    diffusion_loss: torch.FloatTensor | None = None
    diffusion_logits: torch.FloatTensor | None = None


class BltDiffusionForCausalLM(BltDiffusionPreTrainedModel, BltDiffusionGenerationMixin):
    """BLT with a language-modelling head, cached incremental inference and the BLT-D/BLT-S decoding strategies.

    Example:

    ```python
    >>> from blt_diffusion import BltDiffusionForCausalLM, BltDiffusionTokenizer
    >>> model = BltDiffusionForCausalLM.from_pretrained("path/to/checkpoint")
    >>> tokenizer = BltDiffusionTokenizer()
    >>> inputs = tokenizer("def add(a, b):", return_tensors="pt")
    >>> tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0])
    ```
    """

    generation_config_class = BltDiffusionGenerationConfig

    def __init__(self, config: BltDiffusionConfig):
        super().__init__(config)
        self.model = BltDiffusionModel(config)
        self.lm_head = nn.Linear(config.decoder_config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, *args, **kwargs):
        """transformers' `save_pretrained`, plus a model card (`README.md`, see `modelcard_blt_diffusion.py`) where the
        directory has none: a card already there is never overwritten."""
        super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        if is_main_process:
            write_model_card(save_directory, self)

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, *args, **kwargs):
        # `push_to_hub` (and `save_pretrained(push_to_hub=True)`) replace README.md by the Hub repo's card just before
        # uploading, or by transformers' placeholder where the repo has none: the placeholder gives way to this
        # model's card, which keeps its tags.
        card_path = Path(working_dir) / MODEL_CARD_NAME
        if is_transformers_placeholder(card_path):
            placeholder_tags = ModelCard.load(card_path).data.tags or []
            write_model_card(
                working_dir,
                self,
                overwrite=True,
                name=repo_id.split("/")[-1],
                model_id=repo_id,
                extra_tags=placeholder_tags,
            )
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def new_cache(self, batch_size: int, capacity: int, device: torch.device | str | None = None) -> BltDiffusionCache:
        """An empty cache for `batch_size` rows with room for `capacity` bytes each (it grows if needed)."""
        return BltDiffusionCache(self.config, batch_size, capacity, self.dtype, device or self.device)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: BltDiffusionCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        diffusion_blocks: DiffusionBlocks | None = None,
        **kwargs,
    ) -> BltDiffusionCausalLMOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): byte ids. With a non-empty `cache`, the bytes
                that follow what the cache holds.
            attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*): 0 for padding, before or after each
                row's bytes (labels at padding should be -100); padding only in the first call on a cache. Every row
                gives the logits it gives alone: see [`BltDiffusionModel.forward`].
            cache (`BltDiffusionCache`, *optional*): updated in place; `use_cache=True` creates one. Formerly
                `past_key_values`, still accepted until transformers 5.40 as for every transformers model.
            labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*): targets for the shifted next-byte loss,
                -100 to ignore.
            logits_to_keep (`int` or `torch.Tensor`, *optional*): which positions get logits, as in transformers'
                `slice_logits_to_keep`: an int keeps the last n (0: all), a tensor names positions or masks them.
            output_attentions, output_hidden_states (`bool`, *optional*): return every stack's attention weights and
                hidden states (see [`BltDiffusionModelOutput`]).
            return_dict (`bool`, *optional*): False returns `to_tuple()` of the output; defaults to
                `config.return_dict`.
            diffusion_blocks (`DiffusionBlocks`, *optional*): BLT-D only, corrupted blocks to decode instead of
                sampling them (for reproducible evaluation); see `sample_diffusion_blocks`.

        A BLT-D model given `labels` (or `diffusion_blocks`) also decodes corrupted blocks and returns the
        block-diffusion objective: `loss = clean_loss + config.diffusion_loss_weight * diffusion_loss` (see
        `diffusion_losses`).
        """
        diffusion = diffusion_blocks is not None or (labels is not None and self.config.diffusion_block_size > 0)
        if diffusion:
            self.validate_forward_inputs(input_ids, attention_mask, inputs_embeds, cache)
            self._refuse_with_block_diffusion(
                cache, use_cache, logits_to_keep, output_attentions, output_hidden_states
            )
            return self._forward_diffusion(input_ids.long(), attention_mask, labels, diffusion_blocks, **kwargs)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.compute_logits(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return BltDiffusionCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            patcher_hidden_states=outputs.patcher_hidden_states,
            patcher_attentions=outputs.patcher_attentions,
            local_encoder_hidden_states=outputs.local_encoder_hidden_states,
            local_encoder_attentions=outputs.local_encoder_attentions,
            global_hidden_states=outputs.global_hidden_states,
            global_attentions=outputs.global_attentions,
        )

    def _refuse_with_block_diffusion(
        self,
        cache: BltDiffusionCache | None,
        use_cache: bool | None,
        logits_to_keep: int | torch.Tensor,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> None:
        """What the block-diffusion objective cannot honour: it decodes whole sequences, clean bytes and block cells in
        one pass whose attention is computed in parts, and its loss needs every position's logits."""
        if cache is not None or use_cache:
            raise ValueError("The block-diffusion objective runs on whole sequences: do not pass a cache.")
        if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("The block-diffusion objective needs every position's logits: leave `logits_to_keep` 0.")
        config = self.config
        if output_attentions or (output_attentions is None and config.output_attentions):
            raise ValueError("`output_attentions` is not supported with the block-diffusion objective.")
        if output_hidden_states or (output_hidden_states is None and config.output_hidden_states):
            raise ValueError("`output_hidden_states` is not supported with the block-diffusion objective.")

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The LM head: decoder states (..., decoder_hidden) -> float32 next-byte logits (..., vocab)."""
        return self.lm_head(hidden_states).float()

    def append_bytes(
        self,
        cache: BltDiffusionCache,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        stepwise: bool = False,
        open_block: bool = False,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Decoding interface: append bytes to `cache` through the whole model and return next-byte logits.

        Args:
            cache (`BltDiffusionCache`): updated in place.
            input_ids (`torch.Tensor` of shape `(batch, new)`): bytes after those the cache holds (the prompt, left
                padded under `attention_mask`, on an empty cache).
            stepwise (`bool`): give every byte the output that appending the bytes one at a time would give, as
                verifying a draft needs.
            open_block (`bool`): also give the open patch the provisional latent that a diffusion block appended
                next reads, so that `block_logits` can follow.
            last_only (`bool`): return only the logits after the last byte.

        Returns:
            `torch.Tensor` of shape `(batch, new, vocab)`, or `(batch, vocab)` with `last_only`: the logits of the
            byte following each new byte.
        """
        hidden_states = self.model.append_bytes(
            input_ids, cache, attention_mask, stepwise=stepwise, with_open_patch=open_block
        )
        return self.compute_logits(hidden_states[:, -1] if last_only else hidden_states)

    def open_block(
        self, cache: BltDiffusionCache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> None:
        """Decoding interface, BLT-D: append committed bytes (batch, new) to every level but the local decoder (it
        reads them with the block's first denoising step) and open a diffusion block after them."""
        self.model.encode(input_ids, cache, attention_mask, with_open_patch=True)

    def block_logits(self, cache: BltDiffusionCache, cell_ids: torch.Tensor) -> torch.Tensor:
        """Decoding interface, BLT-D: one denoising step of the block opened after the cache's bytes.

        `cell_ids` (batch, block): byte ids, `config.diffusion_mask_id` for masked cells -> each cell's logits
        (batch, block, vocab). The cache keeps nothing of the cells.
        """
        return self.compute_logits(self.model.decode_block(cache, cell_ids))

    def draft_logits(self, cache: BltDiffusionCache, input_ids: torch.Tensor) -> torch.Tensor:
        """Decoding interface, BLT-S: append one drafted byte per row (batch, 1) to the local encoder and decoder
        only, reading the last closed latent, and return the logits after it (batch, vocab). Crop the cache back
        before the drafts are verified with `append_bytes(..., stepwise=True)`."""
        return self.compute_logits(self.model.draft_byte(cache, input_ids)[:, -1])

    def _forward_diffusion(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        diffusion_blocks: DiffusionBlocks | None,
        **kwargs,
    ) -> BltDiffusionCausalLMOutput:
        """Clean bytes and corrupted blocks in one decoder pass; the encoder and global transformer see only clean
        bytes."""
        may_anchor_mid_patch = self.config.diffusion_mid_patch_share > 0 or (
            diffusion_blocks is not None and bool(diffusion_blocks.mid_patch.any())
        )
        encoded = self.model.encode(input_ids, attention_mask=attention_mask, keep_patch_keys=may_anchor_mid_patch)
        if diffusion_blocks is None:
            diffusion_blocks = sample_diffusion_blocks(self.config, input_ids, labels, attention_mask, encoded)
        clean_states, cell_states = self.model.decode_with_blocks(encoded, diffusion_blocks)
        logits = self.compute_logits(clean_states)
        diffusion_logits = self.compute_logits(cell_states)
        clean_loss = diffusion_loss = loss = None
        if labels is not None:
            clean_loss, diffusion_loss = diffusion_losses(
                self.config, self.loss_function, logits, diffusion_logits, labels, diffusion_blocks, **kwargs
            )
            loss = clean_loss + self.config.diffusion_loss_weight * diffusion_loss
        return BltDiffusionCausalLMOutput(
            loss=loss,
            logits=logits,
            clean_loss=clean_loss,
            diffusion_loss=diffusion_loss,
            diffusion_logits=diffusion_logits,
        )


__all__ = ["BltDiffusionForCausalLM", "BltDiffusionModel", "BltDiffusionPreTrainedModel"]
