"""Screenshot TensorBoard's SCALARS tab for a log folder with headless Chromium (the README's picture).

    python scripts/screenshot_tensorboard.py logs/multiruns/2026-11-23_05-11-12 docs/tensorboard-scalars.png

Starts `tensorboard` on a free port of 127.0.0.1, has Chromium (`/usr/bin/chromium`, Debian's
`chromium` package; or --chromium) render the SCALARS tab filtered to the val scalars with no
smoothing, and stops the server. TensorBoard draws lines, not dots: runs need two validations or
more to show (`trainer.val_check_interval=<steps>` for short ones).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from charlm.report.board import get_json, serve

# Chromium on a closed network: no background connections, no sandbox (root in containers)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--tags", default="val/", help="the SCALARS tab's tag filter (a regex)")
    parser.add_argument("--size", default="1600,640", help="window width,height")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    with serve(args.logdir) as base:
        print("runs:", ", ".join(get_json(f"{base}/data/runs")))
        time.sleep(3)  # let the first load finish reading every event file
        url = f"{base}/?darkMode=false#scalars&_smoothingWeight=0&tagFilter={urllib.parse.quote(args.tags)}"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}",
                 "--virtual-time-budget=20000", f"--screenshot={args.output.resolve()}", url],
                check=True,
                capture_output=True,
                timeout=180,
            )  # fmt: skip
    print("wrote", args.output)


if __name__ == "__main__":
    main()
