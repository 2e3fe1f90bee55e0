"""Configuration of the Byte Latent Transformer with block diffusion (BLT, BLT-D, BLT-S, BLT-DV)."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.models.blt.configuration_blt import (
    BltConfig,
    BltGlobalTransformerConfig,
    BltLocalDecoderConfig,
    BltLocalEncoderConfig,
    BltPatcherConfig,
)

# The byte vocabulary is fixed by the tokenizer, so these ids are part of the format, not of a checkpoint.
from .tokenization_blt_diffusion import BOS_ID, EOS_ID, MASK_ID, PAD_ID

# Sizes and counts that must be positive integers wherever a configuration or sub-configuration has them (None keeps
# a default or means "unlimited"). A zero or negative one builds a model without a module (no global layers) or
# fails deep inside PyTorch.
POSITIVE_INTEGER_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "max_position_embeddings",
    "hidden_size_global",
    "cross_attn_k",
    "sliding_window",
    "local_attention_window_len",
    "encoder_hash_byte_group_vocab",
    "encoder_hash_byte_group_nb_functions",
)


def check_positive_integers(config: PreTrainedConfig | dict | None, prefix: str = "") -> None:
    """Raise a `ValueError` naming the first of `POSITIVE_INTEGER_FIELDS` that `config` (a configuration, or the
    dict a sub-configuration is built from) sets to anything but a positive integer; `prefix` names the
    sub-configuration (`"global_config."`)."""
    if config is None:
        return
    values = config if isinstance(config, dict) else vars(config)
    for name in POSITIVE_INTEGER_FIELDS:
        value = values.get(name)
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"`{prefix}{name}` must be a positive integer, got {value!r}.")


def is_entropy_threshold(value: object) -> bool:
    """Whether `value` can split bytes by entropy: a finite number >= 0 (entropies are, so a negative threshold
    would only disguise 0)."""
    return isinstance(value, float | int) and math.isfinite(value) and value >= 0


@strict
class BltDiffusionConfig(BltConfig):
    r"""
    Configuration of [`BltDiffusionForCausalLM`].

    It extends transformers' `BltConfig` field for field, so a stock BLT checkpoint's `config.json` (model_type
    `"blt"`) loads into it unchanged, and it reuses stock BLT's sub-configurations (`patcher_config`,
    `encoder_config`, `global_config`, `decoder_config`) so that the shared modules keep BLT's exact semantics.

    diffusion_block_size (`int`, *optional*, defaults to 0):
        Block size B of the block-diffusion objective (BLT-D). 0 means a plain BLT model: no diffusion loss and no
        diffusion parameters.
    diffusion_loss_reduction (`str`, *optional*, defaults to `"mean"`):
        How the two BLT-D loss terms are normalised: `"mean"` (each per byte, weighted 1:1) or `"sum"` (the paper's
        sums, sharing one normaliser). See `block_diffusion_blt_diffusion.diffusion_losses`.
    diffusion_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight of the diffusion term in the training loss, `clean_loss + weight * diffusion_loss`. The paper weights
        the terms 1:1 and names a lower weight, more emphasis on next-byte prediction, as future work; below 1 it
        protects next-byte quality (and so verification) while the diffusion head learns.
    diffusion_min_mask_ratio (`float`, *optional*, defaults to 0.001):
        Lower end of the per-example masking probability t, drawn uniformly from [this, 1] so that the 1/t loss
        weight stays bounded.
    diffusion_mid_patch_share (`float`, *optional*, defaults to 0.0):
        Share of training blocks anchored inside a patch instead of at its start, as most blocks fall at inference;
        their cells read the open patch's provisional latent, exactly as decoding gives it. 0 anchors every block at
        a patch start (the paper's layout).
    diffusion_distillation_weight (`float`, *optional*, defaults to 0.0):
        Weight of self-distillation in the masked-cell loss: each masked cell also learns the model's own
        autoregressive distribution for its byte (teacher-forced on the clean bytes before it). 0 trains on the
        data alone, as the paper does.
    diffusion_encoder_gradient_scale (`float`, *optional*, defaults to 1.0):
        With `diffusion_cell_embedding="encoder"`, the factor on the gradient that the diffusion loss sends into the
        local encoder through the cells' pass. The encoder also makes every clean byte's state, so below 1 it learns
        mostly for next-byte prediction and keeps its quality while the decoder still learns the cells fully.
    diffusion_cell_embedding (`str`, *optional*, defaults to `"table"`):
        How diffusion cells reach the local decoder: `"table"`, a byte-and-mask embedding of their own
        (`diffusion_embed_tokens`, decoder width); or `"encoder"`, through the local encoder's byte and hash n-gram
        embeddings and its layers, as clean bytes do, with one new mask embedding (encoder width). `"encoder"`
        costs a local-encoder pass over the block per denoising step.
    diffusion_mask_id (`int`, *optional*, defaults to 260):
        Id of the `<mask>` input used by diffusion decoding. It lies outside the 260 byte ids of the model's
        vocabulary on purpose: the clean byte embeddings of a stock checkpoint stay untouched.
    num_hidden_layers (`int`, *optional*):
        Depth of the global transformer, filled in automatically. Generic transformers machinery (caches,
        generation, device maps) expects every decoder-style config to have it; stock `BltConfig` does not, which
        is why stock BLT's default `generate()` crashes.
    hidden_size (`int`, *optional*):
        Width of the global transformer, filled in automatically for the same reason.
    num_attention_heads (`int`, *optional*):
        Heads of the global transformer, filled in automatically for the same reason.

    Example:

    ```python
    >>> from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM
    >>> config = BltDiffusionConfig(diffusion_block_size=8)
    >>> model = BltDiffusionForCausalLM(config)
    ```
    """

    model_type = "blt_diffusion"
    sub_configs_defaults = {
        "patcher_config": BltPatcherConfig,
        "encoder_config": BltLocalEncoderConfig,
        "decoder_config": BltLocalDecoderConfig,
        "global_config": BltGlobalTransformerConfig,
    }

    diffusion_block_size: int = 0
    diffusion_mask_id: int = MASK_ID
    diffusion_loss_reduction: str = "mean"
    diffusion_loss_weight: float = 1.0
    diffusion_min_mask_ratio: float = 1e-3
    diffusion_mid_patch_share: float = 0.0
    diffusion_distillation_weight: float = 0.0
    diffusion_cell_embedding: str = "table"
    diffusion_encoder_gradient_scale: float = 1.0
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    pad_token_id: int | None = PAD_ID
    bos_token_id: int | None = BOS_ID
    eos_token_id: int | list[int] | None = EOS_ID

    def __post_init__(self, **kwargs):
        # A stock checkpoint's dict says model_type "blt"; the class attribute must win.
        kwargs.pop("model_type", None)
        # Stock sub-configurations divide by their head counts as they are built.
        for name in self.sub_configs_defaults:
            check_positive_integers(getattr(self, name), prefix=f"{name}.")
        super().__post_init__(**kwargs)
        self.num_hidden_layers = self.global_config.num_hidden_layers
        self.hidden_size = self.global_config.hidden_size
        self.num_attention_heads = self.global_config.num_attention_heads
        # Stock BLT checkpoints often leave the special ids unset; the byte convention fixes them.
        self.bos_token_id = BOS_ID if self.bos_token_id is None else self.bos_token_id
        self.eos_token_id = EOS_ID if self.eos_token_id is None else self.eos_token_id
        self.pad_token_id = PAD_ID if self.pad_token_id is None else self.pad_token_id
        # `@strict` validates next, but reports a failure as a `StrictDataclassClassValidationError`, which is not a
        # `ValueError`: validating here first raises the `ValueError` itself.
        self.validate_architecture()

    def validate_architecture(self):
        """Part of `@strict` validation: reject settings the model cannot run with, naming the field."""
        check_positive_integers(self)
        for name in self.sub_configs_defaults:
            check_positive_integers(getattr(self, name), prefix=f"{name}.")
        if self.patch_in_forward and not is_entropy_threshold(self.patching_threshold):
            raise ValueError(
                "`patching_threshold` must be a finite number of nats >= 0 with entropy patching "
                f"(`patch_in_forward=True`), got {self.patching_threshold}."
            )
        if self.diffusion_block_size < 0:
            raise ValueError(
                f"`diffusion_block_size` must be >= 0 (0 disables diffusion), got {self.diffusion_block_size}."
            )
        if self.diffusion_loss_reduction not in ("mean", "sum"):
            raise ValueError(
                f"`diffusion_loss_reduction` must be 'mean' or 'sum', got {self.diffusion_loss_reduction!r}."
            )
        if not 0 < self.diffusion_min_mask_ratio <= 1:
            raise ValueError(f"`diffusion_min_mask_ratio` must lie in (0, 1], got {self.diffusion_min_mask_ratio}.")
        if self.diffusion_cell_embedding not in ("table", "encoder"):
            raise ValueError(
                f"`diffusion_cell_embedding` must be 'table' or 'encoder', got {self.diffusion_cell_embedding!r}."
            )
        if not self.diffusion_distillation_weight >= 0:
            raise ValueError(
                f"`diffusion_distillation_weight` must be >= 0, got {self.diffusion_distillation_weight}."
            )
        if not (isinstance(self.diffusion_loss_weight, (int, float)) and 0 < self.diffusion_loss_weight < math.inf):
            raise ValueError(
                f"`diffusion_loss_weight` must be a positive finite number, got {self.diffusion_loss_weight}."
            )
        if not 0 <= self.diffusion_encoder_gradient_scale <= 1:
            raise ValueError(
                f"`diffusion_encoder_gradient_scale` must lie in [0, 1], got {self.diffusion_encoder_gradient_scale}."
            )
        if not 0 <= self.diffusion_mid_patch_share <= 1:
            raise ValueError(f"`diffusion_mid_patch_share` must lie in [0, 1], got {self.diffusion_mid_patch_share}.")
        if self.diffusion_mask_id < self.vocab_size:
            raise ValueError(
                f"`diffusion_mask_id` ({self.diffusion_mask_id}) must lie outside the byte vocabulary (>= vocab_size "
                f"{self.vocab_size}) so that it never collides with a byte."
            )
        if self.max_patch_length is not None and self.max_patch_length < 1:
            raise ValueError(
                f"`max_patch_length` must be a positive number of bytes or None, got {self.max_patch_length}."
            )
        if self.patch_in_forward and self.patching_mode != "entropy":
            raise ValueError(
                "Only entropy patching is supported with `patch_in_forward=True`, got "
                f"`patching_mode={self.patching_mode!r}`."
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """Read a `config.json`, converting a stock BLT one (model_type `"blt"`) on the fly."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == BltConfig.model_type:
            config_dict["model_type"] = cls.model_type
            config_dict.pop("architectures", None)
            # Stock BLT reads a missing threshold as its default (BLT-1B's), and so does a converted stock checkpoint.
            config_dict.setdefault("patching_threshold", BltConfig.patching_threshold)
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "BltDiffusionConfig":
        """Build a configuration from a saved `config.json`'s dict (`kwargs` override fields), refusing one of an
        entropy-patched model without `patching_threshold`: the default would silently replace the threshold that
        the model was trained with, and change every patch. (`save_pretrained` always writes it.)"""
        if (
            config_dict.get("patch_in_forward", cls.patch_in_forward)
            and "patching_threshold" not in config_dict
            and "patching_threshold" not in kwargs
        ):
            raise ValueError(
                "The config of an entropy-patched model (`patch_in_forward=True`) must give `patching_threshold`, "
                "the threshold it was trained with; it is missing."
            )
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_blt_config(cls, blt_config: BltConfig, **overrides) -> "BltDiffusionConfig":
        """Build a `BltDiffusionConfig` from a stock transformers `BltConfig`, optionally overriding fields.

        Args:
            blt_config (`BltConfig`): configuration of a stock `transformers.BltForCausalLM`.
            overrides: fields to set on the result, for example `diffusion_block_size=8`.
        """
        config_dict = blt_config.to_dict()
        config_dict.pop("model_type", None)
        config_dict.pop("architectures", None)
        config_dict.update(overrides)
        return cls(**config_dict)


__all__ = ["BltDiffusionConfig"]
