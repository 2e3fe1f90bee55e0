"""Integration with transformers: Auto classes, stock BLT checkpoints, `pipeline`, remote code and `Trainer`."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_pair, source_text, text_ids
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    pipeline,
    set_seed,
)

import blt_diffusion
from blt_diffusion import (
    BltDiffusionConfig,
    BltDiffusionForCausalLM,
    BltDiffusionGenerationConfig,
    BltDiffusionTokenizer,
)

PROMPT = "def add(a, b):"
# Every shipped module: remote code imports them relatively, so each must be copied.
REMOTE_CODE_FILES = sorted(path.name for path in Path(blt_diffusion.__file__).parent.glob("*_blt_diffusion.py"))
COST_FIELDS = ("decoder_nfe", "global_nfe", "patcher_nfe", "memory_bandwidth_gb")


@pytest.fixture(scope="module")
def pair():
    """A calibrated stock `BltForCausalLM` and our model with the same weights. Never mutated."""
    return build_pair(seed=0)


@pytest.fixture(scope="module")
def model(pair):
    return pair[1]


@pytest.fixture(scope="module")
def tokenizer():
    return BltDiffusionTokenizer()


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, model, tokenizer):
    """Our model and tokenizer written with `save_pretrained`, as they would be published."""
    directory = tmp_path_factory.mktemp("blt_diffusion_checkpoint")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory, pair):
    """The same weights written by stock `transformers.BltForCausalLM.save_pretrained` (model_type "blt")."""
    directory = tmp_path_factory.mktemp("stock_blt_checkpoint")
    pair[0].save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def generator(saved_dir):
    """`pipeline("text-generation")` on the saved directory; the tokenizer must be found there."""
    return pipeline("text-generation", model=str(saved_dir))


def greedy(model, prompt: str, max_new_tokens: int, **kwargs):
    return model.generate(text_ids(prompt), max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


def continuation(tokenizer, prompt: str, sequences: torch.Tensor) -> str:
    """The text of the bytes generated after `prompt` (BOS + its bytes) in the single row of `sequences`."""
    return tokenizer.decode(sequences[0, text_ids(prompt).shape[1] :], skip_special_tokens=True)


def spy_on_generate(monkeypatch, model) -> list[dict]:
    """Record the keyword arguments of every `model.generate` call; the calls still run."""
    calls = []
    original = model.generate

    def recording_generate(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    return calls


# --- Auto classes ---------------------------------------------------------------------------------------------------


def test_import_registers_auto_classes(saved_dir, model):
    config = AutoConfig.from_pretrained(saved_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(saved_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_dir)

    assert type(config) is BltDiffusionConfig and config.model_type == "blt_diffusion"
    assert type(reloaded) is BltDiffusionForCausalLM
    assert type(tokenizer) is BltDiffusionTokenizer
    assert tokenizer.padding_side == "left" and tokenizer.add_bos_token
    assert type(reloaded.generation_config) is BltDiffusionGenerationConfig
    assert reloaded.generation_config.decoding == "autoregressive"
    assert config.patching_threshold == model.config.patching_threshold
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    expected = greedy(model, PROMPT, 40)
    assert expected.shape == (1, text_ids(PROMPT).shape[1] + 40)
    assert torch.equal(greedy(reloaded, PROMPT, 40), expected)


# --- Stock BLT checkpoints ------------------------------------------------------------------------------------------


def test_stock_checkpoint_loads_without_conversion(stock_dir, pair):
    stock, model = pair
    assert json.loads((stock_dir / "config.json").read_text())["model_type"] == "blt"

    loaded, info = BltDiffusionForCausalLM.from_pretrained(stock_dir, output_loading_info=True)
    loaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(loaded.config) is BltDiffusionConfig and loaded.config.model_type == "blt_diffusion"
    assert type(loaded.generation_config) is BltDiffusionGenerationConfig
    # Stock's generation_config.json only mirrors its model config; ours replaces it with real defaults.
    assert loaded.generation_config.max_new_tokens == model.generation_config.max_new_tokens
    assert loaded.generation_config.eos_token_id == 2

    ids = text_ids(source_text(300))
    with torch.no_grad():
        expected = stock(ids, use_cache=False).logits
        actual = loaded(ids).logits
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert torch.equal(greedy(loaded, PROMPT, 24), greedy(model, PROMPT, 24))


def test_stock_checkpoint_accepts_config_overrides(stock_dir):
    loaded = BltDiffusionForCausalLM.from_pretrained(stock_dir, diffusion_block_size=8)
    assert loaded.config.diffusion_block_size == 8
    assert loaded.config.model_type == "blt_diffusion"


# --- pipeline("text-generation") ------------------------------------------------------------------------------------


def test_pipeline_loads_model_and_tokenizer_from_directory(generator):
    assert type(generator.model) is BltDiffusionForCausalLM
    assert type(generator.tokenizer) is BltDiffusionTokenizer


def test_pipeline_injected_sampling_defaults(saved_dir, monkeypatch):
    """A model whose generation config leaves `do_sample` unset gets the pipeline's `do_sample=True,
    temperature=0.7`; generation must accept them."""
    sampler = pipeline("text-generation", model=str(saved_dir))
    sampler.model.generation_config = BltDiffusionGenerationConfig(max_new_tokens=24)
    calls = spy_on_generate(monkeypatch, sampler.model)

    result = sampler(PROMPT)

    assert len(calls) == 1
    assert calls[0]["do_sample"] is True and calls[0]["temperature"] == 0.7
    text = result[0]["generated_text"]
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)


def test_pipeline_default_generation_config_is_greedy(generator, model, monkeypatch):
    """The shipped generation config sets `do_sample=False`, so the pipeline adds no sampling parameters."""
    calls = spy_on_generate(monkeypatch, generator.model)
    result = generator(PROMPT, max_new_tokens=24, return_full_text=False)
    assert "do_sample" not in calls[0] and "temperature" not in calls[0]
    assert result[0]["generated_text"] == continuation(generator.tokenizer, PROMPT, greedy(model, PROMPT, 24))


def test_pipeline_explicit_sampling(generator, model):
    greedy_text = continuation(generator.tokenizer, PROMPT, greedy(model, PROMPT, 24))
    sampled = []
    for seed in range(3):
        set_seed(seed)
        result = generator(PROMPT, do_sample=True, temperature=0.7, max_new_tokens=24, return_full_text=False)
        set_seed(seed)
        direct = model.generate(text_ids(PROMPT), do_sample=True, temperature=0.7, max_new_tokens=24)
        assert result[0]["generated_text"] == continuation(generator.tokenizer, PROMPT, direct)
        sampled.append(result[0]["generated_text"])
    assert any(text != greedy_text for text in sampled)


def test_pipeline_return_full_text(generator, model):
    new_text = continuation(generator.tokenizer, PROMPT, greedy(model, PROMPT, 24))
    assert new_text

    full = generator(PROMPT, max_new_tokens=24, do_sample=False, return_full_text=True)
    only_new = generator(PROMPT, max_new_tokens=24, do_sample=False, return_full_text=False)

    assert full[0]["generated_text"] == PROMPT + new_text
    assert only_new[0]["generated_text"] == new_text


def test_pipeline_batch_of_prompts_with_different_lengths(generator, model, monkeypatch):
    prompts = ["Hi", "Hello there, world"]
    calls = spy_on_generate(monkeypatch, generator.model)

    results = generator(prompts, batch_size=2, max_new_tokens=16, do_sample=False, return_full_text=False)

    assert len(calls) == 1, "the two prompts must be generated as one batch"
    assert calls[0]["input_ids"].shape[0] == 2 and not bool(calls[0]["attention_mask"].all())
    for prompt, result in zip(prompts, results, strict=True):
        alone = continuation(generator.tokenizer, prompt, greedy(model, prompt, 16))
        assert result[0]["generated_text"] == alone, prompt


def test_pipeline_returns_per_row_costs(generator, model):
    prompts = ["Hi", "Hello there, world"]
    results = generator(
        prompts, batch_size=2, max_new_tokens=16, do_sample=False, return_full_text=False, return_dict_in_generate=True
    )
    for prompt, result in zip(prompts, results, strict=True):
        record = result[0]
        assert set(COST_FIELDS) <= set(record), record
        alone = greedy(model, prompt, 16, return_dict_in_generate=True)
        assert record["generated_text"] == continuation(generator.tokenizer, prompt, alone.sequences)
        for field in COST_FIELDS:
            assert record[field] == pytest.approx(getattr(alone, field)[0].item()), (prompt, field)
        # Autoregressive decoding: one decoder and patcher call per byte; the global model only when patches close.
        assert record["decoder_nfe"] == record["patcher_nfe"] == 16
        assert 1 <= record["global_nfe"] < 16
        assert record["memory_bandwidth_gb"] > 0


# --- Remote code (trust_remote_code=True without the package) -------------------------------------------------------

REMOTE_SCRIPT = r"""
import sys

sys.modules["blt_diffusion"] = None
try:
    import blt_diffusion  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("blt_diffusion is importable, the test proves nothing")

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

directory, prompt = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
for obj in (model, model.config, model.generation_config, tokenizer):
    module = type(obj).__module__
    assert module.startswith("transformers_modules."), module
assert type(model).__name__ == "BltDiffusionForCausalLM"
assert type(model.generation_config).__name__ == "BltDiffusionGenerationConfig"
assert type(tokenizer).__name__ == "BltDiffusionTokenizer"
assert not any(name.split(".")[0] == "blt_diffusion" for name, mod in sys.modules.items() if mod is not None)
inputs = tokenizer(prompt, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
print(json.dumps(output[0].tolist()))
"""


def test_save_pretrained_writes_remote_code(saved_dir):
    package_dir = Path(blt_diffusion.__file__).parent
    for name in REMOTE_CODE_FILES:
        assert (saved_dir / name).read_text() == (package_dir / name).read_text(), name
    config = json.loads((saved_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_blt_diffusion.BltDiffusionConfig",
        "AutoModelForCausalLM": "modeling_blt_diffusion.BltDiffusionForCausalLM",
    }
    tokenizer_config = json.loads((saved_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"][0] == "tokenization_blt_diffusion.BltDiffusionTokenizer"


def test_remote_code_loads_without_the_package(saved_dir, model, tmp_path):
    env = dict(
        os.environ,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH="",
    )
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(saved_dir), PROMPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    remote_ids = json.loads(completed.stdout.strip().splitlines()[-1])
    assert remote_ids == greedy(model, PROMPT, 40)[0].tolist()


# --- Trainer --------------------------------------------------------------------------------------------------------


def test_trainer_trains_everything_but_the_patcher(model, tmp_path):
    trainee = copy.deepcopy(model).train()
    text = source_text(6 * 48, offset=2000)
    dataset = []
    for row in range(6):
        ids = text_ids(text[row * 48 : (row + 1) * 48])[0].tolist()
        dataset.append({"input_ids": ids, "labels": ids})
    before = {name: parameter.detach().clone() for name, parameter in trainee.named_parameters()}
    frozen = {name for name, parameter in trainee.named_parameters() if not parameter.requires_grad}
    assert frozen and all(name.startswith("model.patcher.") for name in frozen)
    assert frozen == {name for name in before if name.startswith("model.patcher.")}

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    result = Trainer(model=trainee, args=args, train_dataset=dataset).train()

    assert result.global_step == 3
    assert math.isfinite(result.training_loss)
    after = dict(trainee.named_parameters())
    unchanged = [name for name in before if name not in frozen and torch.equal(after[name], before[name])]
    assert not unchanged, f"trainable parameters that did not move: {unchanged}"
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
