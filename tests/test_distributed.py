"""Data-parallel training: `examples/train.py` in two CPU processes (gloo) launched by `accelerate launch`.

Run as a script, this file is the launched program: it runs `examples/train.py` with the arguments after the report
directory, keeps the model that the script builds, and writes what that process ended with (its rank, the number of
processes, the patching threshold and a digest of every weight) to `REPORT_DIR/rank{rank}.json`.
"""

import hashlib
import json
import os
import re
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blt_diffusion.training.pipeline
from blt_diffusion import BltDiffusionForCausalLM, BltDiffusionTokenizer
from blt_diffusion.training import check_process_group, training_arguments

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"
NUM_PROCESSES = 2
MAX_STEPS = 3
BATCH_SIZE = 2
SEQUENCE_LENGTH = 64
# Training rows: the first NUM_ROWS * SEQUENCE_LENGTH bytes of the standard library.
NUM_ROWS = 64


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of `model`'s state dict, by name, bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_in_step_and_save_one_checkpoint(tmp_path):
    output_dir, report_dir = tmp_path / "run", tmp_path / "reports"
    report_dir.mkdir()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(NUM_PROCESSES)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), __file__, str(report_dir)]
    train_args = ["--output-dir", str(output_dir), "--config", "tiny", "--block-size", "4", "--threads", "1"]
    train_args += ["--max-steps", str(MAX_STEPS), "--patcher-steps", "2"]
    train_args += ["--per-device-train-batch-size", str(BATCH_SIZE), "--per-device-eval-batch-size", str(BATCH_SIZE)]
    train_args += ["--sequence-length", str(SEQUENCE_LENGTH), "--max-bytes", str(NUM_ROWS * SEQUENCE_LENGTH)]
    # `accelerate launch --cpu` starts one process unless given an MPI hostfile; `--multi_gpu` starts them with
    # torchrun, and ACCELERATE_USE_CPU (what `--cpu` sets) makes them train on the CPU over gloo, GPUs or not.
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    result = subprocess.run(launch + train_args, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-5000:]
    assert re.fullmatch(r"held-out bits per byte: [0-9.]+\n", result.stdout), "only the main process prints"
    assert result.stderr.count("blt-diffusion: Stage 3") == 1, "only the main process reports progress"

    reports = [json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in range(NUM_PROCESSES)]
    assert all(report["world_size"] == NUM_PROCESSES for report in reports)
    assert len({report["patching_threshold"] for report in reports}) == 1, "every process patches alike"
    assert len({report["weights"] for report in reports}) == 1, "the processes end with identical weights"

    # The Trainer shared the rows out: each step went through NUM_PROCESSES * BATCH_SIZE of them.
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert history[-1]["epoch"] == pytest.approx(MAX_STEPS * NUM_PROCESSES * BATCH_SIZE / NUM_ROWS)

    model = BltDiffusionForCausalLM.from_pretrained(output_dir)
    assert weights_digest(model) == reports[0]["weights"]
    assert model.config.patching_threshold == reports[0]["patching_threshold"]
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert f"{results['heldout_bits_per_byte']:.4f}" in result.stdout
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


def run_example_and_report(report_dir: Path, example_args: list[str]) -> int:
    """Run `examples/train.py` in this process, then write what the process ended with to `report_dir`."""
    pipeline = blt_diffusion.training.pipeline
    build_model = pipeline.build_model
    models = []

    def build_and_keep(*args, **kwargs):
        models.append(build_model(*args, **kwargs))
        return models[-1]

    pipeline.build_model = build_and_keep
    sys.argv = [str(EXAMPLE), *example_args]
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    except SystemExit as exit:
        if exit.code:
            return exit.code
    (model,) = models
    report = {
        "world_size": torch.distributed.get_world_size(),
        "patching_threshold": model.config.patching_threshold,
        "weights": weights_digest(model),
    }
    (report_dir / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_example_and_report(Path(sys.argv[1]), sys.argv[2:]))
