"""A Gradio demo of fast byte-level decoding: one prompt streamed side by side through BLT (autoregressive), BLT-D
(block diffusion, its masked cells filling in as they are denoised) and BLT-S (self-speculative), with each
strategy's speed and calls per byte.

Run it with `python spaces/app.py` (the package installed, e.g. `pip install ".[space]"`); it serves the model shipped
in the package unless the environment variable `BLT_DIFFUSION_MODEL` names another (a local directory or a Hub repo
id), and the page's model box takes any other. As a Hugging Face Space it needs the package beside it: README.md's
"Demo Space" section gives the upload commands.
"""

import functools
import html
import itertools
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import gradio as gr
import torch

from blt_diffusion import DEFAULT_MODEL_DIR, BltDiffusionForCausalLM, BltDiffusionGenerateOutput, BltDiffusionTokenizer
from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES

MODEL_ENV = "BLT_DIFFUSION_MODEL"
# A prompt on which the shipped model's BLT-D writes code-like text, not only indentation.
DEFAULT_PROMPT = "class Stack:\n    def push(self, item):\n"
MASKED_CELL = "▒"
# (decoding, title) in display order: the baseline first.
STRATEGIES = (
    ("autoregressive", "BLT: autoregressive"),
    ("diffusion", "BLT-D: block diffusion"),
    ("self_speculative", "BLT-S: self-speculative"),
)
# Slow motion holds each denoising step this long: at full speed a block fills in a few milliseconds.
SLOW_MOTION_STEP_SECONDS = 0.3
CSS = """
.blt-output { white-space: pre-wrap; font-family: monospace; min-height: 12em; margin: 0; }
.blt-draft { background: #fde68a; }
"""


@dataclass
class StrategyRun:
    """What one strategy has streamed so far. Times are `time.perf_counter()` readings taken in the generating
    thread, so speeds are those of generation even when the page is shown more slowly (slow motion)."""

    decoding: str
    title: str
    committed: list[int] = field(default_factory=list)
    # The block being denoised (BLT-D): a byte id per cell, the mask id where still masked; None between blocks.
    draft: list[int] | None = None
    started: float | None = None
    last_event: float | None = None
    output: BltDiffusionGenerateOutput | None = None
    note: str = ""

    def bytes_per_second(self) -> float:
        elapsed = self.last_event - self.started
        return len(self.committed) / elapsed if elapsed > 0 else 0.0


class QueueStreamer:
    """A `generate` streamer that hands every event, timed, to the thread showing them: committed bytes (`put`,
    after the prompt), each denoising step's cells (`put_draft`, BLT-D and BLT-DV) and the end."""

    def __init__(self, events: queue.Queue):
        self.events = events
        self.prompt_seen = False

    def put(self, ids: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.events.put(("put", ids.tolist(), time.perf_counter()))

    def put_draft(self, cells: torch.Tensor) -> None:
        self.events.put(("draft", cells.tolist(), time.perf_counter()))

    def end(self) -> None:
        self.events.put(("end", None, time.perf_counter()))


@functools.lru_cache(maxsize=2)
def load_model(source: str) -> BltDiffusionForCausalLM:
    """Our model class loads our checkpoints and stock BLT ones, from a directory or the Hub."""
    # float32 whatever the stored weights (the shipped model's are float16), as `load_default_model` loads them.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return BltDiffusionForCausalLM.from_pretrained(source, dtype=torch.float32).to(device).eval()


def stream_strategy(
    model: BltDiffusionForCausalLM, input_ids: torch.Tensor, run: StrategyRun, **generate_kwargs
) -> Iterator[None]:
    """Generate with `run.decoding` in a thread, updating `run` and yielding after every streamed event."""
    events: queue.Queue = queue.Queue()

    def generate() -> None:
        try:
            output = model.generate(
                input_ids,
                decoding=run.decoding,
                streamer=QueueStreamer(events),
                return_dict_in_generate=True,
                **generate_kwargs,
            )
            events.put(("output", output, time.perf_counter()))
        except Exception as error:  # shown on the page rather than lost with the thread
            events.put(("error", error, time.perf_counter()))

    run.started = run.last_event = time.perf_counter()
    threading.Thread(target=generate, daemon=True).start()
    while True:
        kind, value, moment = events.get()
        if kind == "error":
            raise gr.Error(f"{run.title}: {value}")
        if kind == "output":
            run.output = value
            return
        run.last_event = moment
        if kind == "put":
            run.committed.extend(value)
            run.draft = None
        elif kind == "draft":
            run.draft = value
        yield


def render_cells(tokenizer: BltDiffusionTokenizer, cells: list[int], mask_id: int) -> str:
    """A block being denoised as text: runs of filled cells decoded, every masked cell as `MASKED_CELL`."""
    pieces = []
    for masked, group in itertools.groupby(cells, key=lambda cell: cell == mask_id):
        group = list(group)
        pieces.append(MASKED_CELL * len(group) if masked else tokenizer.decode(group, skip_special_tokens=True))
    return "".join(pieces)


def render_text(tokenizer: BltDiffusionTokenizer, run: StrategyRun, mask_id: int) -> str:
    """The committed text, then the block being denoised, highlighted."""
    text = html.escape(run.note or tokenizer.decode(run.committed, skip_special_tokens=True))
    draft = html.escape(render_cells(tokenizer, run.draft, mask_id)) if run.draft else ""
    return f'<pre class="blt-output">{text}<span class="blt-draft">{draft}</span></pre>'


def stats_row(run: StrategyRun) -> str:
    """One Markdown table row: live bytes and bytes/s, then calls per byte and acceptance once generation ends."""
    if run.note:
        return f"| {run.title} | {run.note} | | | | |"
    if run.started is None:
        return f"| {run.title} | waiting | | | | |"
    generated = len(run.committed)
    cells = [run.title, str(generated), f"{run.bytes_per_second():.1f}"]
    if run.output is None or generated == 0:
        cells += ["…", "…", "…"]
    else:
        acceptance = run.output.acceptance_rate
        cells += [
            f"{int(run.output.decoder_nfe[0]) / generated:.2f}",
            f"{int(run.output.global_nfe[0]) / generated:.2f}",
            "–" if acceptance is None else f"{float(acceptance[0]):.0%}",
        ]
    return "| " + " | ".join(cells) + " |"


def render_stats(runs: list[StrategyRun]) -> str:
    header = (
        "| strategy | bytes | bytes/s | decoder calls/byte | encoder+global calls/byte | acceptance |\n"
        "|---|---|---|---|---|---|"
    )
    return "\n".join([header, *(stats_row(run) for run in runs)])


def compare(prompt: str, max_new_bytes: float, sample: bool, slow_motion: bool, model_source: str) -> Iterator[tuple]:
    """Stream `prompt` through every strategy, one after another so that each has the machine to itself and their
    speeds compare; yields the three texts and the table after every event."""
    try:
        model = load_model(model_source.strip())
    except (OSError, ValueError) as error:
        raise gr.Error(f"Could not load the model {model_source!r}: {error}") from error
    tokenizer = BltDiffusionTokenizer()
    mask_id = model.config.diffusion_mask_id
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    runs = [StrategyRun(decoding, title) for decoding, title in STRATEGIES]

    def frame() -> tuple:
        return (*(render_text(tokenizer, run, mask_id) for run in runs), render_stats(runs))

    yield frame()
    for run in runs:
        if not DECODING_STRATEGIES[run.decoding].runs_on(model.config):
            run.note = "needs a BLT-D checkpoint"
            continue
        for _ in stream_strategy(model, input_ids, run, max_new_tokens=int(max_new_bytes), do_sample=sample):
            yield frame()
            if slow_motion and run.draft is not None:
                time.sleep(SLOW_MOTION_STEP_SECONDS)
    yield frame()


def build_demo(default_model: str) -> gr.Blocks:
    with gr.Blocks(title="blt-diffusion: BLT, BLT-D and BLT-S side by side") as demo:
        gr.Markdown(
            "# BLT, BLT-D and BLT-S side by side\n"
            "One prompt, three decoding strategies of the same byte-level model, run one after another. BLT-D fills a "
            "block of bytes in a few parallel denoising steps: its highlighted cells are the block being denoised, "
            f"`{MASKED_CELL}` the cells still masked. BLT-S drafts bytes with the local encoder and decoder and "
            "verifies them with the whole model: greedy (sampling off), it writes exactly BLT's bytes."
        )
        with gr.Row():
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=3, scale=3)
            with gr.Column(scale=2):
                max_new_bytes = gr.Slider(8, 512, value=128, step=8, label="New bytes")
                sample = gr.Checkbox(True, label="Sample (the model's generation config); off: greedy")
                slow_motion = gr.Checkbox(
                    False, label="Slow motion: hold each denoising step (speeds stay those measured)"
                )
        model_source = gr.Textbox(default_model, label="Model: a local directory or a Hub repo id")
        button = gr.Button("Generate", variant="primary")
        with gr.Row():
            texts = []
            for _, title in STRATEGIES:
                with gr.Column():
                    gr.Markdown(f"### {title}")
                    texts.append(gr.HTML())
        stats = gr.Markdown()
        button.click(
            compare,
            [prompt, max_new_bytes, sample, slow_motion, model_source],
            [*texts, stats],
            api_name="generate",
            concurrency_limit=1,  # one generation at a time: speeds measured on a shared machine mean nothing
        )
    return demo


def default_model_source() -> str:
    return os.environ.get(MODEL_ENV) or str(DEFAULT_MODEL_DIR)


if __name__ == "__main__":
    build_demo(default_model_source()).launch(css=CSS)
