"""The demo Space (`spaces/app.py`), served on localhost and driven over HTTP by `gradio_client`, as a page would."""

import html
import importlib.util
import os
import re
from pathlib import Path

import pytest
from conftest import build_pair, diffusion_model_from

from blt_diffusion import BltDiffusionTokenizer

# No usage reports from a test run (gradio reads this when imported).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from gradio_client import Client  # noqa: E402

# gradio's queue calls pandas APIs that pandas 3 deprecates: not this package's concern.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

APP = Path(__file__).resolve().parents[1] / "spaces" / "app.py"
PROMPT = "def add(a, b):"
NEW_BYTES = 24


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random BLT-D checkpoint (block size 8), saved as a user's model would be."""
    model = diffusion_model_from(build_pair(seed=0)[0], block_size=8)
    directory = tmp_path_factory.mktemp("blt_d")
    model.save_pretrained(directory)
    return model, directory


@pytest.fixture(scope="module")
def url(app):
    # The model box names the model, so the default one is never loaded.
    demo = app.build_demo(default_model="unused")
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, ssr_mode=False, css=app.CSS)
    yield demo.local_url
    demo.close()


def shown_text(panel: str) -> str:
    """What a page shows of a strategy's HTML panel."""
    return html.unescape(re.sub(r"<[^>]*>", "", panel))


def table_row(table: str, title: str) -> list[str]:
    """The cells of the Markdown stats table's row for `title`."""
    line = next(line for line in table.splitlines() if line.startswith(f"| {title} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_space_streams_what_generate_writes_with_its_costs(app, model_dir, url):
    model, directory = model_dir
    job = Client(url, verbose=False).submit(PROMPT, NEW_BYTES, False, False, str(directory), api_name="/generate")
    frames = list(job)
    *panels, table = job.result()
    tokenizer = BltDiffusionTokenizer()
    input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    for (decoding, title), panel in zip(app.STRATEGIES, panels, strict=True):
        reference = model.generate(
            input_ids, decoding=decoding, max_new_tokens=NEW_BYTES, do_sample=False, return_dict_in_generate=True
        )
        new_bytes = reference.sequences[0, input_ids.shape[1] :]
        assert shown_text(panel) == tokenizer.decode(new_bytes, skip_special_tokens=True), decoding
        generated, _, decoder_calls, global_calls, acceptance = table_row(table, title)[1:]
        assert int(generated) == new_bytes.numel()
        assert decoder_calls == f"{int(reference.decoder_nfe[0]) / new_bytes.numel():.2f}"
        assert global_calls == f"{int(reference.global_nfe[0]) / new_bytes.numel():.2f}"
        rate = reference.acceptance_rate
        assert acceptance == ("–" if rate is None else f"{float(rate[0]):.0%}")
    # BLT-D's panel showed blocks with cells still masked before they filled in.
    assert any(app.MASKED_CELL in frame[1] for frame in frames)
