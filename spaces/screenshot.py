"""Take the pictures of the demo for the READMEs: serve `app.py` on localhost, drive the page in headless Chromium and
save it mid-run (BLT-D denoising a block, in slow motion) and when all three strategies are done.

    pip install playwright
    python spaces/screenshot.py  # a system Chromium (`chromium` on PATH), or `playwright install chromium`'s

Not part of the tests: it needs a browser, and the pictures show the shipped model's (sampled) text.
"""

import argparse
import importlib.util
import os
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
STATS_ROWS = "table tbody tr"
# The mid-run picture waits for BLT-D to have written this much, with a block still being denoised after it.
MID_RUN_CHARACTERS = 80
BLT_D_MID_RUN = """([cell, length]) => {
    const panel = document.querySelectorAll(".blt-output")[1];
    return panel !== undefined && panel.textContent.includes(cell) && panel.textContent.length > length;
}"""


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", HERE / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browser", default=shutil.which("chromium"), help="Chromium executable (default: on PATH)")
    parser.add_argument("--output-dir", type=Path, default=HERE)
    args = parser.parse_args()

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = load_app()
    demo = app.build_demo(app.default_model_source())
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, ssr_mode=False, css=app.CSS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.browser)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # "load" would wait for web fonts, which an offline machine never gets.
        page.goto(demo.local_url, wait_until="domcontentloaded")
        page.get_by_label("Slow motion").check()
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function(BLT_D_MID_RUN, arg=[app.MASKED_CELL, MID_RUN_CHARACTERS], timeout=300_000)
        page.screenshot(path=args.output_dir / "screenshot-denoising.png", full_page=True)
        # Done when every row of the stats table has its acceptance column filled (BLT-S's last).
        page.locator(STATS_ROWS).last.filter(has_text="%").wait_for(timeout=300_000)
        page.screenshot(path=args.output_dir / "screenshot.png", full_page=True)
        browser.close()
    demo.close()


if __name__ == "__main__":
    main()
