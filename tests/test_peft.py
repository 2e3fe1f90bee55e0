"""PEFT: a LoRA adapter on a BLT-D model trains with `BltTrainer` on both loss terms, generates with every decoding
strategy through the PEFT model, saves and reloads, and merges into the same model."""

import copy

import datasets
import torch
from conftest import source_text, text_ids
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainingArguments

from blt_diffusion import BltDiffusionForCausalLM
from blt_diffusion.training import BltTrainer

# README, "Fine-tune": every linear layer of the local encoder, the global transformer and the local decoder (their
# self-attention, MLP and cross-attention projections); not the entropy patcher, which decides where patches end.
LORA_TARGET_MODULES = (
    r"model\.(local_encoder|global_transformer|local_decoder)\..*"
    r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
STRATEGIES = {
    "autoregressive": {},
    "diffusion": {"block_size": 4},
    "self_speculative": {"draft_length": 4},
    "diffusion_verified": {"block_size": 4},
}


def training_rows(count: int = 4, length: int = 48) -> datasets.Dataset:
    text = source_text(count * length, offset=3000)
    rows = [text_ids(text[index * length : (index + 1) * length])[0].tolist() for index in range(count)]
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})


def test_lora_trains_generates_saves_and_merges(diffusion_model, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM")
    model = get_peft_model(copy.deepcopy(diffusion_model), config)
    trainable = [name for name, parameter in model.get_base_model().named_parameters() if parameter.requires_grad]
    adapted = {name.split(".lora_")[0] for name in trainable}
    assert all(".lora_" in name for name in trainable)
    assert {name.rsplit(".", 1)[1] for name in adapted} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert any(".cross_attn_layers." in name for name in adapted) and not any(".patcher." in name for name in adapted)

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=3e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    trainer = BltTrainer(model=model, args=args, train_dataset=training_rows())
    trainer.train()
    model.eval()
    # Both of BLT-D's loss terms reached the Trainer (it logs each one).
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all(entry["clean_loss"] > 0 and entry["diffusion_loss"] > 0 for entry in logged)
    # Only the adapter trained: the base weights are those of the model it was made from.
    base_weights = diffusion_model.state_dict()
    for name, tensor in model.get_base_model().state_dict().items():
        if ".lora_" not in name:
            assert torch.equal(tensor, base_weights[name.replace(".base_layer", "")]), name

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(diffusion_model), tmp_path / "adapter").eval()
    copy.deepcopy(reloaded).merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = BltDiffusionForCausalLM.from_pretrained(tmp_path / "merged")
    ids = text_ids(source_text(64, offset=500))
    with torch.no_grad():
        logits = model(ids).logits
        torch.testing.assert_close(reloaded(ids).logits, logits, rtol=0, atol=0)
        torch.testing.assert_close(merged(ids).logits, logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(diffusion_model(ids).logits, logits, atol=1e-3), "the adapter changes the model"

    # `PeftModelForCausalLM.generate` hands every argument to the model's own `generate`.
    prompt = text_ids("def add(a, b):")
    for decoding, knobs in STRATEGIES.items():
        kwargs = dict(decoding=decoding, max_new_tokens=16, min_new_tokens=16, do_sample=False, **knobs)
        through_peft = model.generate(prompt, return_dict_in_generate=True, **kwargs)
        from_merged = merged.generate(prompt, return_dict_in_generate=True, **kwargs)
        assert torch.equal(through_peft.sequences, from_merged.sequences), decoding
        assert torch.equal(through_peft.decoder_nfe, from_merged.decoder_nfe), decoding
