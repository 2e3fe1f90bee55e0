"""Training-side behaviour of the forward pass: gradients, frozen patcher, gradient checkpointing."""

import copy

import torch
from conftest import source_text, text_ids


def gradients(model, input_ids, labels):
    model.zero_grad()
    model(input_ids, labels=labels).loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


def test_gradients_reach_every_trainable_module_and_skip_the_frozen_patcher(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    input_ids = text_ids(source_text(150))
    grads = gradients(model, input_ids, input_ids)
    assert not any(name.startswith("model.patcher.") for name in grads)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert set(grads) == trainable
    for prefix in ("model.local_encoder.", "model.global_transformer.", "model.local_decoder.", "lm_head."):
        assert any(name.startswith(prefix) and grad.abs().sum() > 0 for name, grad in grads.items())


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    input_ids = text_ids(source_text(120, 500))
    labels = input_ids.masked_fill(torch.arange(input_ids.shape[1]) < 10, -100)
    plain = gradients(model, input_ids, labels)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = gradients(model, input_ids, labels)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_right_padded_training_batch_matches_unpadded_rows(tiny_model):
    model = copy.deepcopy(tiny_model)
    short, long = text_ids(source_text(40, 100)), text_ids(source_text(70, 900))
    batch = torch.full((2, 70 + 1), 3)
    batch[0, : short.shape[1]], batch[1] = short[0], long[0]
    mask = (torch.arange(batch.shape[1]) < torch.tensor([[short.shape[1]], [long.shape[1]]])).long()
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        torch.testing.assert_close(logits[0, : short.shape[1]], model(short).logits[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(logits[1], model(long).logits[0], atol=1e-4, rtol=0)
