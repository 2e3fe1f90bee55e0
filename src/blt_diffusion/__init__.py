"""blt-diffusion: the Fast Byte Latent Transformer (BLT, BLT-D, BLT-S, BLT-DV) for Hugging Face transformers.

Importing the package registers model type `"blt_diffusion"` with `AutoConfig`, `AutoModelForCausalLM` and
`AutoTokenizer`, and marks the classes for `trust_remote_code` publishing: `save_pretrained` copies the
`*_blt_diffusion.py` files next to the weights. `load_default_model()` returns the small BLT-D model shipped with
the package (its directory: `DEFAULT_MODEL_DIR`).
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .cache_blt_diffusion import BltDiffusionCache
from .configuration_blt_diffusion import BltDiffusionConfig
from .default_model import DEFAULT_MODEL_DIR, load_default_model
from .generation_blt_diffusion import BltDiffusionGenerateOutput, BltDiffusionGenerationConfig
from .modeling_blt_diffusion import BltDiffusionForCausalLM, BltDiffusionModel, BltDiffusionPreTrainedModel
from .tokenization_blt_diffusion import BltDiffusionTokenizer

AutoConfig.register(BltDiffusionConfig.model_type, BltDiffusionConfig, exist_ok=True)
AutoModelForCausalLM.register(BltDiffusionConfig, BltDiffusionForCausalLM, exist_ok=True)
AutoTokenizer.register(BltDiffusionConfig, tokenizer_class=BltDiffusionTokenizer, exist_ok=True)
BltDiffusionConfig.register_for_auto_class()
BltDiffusionForCausalLM.register_for_auto_class("AutoModelForCausalLM")
BltDiffusionTokenizer.register_for_auto_class("AutoTokenizer")

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL_DIR",
    "BltDiffusionCache",
    "BltDiffusionConfig",
    "BltDiffusionForCausalLM",
    "BltDiffusionGenerateOutput",
    "BltDiffusionGenerationConfig",
    "BltDiffusionModel",
    "BltDiffusionPreTrainedModel",
    "BltDiffusionTokenizer",
    "load_default_model",
]
