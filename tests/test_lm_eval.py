"""lm-evaluation-harness: its `HFLM` scores and generates exactly as the model does on `[BOS] + bytes`, in process and
from a saved directory through `trust_remote_code` without the package."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import build_pair, source_text, text_ids
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from blt_diffusion import BltDiffusionTokenizer
from blt_diffusion.cli import main as cli_main

# lm-eval moves a context's trailing spaces to the continuation: the contexts end without, as its tasks' do.
CONTEXTS = ["def add(a, b):", "Question: how many bytes in a kilobyte?\nAnswer:", "", "x ="]
CHOICES = [" return a + b", " 1024", "import os", "1"]
DOCUMENTS = [source_text(300), source_text(120, offset=900), "é"]
MAX_NEW_BYTES = 24


def direct_loglikelihood(model, context: str, continuation: str) -> tuple[float, bool]:
    """Log-probability of `continuation`'s bytes after `[BOS] + context`, and whether greedy decoding gives them."""
    context_ids = text_ids(context)
    ids = torch.cat([context_ids, text_ids(continuation, bos=False)], dim=1)
    with torch.no_grad():
        log_probs = model(ids).logits[0, context_ids.shape[1] - 1 : -1].log_softmax(dim=-1)
    targets = ids[0, context_ids.shape[1] :]
    return float(log_probs.gather(-1, targets[:, None]).sum()), bool((log_probs.argmax(dim=-1) == targets).all())


def direct_rolling_loglikelihood(model, document: str) -> float:
    """Log-probability of every byte of `document` after BOS: what bits per byte measure."""
    return direct_loglikelihood(model, "", document)[0]


def direct_continuation(model, tokenizer, context: str, **kwargs) -> str:
    """The text that greedy generation appends to `[BOS] + context` in `MAX_NEW_BYTES` bytes."""
    prompt = text_ids(context)
    output = model.generate(prompt, max_new_tokens=MAX_NEW_BYTES, do_sample=False, **kwargs)
    return tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)


def stop_inside(text: str) -> str:
    """A character first met a few characters into `text`, to stop generation there."""
    return next(char for index, char in enumerate(text) if index >= 3 and char.isalnum() and char not in text[:index])


def cut_at(text: str, stops: list[str]) -> str:
    """`text` up to the first of `stops` in it."""
    return min((text.split(stop)[0] for stop in stops), key=len)


def requests(request_type: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type, {}, args, index) for index, args in enumerate(arguments)]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_harness_scores_and_generates_as_the_model_does(diffusion_model, batch_size):
    tokenizer = BltDiffusionTokenizer()
    harness = HFLM(pretrained=diffusion_model, tokenizer=tokenizer, batch_size=batch_size)

    # Multiple choice: every context with every choice; the tokenizer's BOS starts each context.
    pairs = [(context, choice) for context in CONTEXTS for choice in CHOICES]
    scores = harness.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    for pair, (log_prob, greedy) in zip(pairs, scores, strict=True):
        expected_log_prob, expected_greedy = direct_loglikelihood(diffusion_model, *pair)
        assert log_prob == pytest.approx(expected_log_prob, abs=1e-4), pair
        assert greedy == expected_greedy, pair

    # Generation, cut at stop sequences met inside the model's own continuations (requests with the same arguments
    # share batches), and with another strategy.
    continuations = [direct_continuation(diffusion_model, tokenizer, context) for context in CONTEXTS[:2]]
    stops = [stop_inside(continuation) for continuation in continuations]
    arguments = [(context, {"until": stops, "max_gen_toks": MAX_NEW_BYTES}) for context in CONTEXTS[:2]]
    expected = [cut_at(continuation, stops) for continuation in continuations]
    diffusion = {"decoding": "diffusion", "block_size": 4}
    arguments.append((CONTEXTS[0], {"until": ["\0"], "max_gen_toks": MAX_NEW_BYTES, **diffusion}))
    expected.append(direct_continuation(diffusion_model, tokenizer, CONTEXTS[0], **diffusion).split("\0")[0])
    assert harness.generate_until(requests("generate_until", arguments), disable_tqdm=True) == expected

    # Perplexity (bits per byte): lm-eval puts its own BOS before each document, so the tokenizer must add none.
    rolling_harness = HFLM(pretrained=diffusion_model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=False)
    rolling = rolling_harness.loglikelihood_rolling(
        requests("loglikelihood_rolling", [(document,) for document in DOCUMENTS]), disable_tqdm=True
    )
    expected_rolling = [direct_rolling_loglikelihood(diffusion_model, document) for document in DOCUMENTS]
    assert rolling == pytest.approx(expected_rolling, abs=1e-4)


HARNESS_SCRIPT = r"""
import json
import sys

sys.modules["blt_diffusion"] = None
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

documents, pairs = json.loads(sys.argv[1])
results = {}
for directory in sys.argv[2:]:
    default = HFLM(pretrained=directory, trust_remote_code=True, device="cpu", batch_size=2)
    rolling = HFLM(pretrained=directory, trust_remote_code=True, device="cpu", batch_size=2, add_bos_token=False)
    assert type(default.model).__module__.startswith("transformers_modules."), type(default.model).__module__
    scores = default.loglikelihood([Instance("loglikelihood", {}, tuple(pair), 0) for pair in pairs])
    rolling_requests = [Instance("loglikelihood_rolling", {}, (document,), 0) for document in documents]
    results[directory] = {
        "loglikelihood": [score for score, _ in scores],
        "rolling": rolling.loglikelihood_rolling(rolling_requests),
    }
assert not any(name.split(".")[0] == "blt_diffusion" for name, module in sys.modules.items() if module is not None)
print(json.dumps(results))
"""


def test_harness_loads_saved_and_converted_directories_without_the_package(diffusion_model, tmp_path):
    saved_dir, stock_dir, converted_dir = tmp_path / "saved", tmp_path / "stock", tmp_path / "converted"
    diffusion_model.save_pretrained(saved_dir)
    BltDiffusionTokenizer().save_pretrained(saved_dir)
    stock, model = build_pair(seed=0)
    stock.save_pretrained(stock_dir)
    assert cli_main(["convert", str(stock_dir), str(converted_dir)]) == 0

    pairs = [(CONTEXTS[1], CHOICES[1]), ("", CHOICES[0])]
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ""
    command = [
        sys.executable,
        "-c",
        HARNESS_SCRIPT,
        json.dumps([DOCUMENTS, pairs]),
        str(saved_dir),
        str(converted_dir),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])

    for directory, reference in ((saved_dir, diffusion_model), (converted_dir, model)):
        scores = results[str(directory)]
        assert scores["loglikelihood"] == pytest.approx(
            [direct_loglikelihood(reference, *pair)[0] for pair in pairs], abs=1e-4
        )
        assert scores["rolling"] == pytest.approx(
            [direct_rolling_loglikelihood(reference, doc) for doc in DOCUMENTS], abs=1e-4
        )
