"""The BLT-D training objective: block layout, masking, losses, attention leakage and fine-tuning from stock BLT."""

import copy
import dataclasses

import pytest
import torch
from conftest import PARITY_CONFIGS, build_pair, diffusion_model_from, source_text, text_ids

from blt_diffusion import BltDiffusionConfig, BltDiffusionForCausalLM
from blt_diffusion.block_diffusion_blt_diffusion import (
    BlockDiffusionLayout,
    DiffusionBlocks,
    autoregressive_targets,
    block_diffusion_attention,
    sample_diffusion_blocks,
)

BLOCK_SIZE = 6


@pytest.fixture(
    scope="module",
    params=[(name, cells) for name in sorted(PARITY_CONFIGS) for cells in ("table", "encoder")],
    ids=lambda param: "-".join(param),
)
def models(request):
    """(plain BLT, BLT-D) on the same weights, for each parity configuration (windows, max patch length, GQA) and
    each way cells reach the decoder (`diffusion_cell_embedding`)."""
    config_name, cell_embedding = request.param
    stock, plain = build_pair(**PARITY_CONFIGS[config_name])
    return plain, diffusion_model_from(stock, BLOCK_SIZE, diffusion_cell_embedding=cell_embedding)


def sampled_blocks(model, input_ids, seed=0, attention_mask=None) -> DiffusionBlocks:
    encoded = model.model.encode(input_ids, attention_mask=attention_mask)
    generator = torch.Generator().manual_seed(seed)
    return sample_diffusion_blocks(model.config, input_ids, input_ids, attention_mask, encoded, generator=generator)


def dense_mask(layout: BlockDiffusionLayout) -> torch.Tensor:
    """The whole boolean mask a layout stands for, (batch, 1, clean + cells, clean + cells), to compare with."""
    batch_size, _, num_blocks, block_size, _ = layout.cells_to_block.shape
    num_cells = num_blocks * block_size
    num_clean = layout.num_clean
    clean_mask = layout.clean_mask
    if clean_mask is None:
        clean_mask = torch.ones(batch_size, 1, num_clean, num_clean, dtype=torch.bool)
    cells_to_cells = torch.zeros(batch_size, 1, num_blocks, block_size, num_blocks, block_size, dtype=torch.bool)
    blocks = torch.arange(num_blocks)
    # Indexing two separated dimensions moves the block dimension to the front.
    cells_to_cells[:, :, blocks, :, blocks, :] = layout.cells_to_block.permute(2, 0, 1, 3, 4)
    cells_to_cells = cells_to_cells.reshape(batch_size, 1, num_cells, num_cells)
    clean_rows = torch.cat([clean_mask, clean_mask.new_zeros(batch_size, 1, num_clean, num_cells)], dim=3)
    cell_rows = torch.cat([layout.cells_to_clean, cells_to_cells], dim=3)
    return torch.cat([clean_rows, cell_rows], dim=2)


def run(model, input_ids, blocks, labels=None):
    with torch.no_grad():
        return model(input_ids, labels=labels, diffusion_blocks=blocks)


# --- Block layout and masking ----------------------------------------------------------------------------------------


def test_blocks_are_anchored_at_every_patch_start_after_the_first(models):
    _, model = models
    input_ids = text_ids(source_text(300, 200))
    encoded = model.model.encode(input_ids)
    blocks = sampled_blocks(model, input_ids)
    ends_patch = encoded.segmentation.ends_patch[0]
    expected_starts = (torch.nonzero(ends_patch[:-1])[:, 0] + 1).tolist()
    assert blocks.starts[0].tolist() == expected_starts
    assert len(expected_starts) > 40  # the calibrated patcher cuts many multi-byte patches

    slots = blocks.starts[0, :, None] + torch.arange(BLOCK_SIZE)
    inside = slots < input_ids.shape[1]
    assert torch.equal(blocks.valid[0], inside)
    # Cells hold (or predict) the byte at their own position; cells past the end are padding, never supervised.
    expected_bytes = input_ids[0, slots.clamp(max=input_ids.shape[1] - 1)]
    assert torch.equal(blocks.targets[0][inside], expected_bytes[inside])
    assert bool((blocks.targets[0][~inside] == -100).all())
    assert not bool(blocks.masked[0][~inside].any())
    unmasked = inside & ~blocks.masked[0]
    assert torch.equal(blocks.input_ids[0][unmasked], expected_bytes[unmasked])
    assert bool((blocks.input_ids[0][blocks.masked[0]] == model.config.diffusion_mask_id).all())


def test_one_mask_ratio_per_example_masks_that_share_of_cells(models):
    _, model = models
    input_ids = text_ids(source_text(400)).repeat(64, 1)
    blocks = sampled_blocks(model, input_ids, seed=3)
    ratio = blocks.mask_ratio
    assert ratio.shape == (64,)
    assert bool((ratio >= model.config.diffusion_min_mask_ratio).all()) and bool((ratio <= 1).all())
    masked_share = blocks.masked.flatten(1).float().sum(1) / blocks.valid.flatten(1).float().sum(1)
    # Per example the masked share tracks its own t (each row holds hundreds of cells).
    assert float((masked_share - ratio).abs().max()) < 0.12
    assert float(torch.corrcoef(torch.stack([masked_share, ratio]))[0, 1]) > 0.98


def test_right_padding_is_outside_every_block(models):
    _, model = models
    input_ids = text_ids(source_text(120, 40)).repeat(2, 1)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 80:] = 0
    blocks = sampled_blocks(model, input_ids, attention_mask=attention_mask)
    slots = blocks.starts[1, :, None] + torch.arange(BLOCK_SIZE)
    assert not bool((blocks.valid[1] & (slots >= 80)).any())
    assert bool((blocks.starts[1] < 80).all())


def test_a_share_of_anchors_moves_inside_patches_whose_open_parts_never_overlap(models, monkeypatch):
    _, model = models
    input_ids = text_ids(source_text(300, 200)).repeat(8, 1)
    encoded = model.model.encode(input_ids)
    at_patch_starts = sampled_blocks(model, input_ids)
    monkeypatch.setattr(model.config, "diffusion_mid_patch_share", 0.5)
    blocks = sampled_blocks(model, input_ids, seed=7)
    present = blocks.starts >= 0
    # Each block stays in the patch it was anchored at: between that patch's start and its last byte.
    assert torch.equal(blocks.open_patch_starts, at_patch_starts.starts)
    patch_of = encoded.segmentation.patch_index.gather(1, blocks.starts.clamp(min=0))
    patch_of_start = encoded.segmentation.patch_index.gather(1, blocks.open_patch_starts.clamp(min=0))
    assert torch.equal(patch_of[present], patch_of_start[present])
    moved = blocks.mid_patch
    patch_lengths = torch.bincount(encoded.segmentation.patch_index[0])
    movable = present & (patch_lengths[patch_of] > 1)
    assert not bool((moved & ~movable).any())
    assert 0.4 < float(moved.sum() / movable.sum()) < 0.6
    # Cells hold the bytes at their own (moved) positions.
    slots = (blocks.starts[..., None] + torch.arange(BLOCK_SIZE)).clamp(max=input_ids.shape[1] - 1)
    inside = blocks.valid
    assert torch.equal(blocks.targets[inside], input_ids.gather(1, slots.flatten(1)).view_as(slots)[inside])


# --- Leakage ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mid_patch_share", [0.0, 1.0], ids=["patch starts", "inside patches"])
def test_block_predictions_ignore_clean_bytes_at_and_after_the_block_start(models, mid_patch_share, monkeypatch):
    _, model = models
    monkeypatch.setattr(model.config, "diffusion_mid_patch_share", mid_patch_share)
    input_ids = text_ids(source_text(260, 600))
    blocks = sampled_blocks(model, input_ids, seed=1)
    assert bool(blocks.mid_patch.any()) == (mid_patch_share > 0)
    reference = run(model, input_ids, blocks).diffusion_logits
    generator = torch.Generator().manual_seed(0)
    for block_index in (3, blocks.starts.shape[1] // 2, blocks.starts.shape[1] - 2):
        anchor = int(blocks.starts[0, block_index])
        changed = input_ids.clone()
        changed[0, anchor:] = torch.randint(4, 260, (input_ids.shape[1] - anchor,), generator=generator)
        logits = run(model, changed, blocks).diffusion_logits
        earlier = blocks.starts[0] <= anchor
        # Provisional latents attend as many patch keys as the row closes, which the change alters: float noise.
        atol = 1e-4 if mid_patch_share > 0 else 1e-5
        torch.testing.assert_close(logits[0, earlier], reference[0, earlier], atol=atol, rtol=0)
        # The change is visible where it should be: in later blocks.
        assert not torch.allclose(logits[0, ~earlier], reference[0, ~earlier], atol=1e-3)


def test_clean_predictions_ignore_every_block(models):
    _, model = models
    input_ids = text_ids(source_text(200, 100))
    blocks = sampled_blocks(model, input_ids, seed=2)
    reference = run(model, input_ids, blocks)
    scrambled = dataclasses.replace(
        blocks, input_ids=torch.randint(4, 261, blocks.input_ids.shape, generator=torch.Generator().manual_seed(5))
    )
    changed = run(model, input_ids, scrambled)
    assert torch.equal(changed.logits, reference.logits)
    assert not torch.allclose(changed.diffusion_logits, reference.diffusion_logits, atol=1e-3)


def test_blocks_do_not_see_each_other(models):
    _, model = models
    input_ids = text_ids(source_text(200, 1000))
    blocks = sampled_blocks(model, input_ids, seed=4)
    reference = run(model, input_ids, blocks).diffusion_logits
    changed_inputs = blocks.input_ids.clone()
    changed_inputs[0, 5] = model.config.diffusion_mask_id
    changed_inputs[0, 5, 0] = 100
    logits = run(model, input_ids, dataclasses.replace(blocks, input_ids=changed_inputs)).diffusion_logits
    others = torch.arange(blocks.starts.shape[1]) != 5
    torch.testing.assert_close(logits[0, others], reference[0, others], atol=1e-5, rtol=0)
    assert not torch.allclose(logits[0, 5], reference[0, 5], atol=1e-3)


def test_no_cell_may_attend_its_own_clean_twin_or_anything_after_its_block_start(models):
    _, model = models
    input_ids = text_ids(source_text(150))
    blocks = sampled_blocks(model, input_ids)
    num_clean = input_ids.shape[1]
    mask = dense_mask(BlockDiffusionLayout.build(torch.zeros(1, dtype=torch.long), num_clean, blocks, None))[0, 0]
    cell_rows = mask[num_clean:, :num_clean]
    anchors = blocks.starts[0].repeat_interleave(BLOCK_SIZE)
    clean_slots = torch.arange(num_clean)
    assert not bool((cell_rows & (clean_slots[None, :] >= anchors[:, None])).any())
    # ...but every clean byte before the anchor is visible, so the mask is not simply empty.
    assert bool((cell_rows == (clean_slots[None, :] < anchors[:, None])).all())
    # Clean rows never read cells.
    assert not bool(mask[:num_clean, num_clean:].any())


# --- Losses ----------------------------------------------------------------------------------------------------------


def test_clean_loss_equals_plain_blt_loss_and_nothing_masked_gives_zero_diffusion_loss(models):
    plain, model = models
    input_ids = text_ids(source_text(300, 50))
    labels = input_ids.masked_fill(torch.arange(input_ids.shape[1]) < 7, -100)
    blocks = sampled_blocks(model, input_ids)
    unmasked = dataclasses.replace(
        blocks,
        masked=torch.zeros_like(blocks.masked),
        input_ids=torch.where(blocks.valid, blocks.targets.clamp(min=0), model.config.pad_token_id),
    )
    with torch.no_grad():
        expected = plain(input_ids, labels=labels)
        actual = model(input_ids, labels=labels, diffusion_blocks=unmasked)
        sampled = model(input_ids, labels=labels)
    torch.testing.assert_close(actual.clean_loss, expected.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-4, rtol=0)
    assert float(actual.diffusion_loss) == 0.0
    torch.testing.assert_close(actual.loss, actual.clean_loss)
    torch.testing.assert_close(sampled.clean_loss, expected.loss, atol=1e-5, rtol=0)
    assert float(sampled.diffusion_loss) > 0
    torch.testing.assert_close(sampled.loss, sampled.clean_loss + sampled.diffusion_loss)


def test_diffusion_loss_weight_weights_the_diffusion_term(models, monkeypatch):
    _, model = models
    input_ids = text_ids(source_text(200, 500))
    blocks = sampled_blocks(model, input_ids)
    monkeypatch.setattr(model.config, "diffusion_loss_weight", 0.25)
    with torch.no_grad():
        output = model(input_ids, labels=input_ids, diffusion_blocks=blocks)
    assert float(output.diffusion_loss) > 0
    torch.testing.assert_close(output.loss, output.clean_loss + 0.25 * output.diffusion_loss)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_diffusion_loss_is_the_inverse_t_weighted_masked_cross_entropy(reduction):
    stock, _ = build_pair(seed=0)
    model = diffusion_model_from(stock, BLOCK_SIZE, diffusion_loss_reduction=reduction)
    input_ids = torch.cat([text_ids(source_text(180, 300)), text_ids(source_text(180, 900))])
    blocks = sampled_blocks(model, input_ids, seed=7)
    output = run(model, input_ids, blocks, labels=input_ids)
    log_probs = output.diffusion_logits.log_softmax(-1)
    weighted_sum = 0.0
    for row in range(2):
        for block, offset in torch.nonzero(blocks.masked[row]).tolist():
            target = int(blocks.targets[row, block, offset])
            weighted_sum -= float(log_probs[row, block, offset, target]) / float(blocks.mask_ratio[row])
    clean_bytes = input_ids.numel() - 2
    if reduction == "mean":
        expected = weighted_sum / int((blocks.targets != -100).sum())
    else:
        expected = weighted_sum / clean_bytes
    assert float(output.diffusion_loss) == pytest.approx(expected, rel=1e-4)
    log_probs = output.logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None])
    assert float(output.clean_loss) == pytest.approx(-float(log_probs.sum()) / clean_bytes, rel=1e-4)


def test_invalid_loss_settings_are_rejected():
    with pytest.raises(ValueError, match="diffusion_loss_reduction"):
        BltDiffusionConfig(diffusion_block_size=4, diffusion_loss_reduction="avg")
    with pytest.raises(ValueError, match="diffusion_min_mask_ratio"):
        BltDiffusionConfig(diffusion_block_size=4, diffusion_min_mask_ratio=0.0)
    for weight in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="diffusion_loss_weight"):
            BltDiffusionConfig(diffusion_block_size=4, diffusion_loss_weight=weight)


def test_diffusion_blocks_on_a_plain_model_name_the_problem(models):
    plain, model = models
    input_ids = text_ids(source_text(60))
    with pytest.raises(ValueError, match="diffusion_block_size"):
        plain(input_ids, diffusion_blocks=sampled_blocks(model, input_ids))


# --- Fine-tuning from stock BLT --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory):
    stock, _ = build_pair(seed=0)
    directory = tmp_path_factory.mktemp("stock_blt")
    stock.save_pretrained(directory)
    return directory, stock


def test_stock_directory_becomes_a_blt_d_model_that_still_decodes_like_stock(stock_dir):
    directory, stock = stock_dir
    model, info = BltDiffusionForCausalLM.from_pretrained(directory, diffusion_block_size=8, output_loading_info=True)
    assert model.config.diffusion_block_size == 8
    assert set(info["missing_keys"]) == {"model.diffusion_embed_tokens.weight"}
    assert not info["unexpected_keys"]
    embedding = model.model.diffusion_embed_tokens.weight.detach()
    assert embedding.shape == (261, model.config.decoder_config.hidden_size)
    assert 0.5 < float(embedding.std()) * embedding.shape[1] ** 0.5 < 1.5  # freshly initialised, not zeros
    input_ids = text_ids(source_text(200))
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(input_ids).logits, stock(input_ids, use_cache=False).logits, atol=1e-4, rtol=0
        )


@pytest.mark.parametrize(
    ("mid_patch_share", "cell_embedding", "new_parameter"),
    [(0.0, "table", "diffusion_embed_tokens"), (0.5, "encoder", "diffusion_mask_embedding")],
    ids=["table cells at patch starts", "encoder cells inside patches too"],
)
def test_both_loss_terms_backpropagate_through_the_whole_model(
    stock_dir, mid_patch_share, cell_embedding, new_parameter
):
    directory, _ = stock_dir
    model = BltDiffusionForCausalLM.from_pretrained(
        directory,
        diffusion_block_size=8,
        diffusion_mid_patch_share=mid_patch_share,
        diffusion_cell_embedding=cell_embedding,
    ).train()
    input_ids = text_ids(source_text(240, 1200))
    torch.manual_seed(0)
    output = model(input_ids, labels=input_ids)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    new_weight = f"model.{new_parameter}.weight"
    for term, reaches_new_weight in ((output.diffusion_loss, True), (output.clean_loss, False)):
        model.zero_grad()
        term.backward(retain_graph=True)
        reached = {
            name
            for name, parameter in model.named_parameters()
            if parameter.grad is not None and parameter.grad.abs().sum() > 0
        }
        for prefix in ("model.local_encoder.", "model.global_transformer.", "model.local_decoder.", "lm_head."):
            assert any(name.startswith(prefix) for name in reached), (prefix, term)
        assert (new_weight in reached) == reaches_new_weight
        assert not any(name.startswith("model.patcher.") for name in reached)
    assert new_weight in trainable


def test_encoder_gradient_scale_scales_only_the_cell_pass_gradient(stock_dir):
    directory, _ = stock_dir
    input_ids = text_ids(source_text(160, 3000))

    def diffusion_gradients(scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)  # the new mask embedding is initialised at random
        model = BltDiffusionForCausalLM.from_pretrained(
            directory,
            diffusion_block_size=8,
            diffusion_cell_embedding="encoder",
            diffusion_encoder_gradient_scale=scale,
        ).train()
        blocks = sampled_blocks(model, input_ids, seed=3)
        loss = model(input_ids, labels=input_ids, diffusion_blocks=blocks).diffusion_loss
        loss.backward()
        return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    full_loss, full = diffusion_gradients(1.0)
    assert full_loss > 0
    scaled_loss, scaled = diffusion_gradients(0.25)
    torch.testing.assert_close(scaled_loss, full_loss, atol=0, rtol=0)
    mask_weight = "model.diffusion_mask_embedding.weight"
    torch.testing.assert_close(scaled[mask_weight], 0.25 * full[mask_weight])
    for name in (name for name in full if name.startswith(("model.local_decoder.", "lm_head."))):
        torch.testing.assert_close(scaled[name], full[name], msg=name)
    encoder_embedding = "model.local_encoder.embed_tokens.weight"
    assert not torch.allclose(scaled[encoder_embedding], full[encoder_embedding])


def test_gradient_checkpointing_gives_the_same_diffusion_gradients(stock_dir):
    directory, _ = stock_dir
    model = BltDiffusionForCausalLM.from_pretrained(directory, diffusion_block_size=4).train()
    input_ids = text_ids(source_text(120, 2000))
    blocks = sampled_blocks(model, input_ids, seed=9)

    def gradients():
        model.zero_grad()
        model(input_ids, labels=input_ids, diffusion_blocks=blocks).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_a_cache_with_the_diffusion_objective_is_refused(models):
    _, model = models
    input_ids = text_ids(source_text(30))
    with pytest.raises(ValueError, match="whole sequences"):
        copy.deepcopy(model)(input_ids, labels=input_ids, use_cache=True)


def test_attention_in_parts_equals_dense_attention_under_the_full_mask(models):
    _, model = models
    input_ids = torch.cat([text_ids(source_text(90, 10)), text_ids(source_text(90, 500))])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :7] = 0
    encoded = model.model.encode(input_ids, attention_mask=attention_mask)
    blocks = sample_diffusion_blocks(model.config, input_ids, input_ids, attention_mask, encoded)
    layout = BlockDiffusionLayout.build(encoded.starts, input_ids.shape[1], blocks, window=16)
    dense = dense_mask(layout)
    num_positions = dense.shape[-1]
    query, key, value = torch.randn(3, 2, 4, num_positions, 8, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=dense)
    torch.testing.assert_close(block_diffusion_attention(query, key, value, layout, 0.0), expected)
    # Every cell sees the real cells of its own block (a padding cell also itself), and nothing of other blocks.
    cells = dense[:, 0, input_ids.shape[1] :, input_ids.shape[1] :]
    expected_pairs = blocks.valid.sum() * blocks.block_size + (~blocks.valid).sum()
    assert int(cells.sum()) == int(expected_pairs)


def test_self_distillation_adds_the_cross_entropy_with_the_models_own_autoregressive_prediction(models, monkeypatch):
    _, model = models
    input_ids = text_ids(source_text(200, 300))
    blocks = sampled_blocks(model, input_ids, seed=2)
    plain = run(model, input_ids, blocks, labels=input_ids)
    monkeypatch.setattr(model.config, "diffusion_distillation_weight", 0.5)
    distilled = run(model, input_ids, blocks, labels=input_ids)

    # The cell at slot p learns the next-byte distribution the clean stream gives after slot p - 1.
    previous = (blocks.cell_slots()[0] - 1).clamp(0, input_ids.shape[1] - 1)
    teacher = plain.logits[0, previous].softmax(dim=-1).view(*blocks.targets.shape[1:], -1)
    cross_entropy = -(teacher * distilled.diffusion_logits[0].log_softmax(dim=-1)).sum(dim=-1)
    supervised = blocks.targets[0] != -100
    weights = blocks.masked[0] / blocks.mask_ratio[0]
    expected = plain.diffusion_loss + 0.5 * (cross_entropy * weights * supervised).sum() / supervised.sum()
    torch.testing.assert_close(distilled.diffusion_loss, expected)
    assert torch.equal(distilled.clean_loss, plain.clean_loss)
    # The teacher only teaches: no gradient reaches the next-byte logits through it.
    logits = plain.logits.clone().requires_grad_()
    assert not autoregressive_targets(logits, blocks).requires_grad
