"""Regenerate every file of the shipped model's directory but its weights, from the model itself.

    python scripts/export_default_model.py

The shipped model is exported again with `blt_diffusion.default_model.export_compact` into a temporary directory,
with the figures its card reads (`eval_results.json`, `decoding_benchmark.json`, where present); the float16
weights must come back bit for bit (float16 -> float32 -> float16 is exact), and every other file then replaces its
copy in the package: config with `auto_map`, the `*_blt_diffusion.py` modules, tokenizer config, generation config
and model card. Run it after changing a `*_blt_diffusion.py` module, so that the shipped repo carries the new code.
"""

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

from transformers.utils import SAFE_WEIGHTS_NAME

from blt_diffusion import DEFAULT_MODEL_DIR, load_default_model
from blt_diffusion.default_model import export_compact
from blt_diffusion.modelcard_blt_diffusion import DECODING_BENCHMARK_NAME, EVAL_RESULTS_NAME


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    model = load_default_model()
    with tempfile.TemporaryDirectory() as temporary:
        # Named as the shipped directory: the card takes its title from it.
        export_dir = Path(temporary) / DEFAULT_MODEL_DIR.name
        export_dir.mkdir()
        for figures in (EVAL_RESULTS_NAME, DECODING_BENCHMARK_NAME):
            if (DEFAULT_MODEL_DIR / figures).is_file():
                shutil.copy2(DEFAULT_MODEL_DIR / figures, export_dir / figures)
        export_compact(model, export_dir)
        if sha256(export_dir / SAFE_WEIGHTS_NAME) != sha256(DEFAULT_MODEL_DIR / SAFE_WEIGHTS_NAME):
            print("error: the exported weights differ from the shipped ones; nothing was changed", file=sys.stderr)
            return 1
        for path in sorted(export_dir.iterdir()):
            if path.name != SAFE_WEIGHTS_NAME:
                shutil.copy2(path, DEFAULT_MODEL_DIR / path.name)
                print(f"wrote {DEFAULT_MODEL_DIR / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
