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
from conftest import FakeHub, build_custom_generate, build_pair, materialise, source_text, text_ids
from huggingface_hub import ModelCard
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
    DEFAULT_MODEL_DIR,
    BltDiffusionConfig,
    BltDiffusionForCausalLM,
    BltDiffusionGenerationConfig,
    BltDiffusionTokenizer,
    cli,
    hub,
)

PROMPT = "def add(a, b):"
# Every shipped module: remote code imports them relatively, so each must be copied.
REMOTE_CODE_FILES = sorted(path.name for path in Path(blt_diffusion.__file__).parent.glob("*_blt_diffusion.py"))
COST_FIELDS = ("decoder_nfe", "global_nfe", "patcher_nfe", "memory_bandwidth_gb")
# What transformers' `push_to_hub` uploads as README.md to a repo that has no card (its `create_and_tag_model_card`).
TRANSFORMERS_PLACEHOLDER = (
    "---\nlibrary_name: transformers\ntags: []\n---\n\n# Model Card for Model ID\n\nThis is the model card of a 🤗 "
    "transformers model that has been pushed on the Hub. This model card has been automatically generated.\n"
)


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


# --- Hub repos: model cards, push_to_hub, and loading without the package ------------------------------------------


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, stock_dir):
    """The stock checkpoint converted by `blt-diffusion convert`."""
    directory = tmp_path_factory.mktemp("converted") / "blt-converted"
    assert cli.main(["convert", str(stock_dir), str(directory)]) == 0
    return directory


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """The output of `blt-diffusion train`: a tiny BLT-D model, two steps on three text files."""
    corpus = tmp_path_factory.mktemp("corpus")
    for index in range(3):
        (corpus / f"text{index}.txt").write_text(source_text(1200, offset=1200 * index), encoding="utf-8")
    directory = tmp_path_factory.mktemp("trained") / "blt-trained"
    options = ["--config", "tiny", "--block-size", "4", "--data", str(corpus), "--sequence-length", "64"]
    options += ["--patcher-steps", "1", "--max-steps", "2", "--batch-size", "2", "--threads", "1"]
    assert cli.main(["train", "--output-dir", str(directory), *options]) == 0
    return directory


def card_of(directory: Path) -> ModelCard:
    return ModelCard.load(directory / "README.md")


def test_save_pretrained_writes_remote_code_and_a_model_card(saved_dir):
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
    card = card_of(saved_dir)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == "apache-2.0" and "blt-diffusion" in card.data.tags
    assert 'decoding="self_speculative", draft_length=8' in card.text
    assert "trust_remote_code=True" in card.text and 'decoding="diffusion"' not in card.text, "a plain BLT"
    assert hub.missing_files(saved_dir) == []


def test_save_pretrained_keeps_a_users_card(model, tmp_path):
    (tmp_path / "README.md").write_text("# My own card\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# My own card\n"


def test_cards_of_converted_and_trained_checkpoints(converted_dir, trained_dir):
    converted = card_of(converted_dir)
    assert "Converted by `blt-diffusion` from a stock transformers `BltForCausalLM`" in converted.text
    assert converted.data.license is None, "the stock weights' license is not known here"

    trained = card_of(trained_dir)
    results = json.loads((trained_dir / "eval_results.json").read_text())
    (entry,) = trained.data.eval_results
    assert (entry.metric_type, entry.metric_value) == ("bits_per_byte", round(results["heldout_bits_per_byte"], 4))
    assert "A new `tiny` model, trained from scratch with `blt-diffusion train`" in trained.text
    assert "Data: 2 text files. 2 optimizer steps of 2 x 64 bytes" in trained.text
    assert "block-diffusion" in trained.data.tags and 'decoding="diffusion", block_size=4' in trained.text


def pushed_files(fake_hub: FakeHub) -> dict[str, bytes]:
    (commit,) = fake_hub.commits
    return commit["files"]


@pytest.mark.parametrize(
    ("hub_card", "ours"),
    [(None, True), (TRANSFORMERS_PLACEHOLDER, True), ("---\nlicense: mit\n---\n# Their card\n", False)],
    ids=["new-repo", "repo-with-transformers-placeholder", "repo-with-a-card"],
)
def test_push_to_hub_uploads_code_auto_map_and_card(model, monkeypatch, hub_card, ours):
    fake_hub = FakeHub(monkeypatch, card=hub_card)
    model.push_to_hub("someone/tiny-blt", tags=["demo"])

    files = pushed_files(fake_hub)
    assert set(REMOTE_CODE_FILES) <= set(files)
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForCausalLM"].startswith("modeling_blt_diffusion.")
    card = ModelCard(files["README.md"].decode())
    assert ("# tiny-blt" in card.text) == ours and "demo" in card.data.tags
    if ours:
        assert 'from_pretrained("someone/tiny-blt", trust_remote_code=True)' in card.text
    else:
        assert "# Their card" in card.text and card.data.license == "mit"


def test_tokenizer_push_to_hub_uploads_its_code(tokenizer, monkeypatch):
    fake_hub = FakeHub(monkeypatch, card="---\nlicense: apache-2.0\n---\n# A card\n")
    tokenizer.push_to_hub("someone/tiny-blt")
    files = pushed_files(fake_hub)
    assert "tokenization_blt_diffusion.py" in files
    assert json.loads(files["tokenizer_config.json"])["auto_map"]["AutoTokenizer"][0].startswith("tokenization_")


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

from transformers import AutoModelForCausalLM, AutoTokenizer, BltForCausalLM

checks = json.loads(sys.argv[1])
generated = {}
for directory in checks["directories"]:
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
    for obj in (model, model.config, model.generation_config, tokenizer):
        module = type(obj).__module__
        assert module.startswith("transformers_modules."), (directory, module)
    assert type(model).__name__ == "BltDiffusionForCausalLM"
    assert type(model.generation_config).__name__ == "BltDiffusionGenerationConfig"
    assert type(tokenizer).__name__ == "BltDiffusionTokenizer"
    inputs = tokenizer(checks["prompt"], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=checks["new_bytes"], do_sample=False)
    generated[directory] = output[0].tolist()

stock = BltForCausalLM.from_pretrained(checks["stock"])
inputs = AutoTokenizer.from_pretrained(checks["saved"], trust_remote_code=True)(checks["prompt"], return_tensors="pt")
greedy = dict(max_new_tokens=checks["new_bytes"], do_sample=False)
generated["stock"] = stock.generate(**inputs, **greedy, use_cache=False)[0].tolist()
for decoding in ("autoregressive", "self_speculative"):
    output = stock.generate(
        **inputs, **greedy, custom_generate=checks["custom_generate"], trust_remote_code=True, decoding=decoding
    )
    generated[f"custom_generate {decoding}"] = output[0].tolist()
assert not any(name.split(".")[0] == "blt_diffusion" for name, mod in sys.modules.items() if mod is not None)
print(json.dumps(generated))
"""


def test_every_kind_of_directory_loads_without_the_package(
    saved_dir, converted_dir, trained_dir, stock_dir, model, monkeypatch, tmp_path
):
    """What save_pretrained, convert, train and the shipped model write, a push of a training run materialised from
    its commit, and the custom_generate repo on a stock model: one fresh process without the package loads them all
    with `trust_remote_code=True` and generates."""
    fake_hub = FakeHub(monkeypatch)
    hub.push_directory(trained_dir, "someone/blt-trained")
    pushed_dir = materialise(pushed_files(fake_hub), tmp_path / "pushed")
    custom_generate_dir = build_custom_generate(tmp_path / "custom_generate")
    directories = {
        "save_pretrained": saved_dir,
        "convert": converted_dir,
        "train": trained_dir,
        "push": pushed_dir,
        "shipped": DEFAULT_MODEL_DIR,
    }
    checks = {
        "directories": [str(directory) for directory in directories.values()],
        "stock": str(stock_dir),
        "saved": str(saved_dir),
        "custom_generate": str(custom_generate_dir),
        "prompt": PROMPT,
        "new_bytes": 24,
    }
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, json.dumps(checks)],
        capture_output=True,
        text=True,
        env=env | {"PYTHONPATH": ""},
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    generated = json.loads(completed.stdout.strip().splitlines()[-1])

    expected = {
        "save_pretrained": greedy(model, PROMPT, 24),
        "convert": greedy(model, PROMPT, 24),
        "train": greedy(BltDiffusionForCausalLM.from_pretrained(trained_dir), PROMPT, 24),
        "shipped": greedy(blt_diffusion.load_default_model(), PROMPT, 24),
    }
    expected["push"] = expected["train"]
    for kind, directory in directories.items():
        assert generated[str(directory)] == expected[kind][0].tolist(), kind
    assert generated["stock"] == expected["save_pretrained"][0].tolist()
    assert generated["custom_generate autoregressive"] == generated["stock"]
    assert generated["custom_generate self_speculative"] == generated["stock"]


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
