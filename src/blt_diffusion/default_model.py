"""The small BLT-D model shipped inside the package, loaded when no model is named.

It is a 12M-parameter BLT-D model with diffusion block size 8, trained on the Python standard library by
`examples/train_default_model.py`; its model card (`checkpoints/blt-d8-stdlib/README.md`) gives its held-out bits per
byte and decoding speeds. The weights are stored in float16 to keep the package small and are loaded in float32. The
directory is a complete Hub repo: it also loads with `trust_remote_code=True` where the package is not installed.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import SAFE_WEIGHTS_NAME

from .generation_blt_diffusion import BltDiffusionGenerationConfig
from .modelcard_blt_diffusion import Provenance, write_model_card
from .modeling_blt_diffusion import BltDiffusionForCausalLM
from .tokenization_blt_diffusion import BltDiffusionTokenizer

DEFAULT_MODEL_DIR = Path(__file__).parent / "checkpoints" / "blt-d8-stdlib"
STORAGE_DTYPE = torch.float16
# The shipped model samples by default, as many Hub models ship: greedy decoding of a model this small soon repeats
# itself (spaces, mostly). `do_sample=False` (`--greedy`) gives exact greedy decoding.
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}

# What the shipped model's card says beyond what the model and its figures tell.
SHIPPED_SUMMARY = """\
A small Byte Latent Transformer trained with the block-diffusion objective (BLT-D, Kallini et al., 2026) on the
Python standard library, shipped inside the `blt-diffusion` package so that `blt-diffusion generate`,
`blt_diffusion.load_default_model()` and `pipeline("text-generation", model=str(blt_diffusion.DEFAULT_MODEL_DIR))` run
a trained model on a fresh install, offline. It is a demonstration model: it writes Python-flavoured text, not working
code."""
SHIPPED_FACTS = {
    "bytes per patch": "about 4 on Python source",
    "storage": "float16 weights (24.1 MB), loaded as float32; the rounding does not change held-out bits per byte at "
    "four decimals",
    "data": "the standard library of Python 3.11.7 without tests (723 files, 11.9 MB), nine top-level modules held "
    "out",
    "training": "7,568 optimizer steps of 8 x 256 bytes (15.5M bytes seen), 2 CPU cores, about 3.9 hours",
    "diffusion cells": "through the local encoder (byte and hash n-gram embeddings, a mask embedding), half the "
    "training blocks anchored inside patches, self-distillation toward its own next-byte predictions",
}
SHIPPED_TRAINING = """\
One command reproduces the recipe: `python examples/train_default_model.py`. It runs `blt-diffusion train` six
times, each stage starting from the previous checkpoint with a new data order: a new `small` model with block size 16
(patcher, threshold calibration, 450 steps), 550 more steps with block size 16, 2,200 steps with block size 8 (peak
learning rate 1e-3, warm-up and cosine decay in each stage), then 1,400 and 2,400 steps at peak 5e-4 (diffusion cells
looked up in an embedding table of their own, blocks anchored at patch starts, as in the paper), and finally 600 steps
at peak 3e-4 that move the cells into the local encoder's representation (`--cell-embedding encoder
--mid-patch-share 0.5 --distillation-weight 1.0 --diffusion-weight 0.3`), and stores the result with
`blt_diffusion.default_model.export_compact`. The shipped weights went through the same stages, except that the
first stopped at step 418 of 450 on its time limit. Held-out bits per byte after each stage: 2.571, 2.370, 2.070,
2.030, 1.979, 1.984. The last stage trades 0.005 of them for a diffusion head that follows the next-byte head: its
excess cross-entropy over it, with equal information, fell from 0.28 to 0.07 bits at patch starts and from 0.56 to
0.09 inside patches (`benchmarks/probe_diffusion_head.py`)."""
SHIPPED_NOTES = """\
The compressors improve with the amount of text they see, the model does not: on the whole held-out split (352 rows
of 512 bytes) gzip reaches 1.94 and xz 1.72 bits per byte, mostly from `locale.py`'s long alias table, which repeats
itself.

Diffusion decoding writes 1.7 bytes per decoder call at confidence 0.5, and its continuations agree with the
autoregressive ones only in part (chrF 27, against 23 before the last stage); each denoising step also runs the local
encoder over the block, which the bandwidth column charges. The two verified strategies give exactly the
autoregressive bytes. Greedy decoding of this model soon settles into runs of spaces after a line break; sampling
(`do_sample=True, temperature=0.8, top_p=0.95`, the defaults of its `generation_config.json`) gives Python-flavoured
text. Pass `do_sample=False` for exact greedy decoding."""


def load_default_model(dtype: torch.dtype = torch.float32) -> BltDiffusionForCausalLM:
    """The shipped BLT-D model, in evaluation mode, with weights in `dtype`."""
    return BltDiffusionForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=dtype).eval()


def export_compact(model: BltDiffusionForCausalLM, output_dir: str | Path) -> None:
    """Save `model` as the shipped model is stored: a complete Hub repo (config with `auto_map`, the
    `*_blt_diffusion.py` modules for `trust_remote_code`, tokenizer, generation config and model card) whose weights
    are stored in float16, with the package's default generation settings and `SAMPLING_DEFAULTS` (not those a
    training run left).

    The config keeps `dtype` float32, so `from_pretrained` upcasts the weights and the model computes as it was
    trained; only the rounding of each weight to float16 changes its outputs. The card describes the shipped model
    (`SHIPPED_SUMMARY`, `SHIPPED_FACTS`, `SHIPPED_TRAINING`, `SHIPPED_NOTES`) with the figures in `output_dir`'s
    `eval_results.json` and `decoding_benchmark.json`: replace or remove them when exporting another model.
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
    write_model_card(
        output_dir,
        model,
        overwrite=True,
        # Trained from scratch by this package: its license.
        provenance=Provenance(),
        summary=SHIPPED_SUMMARY,
        facts=SHIPPED_FACTS,
        training=SHIPPED_TRAINING,
        notes=SHIPPED_NOTES,
    )
