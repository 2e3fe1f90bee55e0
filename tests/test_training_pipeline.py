"""The training pipeline: standard-library data and its split, packing, bits per byte, patcher training, threshold
calibration, `train_model`, and the recipe's options."""

import copy
import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import source_text, text_ids

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM, BltDiffusionTokenizer
from blt_diffusion.random_init import calibrate_random_model, tiny_blt_config
from blt_diffusion.training import (
    FINE_TUNING_SCHEDULE,
    MODEL_PRESETS,
    PatcherLanguageModel,
    TrainingRecipe,
    calibrate_patching_threshold,
    heldout_bits_per_byte,
    pack_byte_sequences,
    stdlib_source_files,
    text_files,
    train_model,
    train_patcher,
    training_arguments,
)
from blt_diffusion.training.data import EXCLUDED_DIRECTORIES, module_split
from blt_diffusion.training.patcher import mean_patch_length
from blt_diffusion.training.pipeline import initial_model
from blt_diffusion.training.recipe import NEW_MODEL_DIFFUSION


@pytest.fixture(scope="module")
def stdlib_splits():
    return {split: stdlib_source_files(split) for split in ("train", "heldout")}


@pytest.fixture(scope="module")
def training_rows(stdlib_splits):
    """24 rows of 64 bytes of standard-library source."""
    return pack_byte_sequences(stdlib_splits["train"], 64, max_bytes=24 * 64)


def top_level_module(path: Path) -> str:
    return path.relative_to(sysconfig.get_paths()["stdlib"]).parts[0].removesuffix(".py")


def test_stdlib_split_is_deterministic_disjoint_by_module_and_has_no_tests(stdlib_splits):
    train, heldout = stdlib_splits["train"], stdlib_splits["heldout"]
    assert train == sorted(train) and heldout == sorted(heldout)
    assert stdlib_source_files("heldout") == heldout
    train_modules = {top_level_module(path) for path in train}
    heldout_modules = {top_level_module(path) for path in heldout}
    assert not train_modules & heldout_modules
    assert all(module_split(name) == "heldout" for name in heldout_modules)
    # About one module in 20 is held out.
    assert 0.02 < len(heldout_modules) / (len(train_modules) + len(heldout_modules)) < 0.1
    assert {"os", "argparse", "asyncio"} <= train_modules | heldout_modules
    for path in train + heldout:
        assert path.suffix == ".py"
        assert not EXCLUDED_DIRECTORIES.intersection(path.relative_to(sysconfig.get_paths()["stdlib"]).parts), path
    with pytest.raises(ValueError, match="split"):
        stdlib_source_files("validation")


def test_text_files_recurses_filters_and_skips_non_utf8(tmp_path):
    (tmp_path / "pkg" / ".hidden").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("print('a')\n")
    (tmp_path / "pkg" / "b.md").write_text("# b\n")
    (tmp_path / "pkg" / "latin1.py").write_bytes("café".encode("latin-1"))
    (tmp_path / "pkg" / ".hidden" / "c.py").write_text("c = 1\n")
    (tmp_path / "single.txt").write_text("one file\n")

    assert text_files([tmp_path / "pkg"], suffixes=(".py",)) == [tmp_path / "pkg" / "a.py"]
    assert text_files([tmp_path / "single.txt", tmp_path / "pkg"]) == [
        tmp_path / "pkg" / "a.py",
        tmp_path / "pkg" / "b.md",
        tmp_path / "single.txt",
    ]
    with pytest.raises(FileNotFoundError):
        text_files([tmp_path / "missing"])


def test_packing_wraps_documents_in_sorted_order_and_cuts_full_rows(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"c")
    (tmp_path / "a.txt").write_bytes(b"ab")
    # Stream: <s> a b </s> <s> c </s>, bytes as b + 4; the incomplete third row is dropped.
    rows = pack_byte_sequences([tmp_path / "b.txt", tmp_path / "a.txt"], 3)
    assert rows["input_ids"] == [[1, 97 + 4, 98 + 4], [2, 1, 99 + 4]]
    assert rows["labels"] == rows["input_ids"]
    assert pack_byte_sequences([tmp_path / "a.txt", tmp_path / "b.txt"], 3, max_bytes=4)["input_ids"] == [
        [1, 97 + 4, 98 + 4]
    ]


def test_packing_the_stdlib_is_deterministic(stdlib_splits, training_rows):
    assert training_rows.column_names == ["input_ids", "labels"]
    repacked = pack_byte_sequences(stdlib_splits["train"], 64, max_bytes=24 * 64)
    assert repacked["input_ids"] == training_rows["input_ids"]
    ids = torch.tensor(training_rows["input_ids"])
    assert ids.shape == (24, 64)
    stream = ids.flatten()
    # The first file (longer than the 1,536 ids kept) opens the stream after its BOS.
    assert stream[0] == 1
    assert bytes((stream[1:] - 4).tolist()) == stdlib_splits["train"][0].read_bytes()[: len(stream) - 1]


def test_heldout_bits_per_byte_is_the_next_byte_loss_in_bits(tiny_model, diffusion_model, training_rows):
    rows = torch.tensor(training_rows["input_ids"][:6])
    with torch.no_grad():
        loss = float(tiny_model(rows, labels=rows).loss)
        clean_loss = float(diffusion_model(rows, labels=rows).clean_loss)
    # Batches of 4 and 2 rows of equally many targets average to the loss of all 6 at once.
    assert heldout_bits_per_byte(tiny_model, training_rows.select(range(6)), batch_size=4) == pytest.approx(
        loss / math.log(2), rel=1e-5
    )
    assert heldout_bits_per_byte(tiny_model, rows.tolist(), batch_size=6, max_rows=3) > 0
    # A BLT-D model is scored on its clean (autoregressive) loss alone.
    assert heldout_bits_per_byte(diffusion_model, rows, batch_size=4) == pytest.approx(
        clean_loss / math.log(2), rel=1e-5
    )


def test_patcher_language_model_entropies_are_the_models_patcher_entropies(tiny_model):
    patcher_model = PatcherLanguageModel(tiny_model.model.patcher)
    input_ids = text_ids(source_text(300))
    with torch.no_grad():
        output = patcher_model(input_ids, labels=input_ids)
        entropies = torch.distributions.Categorical(logits=output.logits).entropy()
        torch.testing.assert_close(entropies, tiny_model.model.patcher_entropies(input_ids), atol=1e-5, rtol=0)
        expected_loss = torch.nn.functional.cross_entropy(output.logits[0, :-1], input_ids[0, 1:])
        torch.testing.assert_close(output.loss, expected_loss)

        padded = torch.cat([torch.full((1, 5), 3), input_ids], dim=1)
        mask = (torch.arange(padded.shape[1]) >= 5).long()[None]
        padded_logits = patcher_model(padded, attention_mask=mask).logits[:, 5:]
        torch.testing.assert_close(padded_logits, output.logits, atol=1e-4, rtol=0)


def test_patcher_training_lowers_its_loss_and_refreezes_it(tiny_model, training_rows, tmp_path):
    model = copy.deepcopy(tiny_model)
    patcher_model = PatcherLanguageModel(model.model.patcher)
    rows = torch.tensor(training_rows["input_ids"][:8])
    with torch.no_grad():
        loss_before = float(patcher_model(rows, labels=rows).loss)
    others_before = {name: p.clone() for name, p in model.named_parameters() if not name.startswith("model.patcher.")}

    args = training_arguments(str(tmp_path), max_steps=12, learning_rate=1e-2, warmup_steps=0)
    train_patcher(model, training_rows, args)

    with torch.no_grad():
        loss_after = float(patcher_model(rows, labels=rows).loss)
    assert loss_after < 0.8 * loss_before
    assert not any(parameter.requires_grad for parameter in model.model.patcher.parameters())
    for name, parameter in model.named_parameters():
        if name in others_before:
            assert torch.equal(parameter, others_before[name]), name


@pytest.mark.parametrize("target", [2.5, 4.0])
def test_calibrated_threshold_gives_the_target_mean_patch_length(tiny_model, target):
    model = copy.deepcopy(tiny_model)
    sample = text_ids(source_text(2000, offset=1000))
    threshold = calibrate_patching_threshold(model, sample, target_bytes_per_patch=target, max_patch_length=8)
    assert model.config.patching_threshold == threshold and model.config.max_patch_length == 8

    # Measured independently: the patches that the model's cached forward closes on the sample.
    with torch.no_grad():
        cache = model.new_cache(1, sample.shape[1])
        model(sample, cache=cache)
    num_patches = int(cache.num_patches[0]) + int(not cache.ends_patch[0, sample.shape[1] - 1])
    assert sample.shape[1] / num_patches == pytest.approx(target, rel=0.1)
    assert mean_patch_length(model, model.model.patcher_entropies(sample)) == pytest.approx(
        sample.shape[1] / num_patches
    )


@pytest.fixture(scope="module")
def tiny_blt_d_model():
    torch.manual_seed(0)
    config = BltDiffusionConfig.from_blt_config(tiny_blt_config(), diffusion_block_size=4)
    model = BltDiffusionForCausalLM(config)
    calibrate_random_model(model, text_ids(source_text(1500)), bytes_per_patch=4.0)
    return model


def test_train_model_logs_loss_components_and_saves_a_loadable_model(tiny_blt_d_model, training_rows, tmp_path):
    model = copy.deepcopy(tiny_blt_d_model)
    args = training_arguments(
        str(tmp_path),
        max_steps=3,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        logging_steps=1,
    )
    train_model(model, training_rows, training_rows.select(range(4)), args)

    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    training_logs = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in training_logs] == [1, 2, 3]
    for entry in training_logs:
        assert math.isfinite(entry["clean_loss"]) and math.isfinite(entry["diffusion_loss"])
    evaluation = [entry for entry in history if "eval_loss" in entry]
    assert len(evaluation) == 1 and math.isfinite(evaluation[0]["eval_clean_loss"])

    loaded = BltDiffusionForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.diffusion_block_size == 4
    assert loaded.config.patching_threshold == model.config.patching_threshold
    trained = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], atol=0, rtol=0, msg=name)
    tokenizer = BltDiffusionTokenizer.from_pretrained(tmp_path)
    assert tokenizer("ab", add_special_tokens=False)["input_ids"] == [97 + 4, 98 + 4]


def test_time_limit_stops_training_after_the_first_step_and_saves_a_checkpoint(tiny_model, training_rows, tmp_path):
    model = copy.deepcopy(tiny_model)
    args = training_arguments(str(tmp_path), max_steps=50, learning_rate=4e-4, per_device_train_batch_size=4)
    train_model(model, training_rows, None, args, max_minutes=0.0)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert not any("clean_loss" in entry for entry in state["log_history"])
    assert [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-1"], "to resume from"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block_size": -1}, "`block_size` must be at least 0, got -1"),
        ({"sequence_length": 0}, "`sequence_length` must be at least 1, got 0"),
        ({"model_size": "huge"}, "Unknown model size 'huge'"),
        ({"model_size": "tiny", "init_from": "checkpoint"}, "--config and --init-from exclude each other"),
        ({"init_from": "checkpoint", "patcher_minutes": 1.0}, "need --train-patcher when fine-tuning"),
        ({"bytes_per_patch": 9.0}, "cannot exceed `max_patch_length` (8)"),
        ({"mid_patch_share": 1.5}, "`mid_patch_share` must lie in [0, 1], got 1.5"),
        ({"distillation_weight": -1.0}, "`distillation_weight` must be >= 0, got -1.0"),
    ],
)
def test_recipe_rejects_invalid_options(options, message):
    with pytest.raises(ValueError) as error_info:
        TrainingRecipe(**options)
    assert message in str(error_info.value)


def test_recipe_stage_arguments_fill_in_the_preset_and_derive_the_patchers(tmp_path):
    recipe = TrainingRecipe(model_size="tiny", patcher_learning_rate=1e-2, suffixes=["txt", ".md"])
    assert recipe.suffixes == [".txt", ".md"] and recipe.train_new_patcher
    args = training_arguments(
        str(tmp_path), gradient_accumulation_steps=4, activation_checkpointing=True, eval_strategy="steps", seed=3
    )

    patcher_args, main_args = recipe.stage_arguments(args)

    schedule = MODEL_PRESETS["tiny"].schedule
    assert (main_args.max_steps, main_args.learning_rate, main_args.data_seed) == (
        schedule.max_steps,
        schedule.learning_rate,
        3,
    )
    assert (main_args.gradient_accumulation_steps, main_args.activation_checkpointing) == (4, True)
    assert patcher_args.output_dir == str(tmp_path / "patcher_trainer")
    assert (patcher_args.max_steps, patcher_args.learning_rate) == (schedule.patcher_max_steps, 1e-2)
    assert (patcher_args.gradient_accumulation_steps, patcher_args.activation_checkpointing) == (1, False)
    assert patcher_args.eval_strategy == "no" and patcher_args.seed == patcher_args.data_seed == 3
    assert (main_args.save_strategy, main_args.save_steps, main_args.save_total_limit) == ("steps", 0.1, 2)
    assert patcher_args.save_strategy == "no", "only main-model training resumes"
    # Without a size, a new model is the default one; a checkpoint takes the fine-tuning schedule.
    assert TrainingRecipe().new_model_size == "small"
    fine_tuning = TrainingRecipe(init_from="checkpoint")
    assert fine_tuning.new_model_size is None and not fine_tuning.train_new_patcher
    _, main_args = fine_tuning.stage_arguments(args)
    assert (main_args.max_steps, main_args.learning_rate) == (
        FINE_TUNING_SCHEDULE.max_steps,
        FINE_TUNING_SCHEDULE.learning_rate,
    )


def test_recipe_sets_the_diffusion_fields_of_new_and_loaded_models(tmp_path):
    recipe = TrainingRecipe(model_size="tiny", block_size=4, mid_patch_share=0.5, distillation_weight=0.3)
    model = initial_model(recipe)
    assert (model.config.diffusion_block_size, model.config.diffusion_mid_patch_share) == (4, 0.5)
    assert model.config.diffusion_distillation_weight == 0.3
    model.save_pretrained(tmp_path)
    loaded = initial_model(TrainingRecipe(init_from=str(tmp_path), block_size=4))
    assert loaded.config.diffusion_mid_patch_share == 0.5  # kept from the checkpoint when not given
    changed = initial_model(
        TrainingRecipe(init_from=str(tmp_path), block_size=4, mid_patch_share=0.25, cell_embedding="encoder")
    )
    assert changed.config.diffusion_mid_patch_share == 0.25
    assert changed.config.diffusion_cell_embedding == "encoder"
    assert changed.model.diffusion_mask_embedding is not None and changed.model.diffusion_embed_tokens is None


def test_a_new_model_trains_with_the_measured_diffusion_choices_and_a_checkpoint_keeps_its_own(tmp_path):
    new = TrainingRecipe(model_size="tiny", block_size=4).model_config_overrides()
    assert new == {"diffusion_block_size": 4, **NEW_MODEL_DIFFUSION}
    chosen = TrainingRecipe(model_size="tiny", cell_embedding="table").model_config_overrides()
    assert chosen["diffusion_cell_embedding"] == "table"
    fine_tuning = TrainingRecipe(init_from=str(tmp_path), block_size=4).model_config_overrides()
    assert fine_tuning == {"diffusion_block_size": 4}
