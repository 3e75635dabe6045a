"""A real TensorBoard server on a free port of 127.0.0.1, for what reads it over HTTP: the README's
screenshot script and the test that TensorBoard shows a sweep."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> object:
    """GET `url`, or POST `body` as JSON (with the header TensorBoard asks of POSTs), and parse the reply."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as response:
        return json.load(response)


@contextmanager
def serve(logdir: Path, timeout: float = 90) -> Iterator[str]:
    """Run `tensorboard --logdir logdir` until the block ends; yields its base URL once it lists a run."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"tensorboard exited with code {server.returncode}")
            try:
                if get_json(f"{base}/data/runs"):
                    break
            except OSError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"tensorboard listed no runs of {logdir} within {timeout:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
