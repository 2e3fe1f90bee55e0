"""The small BLT-D model shipped inside the package, loaded when no model is named.

It is a 12M-parameter BLT-D model with diffusion block size 8, trained on the Python standard library by
`examples/train_default_model.py`; its model card (`checkpoints/blt-d8-stdlib/README.md`) gives its held-out bits per
byte and decoding speeds. The weights are stored in float16 to keep the package small and are loaded in float32.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from .generation_blt_diffusion import BltDiffusionGenerationConfig
from .modeling_blt_diffusion import BltDiffusionForCausalLM
from .tokenization_blt_diffusion import BltDiffusionTokenizer

DEFAULT_MODEL_DIR = Path(__file__).parent / "checkpoints" / "blt-d8-stdlib"
STORAGE_DTYPE = torch.float16
# The shipped model samples by default, as many Hub models ship: greedy decoding of a model this small soon repeats
# itself (spaces, mostly). `do_sample=False` (`--greedy`) gives exact greedy decoding.
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}


def load_default_model(dtype: torch.dtype = torch.float32) -> BltDiffusionForCausalLM:
    """The shipped BLT-D model, in evaluation mode, with weights in `dtype`."""
    return BltDiffusionForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=dtype).eval()


def export_compact(model: BltDiffusionForCausalLM, output_dir: str | Path) -> None:
    """Save `model` and the tokenizer as the shipped model is stored: float16 weights, a float32 config, the
    package's default generation settings with `SAMPLING_DEFAULTS` (not those a training run left), and no copies of
    the package's code.

    The config keeps `dtype` float32, so `from_pretrained` upcasts the weights and the model computes as it was
    trained; only the rounding of each weight to float16 changes its outputs. The package registers its classes
    with the Auto classes on import, so the directory needs neither the `trust_remote_code` copies of the
    `*_blt_diffusion.py` files that `save_pretrained` writes nor the config's `auto_map` pointing at them.
    """
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    BltDiffusionTokenizer().save_pretrained(output_dir)
    generation_config = BltDiffusionGenerationConfig.from_model_config(model.config)
    generation_config.update(**SAMPLING_DEFAULTS)
    generation_config.save_pretrained(output_dir)
    weights_path = output_dir / SAFE_WEIGHTS_NAME
    weights = load_file(weights_path)
    save_file({name: tensor.to(STORAGE_DTYPE) for name, tensor in weights.items()}, weights_path, {"format": "pt"})
    for code_file in output_dir.glob("*_blt_diffusion.py"):
        code_file.unlink()
    for config_name in (CONFIG_NAME, "tokenizer_config.json"):
        config_path = output_dir / config_name
        config = json.loads(config_path.read_text())
        config.pop("auto_map", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
