"""The BLT-D model shipped inside the package: small, loadable every usual way, trained, and decodable with every
strategy."""

import math
from pathlib import Path

import pytest
import torch
from conftest import left_pad, strategy_arguments, text_ids
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import blt_diffusion
from blt_diffusion import DEFAULT_MODEL_DIR, BltDiffusionForCausalLM, BltDiffusionTokenizer, load_default_model
from blt_diffusion.hub import missing_files, repo_files
from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES
from blt_diffusion.training.data import stdlib_source_files

NEW_BYTES = 32
PROMPTS = ["def fibonacci(n):\n", "import os\n\n\nclass ", "    for index, value in enumerate("]


@pytest.fixture(scope="module")
def default_model() -> BltDiffusionForCausalLM:
    return load_default_model()


def test_the_shipped_directory_is_a_complete_hub_repo_within_25_mb():
    code = {path.name for path in Path(blt_diffusion.__file__).parent.glob("*_blt_diffusion.py")}
    figures = {"eval_results.json", "decoding_benchmark.json"}
    card_and_configs = {"README.md", "config.json", "generation_config.json", "tokenizer_config.json"}
    # An installed copy may also hold the modules' `__pycache__`, which is no part of the repo.
    files = repo_files(DEFAULT_MODEL_DIR)
    assert {path.name for path in files} == code | figures | card_and_configs | {"model.safetensors"}
    assert missing_files(DEFAULT_MODEL_DIR) == []
    assert sum((DEFAULT_MODEL_DIR / path).stat().st_size for path in files) <= 25_000_000


def test_its_code_is_the_package_code():
    package_modules = sorted(Path(blt_diffusion.__file__).parent.glob("*_blt_diffusion.py"))
    stale = [path.name for path in package_modules if (DEFAULT_MODEL_DIR / path.name).read_text() != path.read_text()]
    assert not stale, f"the shipped copies of {stale} are stale: run python scripts/export_default_model.py"


def test_its_card_gives_the_measured_figures():
    card = ModelCard.load(DEFAULT_MODEL_DIR / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    metrics = {(result.metric_name, result.metric_value) for result in card.data.eval_results}
    assert ("bits per byte", 1.9838) in metrics
    assert ("BLT-S k=16: exact match with autoregressive", 1.0) in metrics
    assert ("BLT-D-8 confidence 0.5: exact match with autoregressive", 0.14) in metrics
    assert ("BLT-DV-8 one step: decoder calls per byte", 0.90796875) in metrics
    assert "| gzip -9 on the same bytes, as one stream | 2.776 |" in card.text


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
