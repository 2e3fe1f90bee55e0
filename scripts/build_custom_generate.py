"""Complete the `custom_generate/` repo: copy the package's `*_blt_diffusion.py` modules beside
`custom_generate/custom_generate/generate.py`, which imports them relatively (the copies are not versioned).

    python scripts/build_custom_generate.py                   # in place: custom_generate/ is then a complete repo
    python scripts/build_custom_generate.py --output DIR      # the whole repo, written to DIR

Run it again after changing a module, before using or pushing the directory (`blt-diffusion push custom_generate
your-name/blt-fast-decoding`).
"""

import argparse
import shutil
import sys
from pathlib import Path

import blt_diffusion

REPO_TEMPLATE = Path(__file__).resolve().parents[1] / "custom_generate"
CODE_FOLDER = "custom_generate"


def build(output_dir: Path = REPO_TEMPLATE) -> Path:
    """Write the custom_generate repo to `output_dir` (by default in place) and return it."""
    if output_dir.resolve() != REPO_TEMPLATE:
        shutil.copytree(REPO_TEMPLATE, output_dir, ignore=shutil.ignore_patterns("__pycache__", "*_blt_diffusion.py"))
    for module in sorted(Path(blt_diffusion.__file__).parent.glob("*_blt_diffusion.py")):
        shutil.copy2(module, output_dir / CODE_FOLDER / module.name)
    return output_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=REPO_TEMPLATE, help="where to write the repo (default: in place)"
    )
    args = parser.parse_args()
    print(f"wrote {build(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
