"""Shared helpers: composed configs, a tiny corpus, and `train.py` as a real subprocess."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from charlm import config
from charlm.data.datamodule import DataConfig
from charlm.training import run_dirs

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tiny sizes that still train for real: a few steps of a small model on a small corpus.
TINY = [
    "model.num_layers=1",
    "model.embedding_dim=8",
    "data.seq_len=16",
    "data.batch_size=16",
    "++trainer.max_steps=12",
    "++trainer.val_check_interval=6",
    "++trainer.limit_val_batches=3",
    "++trainer.limit_test_batches=3",
    "++trainer.log_every_n_steps=2",
    "trainer.accelerator=cpu",
]


# the corpus caches of in-process tests: one folder for the session, not the checkout's data/cache
_CACHE_DIR: Path | None = None


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    global _CACHE_DIR
    _CACHE_DIR = tmp_path_factory.mktemp("corpus-cache")


def compose_train(overrides: list[str]) -> DictConfig:
    """The config `python train.py <overrides>` runs; its corpus cache in the session's folder
    unless the overrides name one."""
    config.register()  # as train.py does: the schema, and the run directories' resolvers
    run_dirs.register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.cache_dir={_CACHE_DIR}"] * bool(_CACHE_DIR) + overrides)


def data_config(path: Path, **settings: object) -> DataConfig:
    """The data settings of a local corpus, its cache beside it rather than in the checkout."""
    return DataConfig(path=str(path), cache_dir=str(Path(path).parent / "cache"), **settings)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A small Spanish-flavoured corpus with accents, enough for a few hundred windows."""
    line = "En un lugar de la Mancha, de cuyo nombre no quiero acordarme; ¡qué señor hidalgo!\n"
    path = tmp_path / "corpus.txt"
    path.write_text(line * 200, encoding="utf-8")
    return path


@pytest.fixture
def quijote_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    """A data dir holding quijote.txt, and the overrides that make `data=quijote` accept it.

    The real file comes from ../shared/data when present; otherwise a stand-in whose sha256 is
    passed as an override, so the download path (pooch, hash check, cache) runs either way.
    """
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    real = SHARED_DATA / "quijote.txt"
    if real.exists():
        shutil.copy(real, data_dir / "quijote.txt")
        return data_dir, []
    text = "En un lugar de la Mancha, de cuyo nombre no quiero acordarme...\n" * 3000
    (data_dir / "quijote.txt").write_text(text, encoding="utf-8")
    digest = hashlib.sha256((data_dir / "quijote.txt").read_bytes()).hexdigest()
    return data_dir, [f"data.corpus.sha256={digest}"]


# For the entry points run as subprocesses: library warnings off, a terminal wide enough for the bar,
# and tests/ on the path for the callbacks of probes.py (`+callbacks.<name>._target_=probes.<Name>`).
SUBPROCESS_ENV = {
    **os.environ,
    "PYTHONWARNINGS": "ignore",
    "COLUMNS": "120",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])),
}


def run_train(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from `cwd`, so that logs/ lands there."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class CorpusServer(SimpleHTTPRequestHandler):
    """Serves a folder; `<file>.cut` sends the headers of the whole file but only half of it, then
    hangs up, as a dropped connection does."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.endswith(".cut"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.strip("/").removesuffix(".cut")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a folder: (its URL, the folder)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(CorpusServer, directory=str(served))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}", served
        server.shutdown()
