"""Distributed training: `examples/train.py` in two CPU processes (gloo) launched by `accelerate launch`, data
parallel (DDP) and sharded (FSDP2).

Run as a script, this file is the launched program: it runs `examples/train.py` with the arguments after the report
directory, keeps the model that the script builds, and writes what that process ended with (its rank, the number of
processes, the patching threshold, a digest of every weight, the model's class and how many parameters the process
holds) to `REPORT_DIR/rank{rank}.json`. With `--fsdp-on-cpu` first, it lets accelerate shard on the CPU
(`honour_fsdp_on_cpu`).
"""

import hashlib
import json
import os
import re
import runpy
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import accelerate.state
import pytest
import torch
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

import blt_diffusion.training.pipeline
from blt_diffusion import BltDiffusionForCausalLM, BltDiffusionTokenizer
from blt_diffusion.training import (
    TrainingRecipe,
    check_process_group,
    heldout_bits_per_byte,
    pack_byte_sequences,
    stdlib_source_files,
    training_arguments,
)
from blt_diffusion.training.data import evenly_spaced_rows
from blt_diffusion.training.trainer import gathered_state_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"
NUM_PROCESSES = 2
MAX_STEPS = 3
BATCH_SIZE = 2
SEQUENCE_LENGTH = 64
# Training rows: the first NUM_ROWS * SEQUENCE_LENGTH bytes of the standard library.
NUM_ROWS = 64
# The launched program's first argument to lift accelerate's restriction of FSDP to accelerators.
FSDP_ON_CPU = "--fsdp-on-cpu"


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor of a state dict, by name, bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_example(
    output_dir: Path, report_dir: Path, fsdp_on_cpu: bool = False, train_args: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """Train a tiny model with `examples/train.py` and `train_args` in `NUM_PROCESSES` CPU processes, each reporting
    to `report_dir`; sharded by FSDP with `fsdp_on_cpu` and FSDP options in `train_args`."""
    report_dir.mkdir()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(NUM_PROCESSES)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += [
        "--main_process_port",
        str(free_port()),
        __file__,
        *([FSDP_ON_CPU] if fsdp_on_cpu else []),
        str(report_dir),
    ]
    example_args = ["--output-dir", str(output_dir), "--config", "tiny", "--block-size", "4", "--threads", "1"]
    example_args += ["--max-steps", str(MAX_STEPS), "--patcher-steps", "2"]
    example_args += ["--per-device-train-batch-size", str(BATCH_SIZE), "--per-device-eval-batch-size", str(BATCH_SIZE)]
    example_args += ["--sequence-length", str(SEQUENCE_LENGTH), "--max-bytes", str(NUM_ROWS * SEQUENCE_LENGTH)]
    # `accelerate launch --cpu` starts one process unless given an MPI hostfile; `--multi_gpu` starts them with
    # torchrun, and ACCELERATE_USE_CPU (what `--cpu` sets) makes them train on the CPU over gloo, GPUs or not.
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        launch + example_args + list(train_args), env=env, capture_output=True, text=True, timeout=300
    )


def read_reports(report_dir: Path) -> list[dict]:
    return [json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in range(NUM_PROCESSES)]


@pytest.mark.slow
def test_two_cpu_processes_train_in_step_and_save_one_checkpoint(tmp_path):
    output_dir, report_dir = tmp_path / "run", tmp_path / "reports"

    result = launch_example(output_dir, report_dir)

    assert result.returncode == 0, result.stderr[-5000:]
    assert re.fullmatch(r"held-out bits per byte: [0-9.]+\n", result.stdout), "only the main process prints"
    assert result.stderr.count("blt-diffusion: Stage 3") == 1, "only the main process reports progress"

    reports = read_reports(report_dir)
    assert all(report["world_size"] == NUM_PROCESSES for report in reports)
    assert all(report["model_class"] == "BltDiffusionForCausalLM" for report in reports), "DDP keeps whole models"
    assert len({report["patching_threshold"] for report in reports}) == 1, "every process patches alike"
    assert len({report["weights"] for report in reports}) == 1, "the processes end with identical weights"

    # The Trainer shared the rows out: each step went through NUM_PROCESSES * BATCH_SIZE of them.
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert history[-1]["epoch"] == pytest.approx(MAX_STEPS * NUM_PROCESSES * BATCH_SIZE / NUM_ROWS)

    model = BltDiffusionForCausalLM.from_pretrained(output_dir)
    assert weights_digest(model.state_dict()) == reports[0]["weights"]
    assert model.config.patching_threshold == reports[0]["patching_threshold"]
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert f"{results['heldout_bits_per_byte']:.4f}" in result.stdout
    tokenizer = BltDiffusionTokenizer.from_pretrained(output_dir)
    inputs = tokenizer("def add(a, b):", return_tensors="pt")
    output = model.generate(**inputs, decoding="diffusion", max_new_tokens=8, min_new_tokens=8)
    assert output.shape[1] == inputs.input_ids.shape[1] + 8


@pytest.mark.slow
def test_fsdp_shards_the_model_over_two_cpu_processes_and_saves_it_whole(tmp_path):
    output_dir, report_dir, fsdp_config = tmp_path / "run", tmp_path / "reports", tmp_path / "fsdp.json"
    fsdp_config.write_text(json.dumps({"transformer_layer_cls_to_wrap": ["BltDiffusionTransformerLayer"]}))

    result = launch_example(
        output_dir, report_dir, fsdp_on_cpu=True, train_args=["--fsdp", "--fsdp_config", str(fsdp_config)]
    )

    assert result.returncode == 0, result.stderr[-5000:]
    assert re.fullmatch(r"held-out bits per byte: [0-9.]+\n", result.stdout), "only the main process prints"
    reports = read_reports(report_dir)
    # FSDP2 trained the model in place: each process holds its own part of the parameters, none holds them all.
    assert all(report["model_class"] == "FSDPBltDiffusionForCausalLM" for report in reports)
    assert sum(report["local_parameters"] for report in reports) == reports[0]["parameters"]
    assert all(report["local_parameters"] < report["parameters"] for report in reports)
    # The patcher stage trained under the wrapper too, and its weights came back whole for calibration.
    assert all(report["patcher_trained"] for report in reports)
    assert len({report["patching_threshold"] for report in reports}) == 1, "every process patches alike"
    assert len({report["weights"] for report in reports}) == 1, "the shards gather to the same weights"

    # The main process saved whole weights, with this package's code (not torch's FSDP modules) as remote code.
    model = BltDiffusionForCausalLM.from_pretrained(output_dir)
    assert weights_digest(model.state_dict()) == reports[0]["weights"]
    assert model.config.patching_threshold == reports[0]["patching_threshold"]
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_blt_diffusion.BltDiffusionForCausalLM"
    assert not list(output_dir.glob("**/_fsdp*.py"))

    # The held-out evaluation ran on the sharded model: it scores as the saved model does on the same rows.
    recipe = TrainingRecipe(sequence_length=SEQUENCE_LENGTH)
    heldout_rows = pack_byte_sequences(stdlib_source_files("heldout"), SEQUENCE_LENGTH)
    heldout_rows = heldout_rows.select(evenly_spaced_rows(len(heldout_rows), recipe.eval_rows))
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["heldout_bits_per_byte"] == pytest.approx(heldout_bits_per_byte(model, heldout_rows), rel=1e-5)

    tokenizer = BltDiffusionTokenizer.from_pretrained(output_dir)
    inputs = tokenizer("def add(a, b):", return_tensors="pt")
    output = model.generate(**inputs, decoding="diffusion", max_new_tokens=8, min_new_tokens=8)
    assert output.shape[1] == inputs.input_ids.shape[1] + 8


def test_processes_that_cannot_train_together_are_an_error(monkeypatch, tmp_path):
    # What `torchrun` or `accelerate launch --multi_gpu` sets on a machine without GPUs, where, without
    # ACCELERATE_USE_CPU, each process would train alone and write the same files as the others.
    monkeypatch.setenv("WORLD_SIZE", str(NUM_PROCESSES))
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    with pytest.raises(ValueError, match="2 processes were launched but they do not form one process group"):
        check_process_group(training_arguments(str(tmp_path)))


def honour_fsdp_on_cpu() -> None:
    """Let accelerate shard with FSDP in CPU processes, as it does on GPUs.

    accelerate applies an FSDP plugin only to processes on accelerators: on the CPU (`ACCELERATE_USE_CPU`) its
    distributed type stays `MULTI_CPU`, and the Trainer trains data parallel without a word. This sets the type after
    `AcceleratorState.__init__` as its GPU branch does, so that the rest is accelerate's and torch's FSDP2 code.
    """
    accelerator_state_init = accelerate.state.AcceleratorState.__init__

    def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate.state.AcceleratorState.__init__ = init_with_fsdp_on_cpu


def run_example_and_report(report_dir: Path, example_args: list[str]) -> int:
    """Run `examples/train.py` in this process, then write what the process ended with to `report_dir`."""
    pipeline = blt_diffusion.training.pipeline
    build_model = pipeline.build_model
    models, initial_patchers = [], []

    def build_and_keep(*args, **kwargs):
        models.append(build_model(*args, **kwargs))
        initial_patchers.append(weights_digest(models[-1].model.patcher.state_dict()))
        return models[-1]

    pipeline.build_model = build_and_keep
    sys.argv = [str(EXAMPLE), *example_args]
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    except SystemExit as exit:
        if exit.code:
            return exit.code
    (model,) = models
    # Collective under FSDP: every process gathers the shards.
    weights = gathered_state_dict(model)
    patcher_weights = {
        name.removeprefix("model.patcher."): tensor
        for name, tensor in weights.items()
        if name.startswith("model.patcher.")
    }
    report = {
        "world_size": torch.distributed.get_world_size(),
        "patching_threshold": model.config.patching_threshold,
        "weights": weights_digest(weights),
        "patcher_trained": weights_digest(patcher_weights) != initial_patchers[0],
        "model_class": type(model).__name__,
        "parameters": sum(tensor.numel() for tensor in model.parameters()),
        "local_parameters": sum(local_part(tensor).numel() for tensor in model.parameters()),
    }
    (report_dir / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(report))
    return 0


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` that this process holds: its shard of a sharded (DTensor) parameter, else all of it."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


if __name__ == "__main__":
    if sys.argv[1] == FSDP_ON_CPU:
        honour_fsdp_on_cpu()
        sys.argv.pop(1)
    sys.exit(run_example_and_report(Path(sys.argv[1]), sys.argv[2:]))
