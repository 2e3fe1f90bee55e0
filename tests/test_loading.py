"""Loading refuses what would silently change the model: invalid config fields, a missing patching threshold, and
weights that do not match the config. Tiny random models, never run."""

import math

import pytest
import torch
from conftest import edited_checkpoint
from transformers import BltForCausalLM

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM
from blt_diffusion.random_init import tiny_blt_config

GLOBAL_LAYER_1 = "model.global_transformer.layers.1."


def tiny_config_dict(**overrides) -> dict:
    """The tiny BLT config as a dict, with `overrides` (sub-config overrides merged field by field)."""
    config_dict = tiny_blt_config().to_dict()
    config_dict.pop("model_type")
    for key, value in overrides.items():
        config_dict[key] = {**config_dict[key], **value} if isinstance(value, dict) else value
    return config_dict


@pytest.fixture(scope="module")
def blt_d_dir(tmp_path_factory):
    """A random tiny BLT-D checkpoint (block size 8), saved by this package."""
    directory = tmp_path_factory.mktemp("blt_d")
    torch.manual_seed(0)
    BltDiffusionForCausalLM(BltDiffusionConfig(**tiny_config_dict(diffusion_block_size=8))).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory):
    """A random tiny checkpoint saved by stock `transformers.BltForCausalLM`."""
    directory = tmp_path_factory.mktemp("stock_blt")
    torch.manual_seed(0)
    BltForCausalLM(tiny_blt_config()).save_pretrained(directory)
    return directory


# --- config fields


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"encoder_config": {"hidden_size": -32}}, "encoder_config.hidden_size"),
        ({"global_config": {"num_hidden_layers": 0}}, "global_config.num_hidden_layers"),
        ({"global_config": {"num_hidden_layers": -1}}, "global_config.num_hidden_layers"),
        # Stock sub-configs divide by it: a ZeroDivisionError before.
        ({"global_config": {"num_attention_heads": 0}}, "global_config.num_attention_heads"),
        ({"decoder_config": {"num_key_value_heads": -2}}, "decoder_config.num_key_value_heads"),
        ({"patcher_config": {"num_hidden_layers": 0}}, "patcher_config.num_hidden_layers"),
        ({"patcher_config": {"max_position_embeddings": 0}}, "patcher_config.max_position_embeddings"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"max_position_embeddings": -1}, "max_position_embeddings"),
        ({"encoder_hash_byte_group_vocab": 0}, "encoder_hash_byte_group_vocab"),
        ({"patching_threshold": math.nan}, "patching_threshold"),
        ({"patching_threshold": math.inf}, "patching_threshold"),
        ({"patching_threshold": -1.0}, "patching_threshold"),
        ({"patching_threshold": None}, "patching_threshold"),
        # A validation error that `@strict` wrapped in a `StrictDataclassClassValidationError` before.
        ({"diffusion_block_size": -1}, "diffusion_block_size"),
    ],
    ids=[
        "negative-hidden-size",
        "no-global-layers",
        "negative-global-layers",
        "no-heads",
        "negative-kv-heads",
        "no-patcher-layers",
        "no-patcher-positions",
        "no-vocab",
        "negative-positions",
        "no-hash-vocab",
        "nan-threshold",
        "infinite-threshold",
        "negative-threshold",
        "no-threshold",
        "negative-block-size",
    ],
)
def test_invalid_fields_raise_a_value_error_naming_them(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        BltDiffusionConfig(**tiny_config_dict(**overrides))


def test_the_threshold_may_be_anything_without_entropy_patching():
    config = BltDiffusionConfig(**tiny_config_dict(patch_in_forward=False, patching_threshold=None))
    assert config.patching_threshold is None


def test_config_json_with_an_invalid_field_does_not_load(tmp_path, blt_d_dir):
    directory = edited_checkpoint(blt_d_dir, tmp_path / "edited", config=lambda c: c.update(diffusion_block_size=-1))
    with pytest.raises(ValueError, match="`diffusion_block_size` must be >= 0"):
        BltDiffusionForCausalLM.from_pretrained(directory)


def test_config_overrides_are_validated_too(blt_d_dir):
    # `from_pretrained` sets overrides after the config validated itself; the model validates it again.
    with pytest.raises(ValueError, match="`patching_threshold`"):
        BltDiffusionForCausalLM.from_pretrained(blt_d_dir, patching_threshold=math.nan)


# --- the patching threshold in config.json


def test_a_blt_d_config_json_without_its_threshold_does_not_load(tmp_path, blt_d_dir):
    directory = edited_checkpoint(blt_d_dir, tmp_path / "edited", config=lambda c: c.pop("patching_threshold"))

    # Before, it loaded with stock BLT's default threshold and patched differently from how the model was trained.
    with pytest.raises(ValueError, match="must give `patching_threshold`"):
        BltDiffusionForCausalLM.from_pretrained(directory)
    assert BltDiffusionForCausalLM.from_pretrained(directory, patching_threshold=2.5).config.patching_threshold == 2.5


def test_a_stock_config_json_without_a_threshold_loads_with_the_stock_default(tmp_path, stock_dir):
    directory = edited_checkpoint(stock_dir, tmp_path / "edited", config=lambda c: c.pop("patching_threshold"))

    # As stock `BltForCausalLM` reads it.
    expected = BltForCausalLM.from_pretrained(directory).config.patching_threshold
    assert BltDiffusionForCausalLM.from_pretrained(directory).config.patching_threshold == expected


# --- weights that do not match the config


def renamed(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"renamed.{name}": tensor for name, tensor in weights.items()}


def without_lm_head(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in weights.items() if name != "lm_head.weight"}


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (dict(weights=without_lm_head), "it lacks lm_head.weight, which would start at random"),
        (dict(weights=renamed), "it lacks lm_head.weight, model.encoder_hash_tok_embedding.weight, "),
        (
            dict(config=lambda c: c["decoder_config"].update(intermediate_size=48)),
            "has shape [32, 64] in the checkpoint but [32, 48] in the model (and 5 other weights)",
        ),
        (
            dict(config=lambda c: c["global_config"].update(num_hidden_layers=1)),
            f"the model has no {GLOBAL_LAYER_1}input_layernorm.weight",
        ),
    ],
    ids=["missing", "renamed", "other-shape", "unexpected"],
)
def test_weights_that_do_not_match_the_config_do_not_load(tmp_path, blt_d_dir, edits, message):
    directory = edited_checkpoint(blt_d_dir, tmp_path / "edited", **edits)

    with pytest.raises(ValueError, match="The checkpoint's weights do not match the model's config") as error:
        BltDiffusionForCausalLM.from_pretrained(directory)
    assert message in str(error.value)


def test_ignore_mismatched_sizes_still_reinitialises_them(tmp_path, blt_d_dir):
    directory = edited_checkpoint(
        blt_d_dir, tmp_path / "edited", config=lambda c: c["decoder_config"].update(intermediate_size=48)
    )
    model, info = BltDiffusionForCausalLM.from_pretrained(
        directory, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert model.config.decoder_config.intermediate_size == 48 and len(info["mismatched_keys"]) == 6


@pytest.mark.parametrize(
    ("directory", "overrides", "new_parameters"),
    [
        ("stock_dir", {"diffusion_block_size": 8}, {"model.diffusion_embed_tokens.weight"}),
        (
            "stock_dir",
            {"diffusion_block_size": 8, "diffusion_cell_embedding": "encoder"},
            {"model.diffusion_mask_embedding.weight"},
        ),
        ("blt_d_dir", {"diffusion_block_size": 0}, set()),
    ],
    ids=["stock-to-blt-d", "stock-to-blt-d-encoder-cells", "blt-d-to-blt"],
)
def test_diffusion_parameters_may_be_new_or_left_out(request, directory, overrides, new_parameters):
    model, info = BltDiffusionForCausalLM.from_pretrained(
        request.getfixturevalue(directory), output_loading_info=True, **overrides
    )
    assert model.config.diffusion_block_size == overrides["diffusion_block_size"]
    assert info["missing_keys"] == new_parameters


def test_a_loaded_patcher_stays_frozen(stock_dir):
    model = BltDiffusionForCausalLM.from_pretrained(stock_dir)
    patcher = model.base_model.patcher
    assert not any(parameter.requires_grad for parameter in patcher.parameters())
    assert all(parameter.requires_grad for parameter in model.base_model.local_decoder.parameters())
