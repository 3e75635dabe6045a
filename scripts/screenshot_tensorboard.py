"""Screenshot TensorBoard's SCALARS tab for a log folder with headless Chromium (the README's picture).

    python scripts/screenshot_tensorboard.py logs/multiruns/2026-11-23_05-11-11 docs/tensorboard-scalars.png

Starts `tensorboard` on a free port of 127.0.0.1, waits until it lists the runs, has Chromium
(`/usr/bin/chromium`, Debian's `chromium` package; or --chromium) render the SCALARS tab filtered
to the val scalars, and stops the server.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_runs(base: str, server: subprocess.Popen, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("tensorboard exited")
        try:
            with urllib.request.urlopen(f"{base}/data/runs", timeout=5) as response:
                if runs := json.load(response):
                    return runs
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("tensorboard listed no runs in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--tags", default="val/", help="the SCALARS tab's tag filter (a regex)")
    parser.add_argument("--size", default="1600,560", help="window width,height")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        print("runs:", ", ".join(wait_for_runs(base, server)))
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
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
