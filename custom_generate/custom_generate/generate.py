"""Cached autoregressive decoding and BLT-S (self-speculative decoding) for stock transformers BLT checkpoints.

    model = BltForCausalLM.from_pretrained(...)
    model.generate(**inputs, custom_generate=REPO, trust_remote_code=True, decoding="self_speculative")

Stock `BltForCausalLM.generate` runs with `use_cache=False` only (its cache crashes or changes the output), so every
byte re-encodes the whole prefix. Here the stock model is viewed, without copying a weight, as the `blt-diffusion`
package's `BltDiffusionForCausalLM`, whose modules sit beside this file: its `generate()` keeps an incremental cache at
every level and decodes with the strategy named by `decoding`. Greedy output is byte for byte stock's
`generate(use_cache=False)`. Block diffusion (`"diffusion"`, `"diffusion_verified"`) needs a model trained for it,
which a stock checkpoint is not.
"""

from contextlib import contextmanager

from transformers.utils import logging

from .configuration_blt_diffusion import BltDiffusionConfig
from .modeling_blt_diffusion import BltDiffusionForCausalLM

STOCK_MODEL_TYPE = "blt"
# Arguments of `GenerationMixin.generate`, handed to every custom generate function, that BLT decoding does not offer.
UNSUPPORTED_ARGUMENTS = (
    "prefix_allowed_tokens_fn",
    "synced_gpus",
    "assistant_model",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
)


def generate(model, **kwargs):
    """Generate with the stock BLT `model` as `BltDiffusionForCausalLM.generate` does.

    Takes what `model.generate` takes (`input_ids` or `inputs`, `attention_mask`, `generation_config`,
    `max_new_tokens`, `do_sample`, `logits_processor`, `stopping_criteria`, `streamer`, `return_dict_in_generate`,
    ...) plus `decoding` (`"autoregressive"`, the default, or `"self_speculative"`) and `draft_length`. The model's own
    generation config applies where no argument overrides it, as with stock `generate`.

    Returns:
        The sequences (batch, prompt + new bytes), or with `return_dict_in_generate=True` an output that also holds
        per-row costs (`decoder_nfe`, `global_nfe`, `patcher_nfe`, `memory_bandwidth_gb`, `acceptance_rate`).
    """
    for name in UNSUPPORTED_ARGUMENTS:
        if kwargs.pop(name, None) is not None:
            raise ValueError(f"BLT decoding does not support `{name}`.")
    generation_config = kwargs.pop("generation_config", None) or model.generation_config
    return as_blt_diffusion(model).generate(generation_config=generation_config, **kwargs)


def as_blt_diffusion(model) -> BltDiffusionForCausalLM:
    """The stock BLT `model` as a `BltDiffusionForCausalLM` holding the very same weight tensors."""
    model_type = model.config.model_type
    if model_type != STOCK_MODEL_TYPE:
        raise ValueError(
            f"This custom generate() decodes stock transformers BLT models (model type {STOCK_MODEL_TYPE!r}), not "
            f"{model_type!r}."
        )
    config = BltDiffusionConfig.from_blt_config(model.config)
    with progress_bar_hidden():
        view = BltDiffusionForCausalLM.from_pretrained(
            None, config=config, state_dict=model.state_dict(), dtype=model.dtype
        )
    # The weights already live where the stock model's do; the buffers (RoPE frequencies, hash powers) follow them.
    return view.to(model.device).eval()


@contextmanager
def progress_bar_hidden():
    """Without transformers' weight-loading progress bar, which would otherwise show at every `generate` call."""
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()
