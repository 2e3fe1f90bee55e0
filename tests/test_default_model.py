"""The BLT-D model shipped inside the package: small, loadable every usual way, trained, and decodable with every
strategy."""

import math

import pytest
import torch
from conftest import left_pad, strategy_arguments, text_ids
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from blt_diffusion import DEFAULT_MODEL_DIR, BltDiffusionForCausalLM, BltDiffusionTokenizer, load_default_model
from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES
from blt_diffusion.training.data import stdlib_source_files

NEW_BYTES = 32
PROMPTS = ["def fibonacci(n):\n", "import os\n\n\nclass ", "    for index, value in enumerate("]


@pytest.fixture(scope="module")
def default_model() -> BltDiffusionForCausalLM:
    return load_default_model()


def test_the_shipped_directory_is_small_and_holds_no_code():
    files = sorted(path.name for path in DEFAULT_MODEL_DIR.iterdir())
    card_and_configs = ["README.md", "config.json", "generation_config.json", "tokenizer_config.json"]
    assert files == sorted([*card_and_configs, "model.safetensors"])
    assert sum(path.stat().st_size for path in DEFAULT_MODEL_DIR.iterdir()) <= 25 * 2**20


def test_it_loads_as_a_float32_blt_d_model_with_block_size_8(default_model):
    assert default_model.config.diffusion_block_size == 8
    assert default_model.dtype == torch.float32
    auto_model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR)
    assert isinstance(auto_model, BltDiffusionForCausalLM) and auto_model.dtype == torch.float32
    assert isinstance(AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR), BltDiffusionTokenizer)
    for ours, auto in zip(default_model.parameters(), auto_model.parameters(), strict=True):
        assert torch.equal(ours, auto)


def test_it_is_trained_on_python_source(default_model):
    """Bits per byte on a held-out standard-library module: a random model is near 8, a trained one far below."""
    source = stdlib_source_files("heldout")[0].read_bytes()[:2048].decode("utf-8", errors="ignore")
    input_ids = text_ids(source)
    with torch.no_grad():
        next_byte_loss = default_model(input_ids, labels=input_ids).clean_loss
    assert float(next_byte_loss) / math.log(2) < 3.0


@pytest.mark.parametrize("decoding", sorted(DECODING_STRATEGIES))
def test_every_decoding_strategy_generates(default_model, decoding):
    tokenizer = BltDiffusionTokenizer()
    batch, mask = left_pad([text_ids(prompt) for prompt in PROMPTS])
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_BYTES, min_new_tokens=NEW_BYTES, do_sample=False)
    arguments = strategy_arguments(decoding, default_model)
    output = default_model.generate(batch, return_dict_in_generate=True, **arguments, **kwargs)
    new_bytes = output.sequences[:, batch.shape[1] :]
    assert new_bytes.shape == (len(PROMPTS), NEW_BYTES)
    # A trained byte model writes whole UTF-8 characters (a random one writes broken sequences, shown as U+FFFD).
    assert not any("\ufffd" in text for text in tokenizer.batch_decode(new_bytes, skip_special_tokens=True))
    if decoding == "diffusion":
        assert output.global_nfe.tolist() == [NEW_BYTES // 8] * len(PROMPTS)
        assert bool((output.decoder_nfe <= NEW_BYTES).all())
    if DECODING_STRATEGIES[decoding].lossless and decoding != "autoregressive":
        assert torch.equal(output.sequences, default_model.generate(batch, **kwargs))


def test_the_pipeline_runs_it_by_path():
    generator = pipeline("text-generation", model=str(DEFAULT_MODEL_DIR))
    result = generator(PROMPTS[0], max_new_tokens=8, do_sample=False, return_full_text=True)
    assert result[0]["generated_text"].startswith(PROMPTS[0])
    assert len(result[0]["generated_text"].encode()) == len(PROMPTS[0].encode()) + 8
