"""The sweep report (table, figure, rebuild from events), each run's summary line and samples, and
the real TensorBoard server reading a finished sweep."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib.image
import pytest
from conftest import ROOT, SUBPROCESS_ENV, TINY, run_train
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

JOBS = ("hidden=8", "hidden=16")
HEADER = [  # report.md's columns
    "run",
    "params",
    "val loss",
    "val ppl",
    "val bpc",
    "test ppl",
    "chars/s",
    "time",
    "epochs",
    "status",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A finished two-job multirun on the names corpus, and its multirun directory."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_train(["-m", "data=names", "hidden=8,16", *TINY], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (cwd / "logs" / "multiruns").iterdir()
    return result, sweep_dir


def val_ppl_from_events(sweep_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each job's val/ppl as TensorBoard's own reader gives it, by job name."""
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir))
    multiplexer.Reload()
    return {
        re.sub(r"^\d+_", "", run): [(e.step, e.value) for e in multiplexer.Scalars(run, "val/ppl")]
        for run in multiplexer.Runs()
    }


def report_rows(report: str) -> dict[str, list[str]]:
    """The table rows of report.md by run name, the best's markers stripped."""
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("| run "):
            cells = [c.strip().replace("**", "").removeprefix("★ ") for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_a_multirun_ends_with_its_report(sweep: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, sweep_dir = sweep
    report = (sweep_dir / "report.md").read_text(encoding="utf-8")
    rows = report_rows(report)
    assert sorted(rows) == sorted(JOBS)
    curves = val_ppl_from_events(sweep_dir)
    best_ppl = {job: min(v for _, v in curves[job]) for job in JOBS}
    winner = min(best_ppl, key=best_ppl.get)
    for job in JOBS:
        cell = dict(zip(HEADER, rows[job], strict=True))
        assert float(cell["val ppl"]) == pytest.approx(best_ppl[job], abs=1e-3)
        assert float(cell["val bpc"]) == pytest.approx(math.log2(best_ppl[job]), abs=1e-3)
        assert int(cell["params"].replace(",", "")) > 0 and int(cell["chars/s"].replace(",", "")) > 0
        assert cell["epochs"] == "1" and cell["status"] == "finished"
    assert re.search(rf"\| ★ \*\*{winner}\*\* \|", report)  # the best row, marked
    assert f"Best: **{winner}**" in report and "![" in report and "## Samples" in report
    # the same table in the terminal, and where the files are
    assert f"★ {winner}" in result.stdout and f"{sweep_dir.name}/report.md" in result.stdout

    figure = matplotlib.image.imread(sweep_dir / "report.png")
    assert figure.shape[0] > 300 and figure.shape[1] > 800  # a real image, two panels wide


def report_cli(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "charlm.report", str(folder)],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )


def test_the_report_is_rebuilt_from_the_event_files_alone(
    sweep: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    _, sweep_dir = sweep
    copy = tmp_path / sweep_dir.name
    shutil.copytree(sweep_dir, copy)
    for path in sorted(copy.rglob("*"), reverse=True):  # keep only TensorBoard's files
        if path.is_file() and not path.name.startswith("events.out.tfevents."):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    result = report_cli(copy)
    assert result.returncode == 0, result.stderr
    rebuilt, original = (path / "report.md" for path in (copy, sweep_dir))
    assert rebuilt.read_text(encoding="utf-8") == original.read_text(encoding="utf-8")
    assert (copy / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_report_of_a_folder_without_runs_says_so(tmp_path: Path, where: str) -> None:
    folder = tmp_path / where
    if where == "empty":
        folder.mkdir()
    result = report_cli(folder)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and str(folder) in result.stderr
    assert "Traceback" not in result.stderr and not (folder / "report.md").exists()


def test_each_run_ends_with_its_report_row_and_leaves_its_samples(
    sweep: tuple[subprocess.CompletedProcess, Path],
) -> None:
    result, sweep_dir = sweep
    rows = report_rows((sweep_dir / "report.md").read_text(encoding="utf-8"))
    for job in JOBS:
        (line,) = re.findall(rf"done: {job}: (.*)", result.stdout + result.stderr)
        # the run's own figures, in memory and in its events, give the row the report reads back
        assert line == ", ".join(f"{k} {v}" for k, v in zip(HEADER[1:], rows[job][1:], strict=True))
        (run_dir,) = sweep_dir.glob(f"*_{job}")
        samples = (run_dir / "samples.txt").read_text(encoding="utf-8")
        headings = re.findall(r"^=== (.*) ===$", samples, flags=re.MULTILINE)
        assert headings[0] == "epoch 0, step 12" and headings[-1].startswith("tested: epoch000-step")
        texts = re.split(r"^=== .* ===$", samples, flags=re.MULTILINE)[1:]
        assert len(texts) == len(headings) and all(len(text.strip()) > 20 for text in texts)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"}  # TensorBoard's POST guard
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as response:
        return json.load(response)


def test_tensorboard_serves_the_sweep(sweep: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, sweep_dir = sweep
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep_dir.parent), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=SUBPROCESS_ENV,
        cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"
    jobs = sweep_dir.glob("*_hidden=*")
    runs = {f"{sweep_dir.name}/{path.name}": re.sub(r"^\d+_", "", path.name) for path in jobs}  # TB name: job
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if sorted(_get(f"{base}/runs")) == sorted(runs):
                    break
            except OSError:  # not listening yet
                pass
            assert server.poll() is None, "tensorboard exited"
            assert time.monotonic() < deadline, "tensorboard did not list both runs in time"
            time.sleep(0.5)

        expected = val_ppl_from_events(sweep_dir)
        for run, job in runs.items():
            query = urllib.parse.urlencode({"run": run, "tag": "val/ppl"})
            served = _get(f"{base}/plugin/scalars/scalars?{query}")
            assert [(step, pytest.approx(value)) for _, step, value in served] == expected[job]

        groups = _get(
            f"{base}/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
                "colParams": [
                    {"hparam": "model/hidden", "includeInResult": True},
                    {"metric": {"tag": "hp_metric", "group": ""}, "includeInResult": True},
                ],
                "startIndex": 0,
                "sliceSize": 10,
            },
        )["sessionGroups"]
        hidden = {g["name"]: g["hparams"]["model/hidden"] for g in groups}
        assert hidden == {run: float(job.split("=")[1]) for run, job in runs.items()}
        for group in groups:  # hp_metric: the best val perplexity
            (hp_metric,) = [m["value"] for m in group["metricValues"] if m["name"]["tag"] == "hp_metric"]
            assert hp_metric == pytest.approx(min(v for _, v in expected[runs[group["name"]]]))
    finally:
        server.terminate()
        server.wait(timeout=30)
