"""The sweep report (table, figure, rebuild from events), each run's summary line and samples, and
the real TensorBoard server reading a finished sweep."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import matplotlib.image
import pytest
from conftest import SUBPROCESS_ENV, TINY, run_train
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import api_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from charlm.report import COLUMNS, find_runs, job_name, read_run, write_report
from charlm.report.board import get_json, serve
from charlm.report.render import figure
from charlm.report.sweep import SweepReport
from charlm.training.callbacks.tensorboard import _session_end

JOBS = ("hidden=8", "hidden=16")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, float]:
    """A finished two-job multirun on the names corpus, its multirun directory, and its duration."""
    cwd = tmp_path_factory.mktemp("sweep")
    start = time.monotonic()
    result = run_train(["-m", "data=names", "hidden=8,16", *TINY], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (cwd / "logs" / "multiruns").iterdir()
    return result, sweep_dir, time.monotonic() - start


def events(sweep_dir: Path, tag: str) -> dict[str, list[tuple[int, float]]]:
    """Each job's scalar `tag` as TensorBoard's own reader gives it, by job name."""
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir))
    multiplexer.Reload()
    return {
        job_name(Path(run)): [(e.step, e.value) for e in multiplexer.Scalars(run, tag)]
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


@pytest.mark.slow
def test_a_multirun_ends_with_its_report(sweep: tuple[subprocess.CompletedProcess, Path, float]) -> None:
    result, sweep_dir, duration = sweep
    report = (sweep_dir / "report.md").read_text(encoding="utf-8")
    rows = report_rows(report)
    assert sorted(rows) == sorted(JOBS)
    val_ppl, test_ppl = events(sweep_dir, "val/ppl"), events(sweep_dir, "test/ppl")
    chars, seconds = events(sweep_dir, "train/lengths"), events(sweep_dir, "train/time")
    best_ppl = {job: min(v for _, v in val_ppl[job]) for job in JOBS}
    winner = min(best_ppl, key=best_ppl.get)
    for job in JOBS:
        cell = dict(zip(COLUMNS, rows[job], strict=True))
        assert float(cell["val ppl"]) == pytest.approx(best_ppl[job], abs=1e-3)
        assert float(cell["val loss"]) == pytest.approx(math.log(best_ppl[job]), abs=1e-4)
        assert float(cell["val bpc"]) == pytest.approx(math.log2(best_ppl[job]), abs=1e-3)
        assert float(cell["test ppl"]) == pytest.approx(test_ppl[job][-1][1], abs=1e-3)
        assert chars[job][-1][1] == 12 * 16 * 16  # 12 steps of 16 windows of 16 characters
        chars_per_sec = chars[job][-1][1] / seconds[job][-1][1]
        assert float(cell["chars/s"].replace(",", "")) == pytest.approx(chars_per_sec, abs=1)
        assert int(cell["params"].replace(",", "")) > 0
        assert 0 <= int(cell["time"].removesuffix("s")) <= duration
        assert cell["epochs"] == "1" and cell["status"] == "finished"
    assert re.search(rf"\| ★ \*\*{winner}\*\* \|", report)  # the best row, marked
    assert f"Best: **{winner}**" in report and "![" in report and "## Samples" in report
    # the same table in the terminal, and where the files are
    assert f"★ {winner}" in result.stdout and f"{sweep_dir.name}/report.md" in result.stdout

    image = matplotlib.image.imread(sweep_dir / "report.png")
    assert image.shape[0] > 300 and image.shape[1] > 800  # a real image, two panels wide


def test_the_figure_draws_every_job_and_marks_the_best(
    sweep: tuple[subprocess.CompletedProcess, Path, float],
) -> None:
    _, sweep_dir, _ = sweep
    curves, bars = figure(find_runs(sweep_dir)).axes
    val_ppl = events(sweep_dir, "val/ppl")
    drawn = {
        line.get_label(): list(zip(line.get_xdata(), line.get_ydata(), strict=True)) for line in curves.lines
    }
    assert drawn == {job: [(s, pytest.approx(v)) for s, v in val_ppl[job]] for job in JOBS}
    best_ppl = {job: min(v for _, v in val_ppl[job]) for job in JOBS}
    labels = [label.get_text() for label in bars.get_yticklabels()]
    widths = [bar.get_width() for bar in bars.patches]
    assert labels == [f"★ {job}" if best_ppl[job] == min(best_ppl.values()) else job for job in JOBS]
    assert widths == [pytest.approx(best_ppl[job], abs=1e-4) for job in JOBS]


def write_events(run_dir: Path, val_losses: list[float], status: int | None) -> None:
    """A run's events as charlm writes them: hparams, val scores, hp_metric, and how it ended."""
    writer = SummaryWriter(str(run_dir))
    _, session_start, _ = hparams({"model/hidden": 8, "model/parameters": 1000}, {})
    writer.file_writer.add_summary(session_start)

    def exp32(loss: float) -> float:  # float32's exp, as the model logs it: inf above 88.7
        return loss if math.isnan(loss) else math.exp(loss) if loss < 88.7 else math.inf

    best = math.inf
    for step, loss in enumerate(val_losses):
        best = min(best, loss) if not math.isnan(loss) else best  # MinMetric leaves nan out
        writer.add_scalar("val/loss", loss, step)
        writer.add_scalar("val/ppl", exp32(loss), step)
        writer.add_scalar("hp_metric", exp32(best), step)
    if status is not None:
        writer.file_writer.add_summary(_session_end(status))
    writer.close()


def test_failed_diverged_and_unfinished_runs_are_reported_as_such(tmp_path: Path) -> None:
    write_events(tmp_path / "0_lr=0.002", [2.0, 1.5], api_pb2.STATUS_SUCCESS)
    write_events(tmp_path / "1_lr=0.02", [2.2, math.nan], api_pb2.STATUS_FAILURE)
    write_events(tmp_path / "2_lr=20", [900.0], api_pb2.STATUS_SUCCESS)  # diverged: ppl overflows
    write_events(tmp_path / "3_lr=0.001", [2.5], None)  # killed, or still going
    runs = write_report(tmp_path)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = {name: dict(zip(COLUMNS, cells, strict=True)) for name, cells in report_rows(report).items()}
    assert [r.name for r in runs] == list(rows) == ["lr=0.002", "lr=0.02", "lr=20", "lr=0.001"]
    assert rows["lr=0.002"]["status"] == "finished" and rows["lr=0.002"]["val loss"] == "1.5000"
    assert rows["lr=0.02"]["status"] == "failed" and rows["lr=0.02"]["val loss"] == "2.2000"
    assert rows["lr=20"]["val loss"] == "900.0000" and rows["lr=20"]["val ppl"] == "inf"
    assert rows["lr=0.001"]["status"] == "unfinished"
    assert "Best: **lr=0.002**" in report and "next lr=0.02" in report
    curves, bars = figure(runs).axes
    assert [len(line.get_xdata()) for line in curves.lines] == [2, 1, 1]  # nan and inf points left out
    assert [label.get_text() for label in bars.get_yticklabels()] == ["★ lr=0.002", "lr=0.02", "lr=0.001"]


def report_cli(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "charlm.report", str(folder)],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )


def test_the_report_is_rebuilt_from_the_event_files_alone(
    sweep: tuple[subprocess.CompletedProcess, Path, float], tmp_path: Path
) -> None:
    _, sweep_dir, _ = sweep
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
    sweep: tuple[subprocess.CompletedProcess, Path, float],
) -> None:
    result, sweep_dir, _ = sweep
    rows = report_rows((sweep_dir / "report.md").read_text(encoding="utf-8"))
    for job in JOBS:
        (line,) = re.findall(rf"done: {job}: (.*)", result.stdout + result.stderr)
        # the figures the run holds in memory give the row the report reads back from its events;
        # chars/s (float32 in the events) and time (its own clock) to their last digit or second
        said = dict(cell.split(" ", 1) if not cell.startswith(("val ", "test ")) else cell.rsplit(" ", 1)
                    for cell in line.split(", "))  # fmt: skip
        read = dict(zip(COLUMNS[1:], rows[job][1:], strict=True))
        assert said.keys() == read.keys()
        exact = [k for k in read if k not in ("chars/s", "time")]
        assert {k: said[k] for k in exact} == {k: read[k] for k in exact}
        chars_per_sec = [float(v["chars/s"].replace(",", "")) for v in (said, read)]
        assert chars_per_sec[0] == pytest.approx(chars_per_sec[1], abs=2)
        assert abs(int(said["time"].removesuffix("s")) - int(read["time"].removesuffix("s"))) <= 2
        (run_dir,) = sweep_dir.glob(f"*_{job}")
        samples = (run_dir / "samples.txt").read_text(encoding="utf-8")
        headings = re.findall(r"^=== (.*) ===$", samples, flags=re.MULTILINE)
        assert headings[0] == "epoch 0, step 12" and headings[-1].startswith("tested: epoch000-step")
        texts = re.split(r"^=== .* ===$", samples, flags=re.MULTILINE)[1:]
        assert len(texts) == len(headings) and all(len(text.strip()) > 20 for text in texts)


def test_tensorboard_serves_the_sweep(sweep: tuple[subprocess.CompletedProcess, Path, float]) -> None:
    _, sweep_dir, _ = sweep
    runs = {
        f"{sweep_dir.name}/{path.name}": job_name(path) for path in sweep_dir.glob("*_hidden=*")
    }  # TB: ours
    expected = events(sweep_dir, "val/ppl")
    with serve(sweep_dir.parent) as base:

        def served(run: str) -> list[tuple[int, float]]:
            query = urllib.parse.urlencode({"run": run, "tag": "val/ppl"})
            return [
                (step, value) for _, step, value in get_json(f"{base}/data/plugin/scalars/scalars?{query}")
            ]

        deadline = time.monotonic() + 60
        while sorted(get_json(f"{base}/data/runs")) != sorted(runs) or any(
            len(served(run)) < len(expected[job]) for run, job in runs.items()
        ):  # the server reads the event files in the background
            assert time.monotonic() < deadline, "tensorboard did not serve both runs in time"
            time.sleep(0.5)
        for run, job in runs.items():
            assert served(run) == [(step, pytest.approx(value)) for step, value in expected[job]]

        groups = get_json(
            f"{base}/data/plugin/hparams/session_groups",
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


def test_jobs_with_the_same_overrides_keep_their_own_curves(tmp_path: Path) -> None:
    write_events(tmp_path / "0_hidden=8", [2.0, 1.5], api_pb2.STATUS_SUCCESS)
    write_events(tmp_path / "1_hidden=8", [2.5, 2.0, 1.8], api_pb2.STATUS_SUCCESS)  # e.g. -m hidden=8,8
    curves, bars = figure(find_runs(tmp_path)).axes
    assert [len(line.get_xdata()) for line in curves.lines] == [2, 3]
    assert len({line.get_color() for line in curves.lines}) == 2
    assert [bar.get_width() for bar in bars.patches] == [pytest.approx(math.exp(v)) for v in (1.5, 1.8)]


@pytest.mark.slow
def test_a_failing_job_leaves_the_sweep_going_and_is_reported(tmp_path: Path) -> None:
    result = run_train(["-m", "data=names", "hidden=0,8", *TINY], cwd=tmp_path)
    assert result.returncode == 1  # scripts notice
    output = result.stdout + result.stderr
    assert "job failed: hidden must be at least 1, got 0" in output
    assert "1 of 2 jobs failed: hidden=0" in output
    assert "Traceback" not in output
    (sweep_dir,) = (tmp_path / "logs" / "multiruns").iterdir()
    assert list((sweep_dir / "1_hidden=8" / "checkpoints").glob("epoch*.ckpt"))  # the next job ran
    report = (sweep_dir / "report.md").read_text(encoding="utf-8")
    rows = {name: dict(zip(COLUMNS, cells, strict=True)) for name, cells in report_rows(report).items()}
    assert rows["hidden=0"]["status"] == "failed" and rows["hidden=8"]["status"] == "finished"
    assert "- **hidden=0**: CharLMError: hidden must be at least 1, got 0" in report
    assert "Best: **hidden=8**" in report


def copy_sweep(sweep_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished sweep, and its first job's training events file (the larger one)."""
    copy = tmp_path / sweep_dir.name
    shutil.copytree(sweep_dir, copy)
    (job,) = copy.glob(f"*_{JOBS[0]}")
    return copy, max(job.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_size)


def age(path: Path, seconds: float = 3600) -> None:
    """Last written `seconds` ago: no run is still writing it."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.parametrize("damage", ["flipped", "random", "cut", "folder", "broken link"])
def test_a_damaged_events_file_is_named_and_its_run_marked(
    sweep: tuple[subprocess.CompletedProcess, Path, float], tmp_path: Path, damage: str
) -> None:
    _, sweep_dir, _ = sweep
    copy, events_file = copy_sweep(sweep_dir, tmp_path)
    data = events_file.read_bytes()
    if damage == "flipped":  # one byte in the middle of a record
        middle = len(data) // 2
        events_file.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif damage == "random":
        events_file.write_bytes(random.Random(0).randbytes(len(data)))
    elif damage == "cut":  # the end of its last record lost, long ago: not a run still writing it
        events_file.write_bytes(data[:-5])
        age(events_file)
    elif damage == "folder":
        events_file.unlink()
        events_file.mkdir()
    else:
        events_file.unlink()
        events_file.symlink_to(tmp_path / "gone")
    result = report_cli(copy)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, naming the file
    assert str(events_file) in line
    rows = report_rows((copy / "report.md").read_text(encoding="utf-8"))
    original = report_rows((sweep_dir / "report.md").read_text(encoding="utf-8"))
    damaged = dict(zip(COLUMNS, rows[JOBS[0]], strict=True))
    assert damaged["status"] == "damaged"
    assert all(damaged[c] == "-" for c in COLUMNS if c not in ("run", "status"))  # no partial figures
    assert rows[JOBS[1]] == original[JOBS[1]]  # the other run, whole
    report = (copy / "report.md").read_text(encoding="utf-8")
    assert f"Best: **{JOBS[1]}**" in report and "## Unreadable files" in report


def test_a_run_still_writing_its_last_record_is_not_damaged(
    sweep: tuple[subprocess.CompletedProcess, Path, float], tmp_path: Path
) -> None:
    """A live run's file may end in half a record until its writer flushes the rest: TensorBoard
    reads up to it, and so does the report."""
    _, sweep_dir, _ = sweep
    copy, events_file = copy_sweep(sweep_dir, tmp_path)
    events_file.write_bytes(events_file.read_bytes()[:-5])  # just written
    result = report_cli(copy)
    assert result.returncode == 0, result.stderr
    rows = report_rows((copy / "report.md").read_text(encoding="utf-8"))
    assert rows[JOBS[0]][COLUMNS.index("status")] == "unfinished"
    assert rows[JOBS[0]][COLUMNS.index("val ppl")] != "-"


@pytest.mark.parametrize("damage", ["not utf-8", "folder"])
def test_an_unreadable_error_file_is_named_in_one_line(tmp_path: Path, damage: str) -> None:
    write_events(tmp_path / "0_lr=0.002", [2.0, 1.5], api_pb2.STATUS_SUCCESS)
    error_file = tmp_path / "1_lr=2" / "error.txt"
    error_file.parent.mkdir()
    if damage == "folder":
        error_file.mkdir()
    else:
        error_file.write_bytes("CharLMError: données\n".encode("latin-1"))
    result = report_cli(tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(error_file) in line
    rows = report_rows((tmp_path / "report.md").read_text(encoding="utf-8"))
    assert rows["lr=2"][COLUMNS.index("status")] == "failed"
    assert rows["lr=0.002"][COLUMNS.index("status")] == "finished"


def test_the_sweep_end_hook_reports_a_damaged_file_without_a_traceback(
    sweep: tuple[subprocess.CompletedProcess, Path, float],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, sweep_dir, _ = sweep
    copy, events_file = copy_sweep(sweep_dir, tmp_path)
    events_file.unlink()
    events_file.mkdir()
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(copy)}}})
    with pytest.raises(SystemExit) as exit_:  # scripts notice
        SweepReport().on_multirun_end(config)
    assert exit_.value.code == 1
    assert any(str(events_file) in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "damaged" in (copy / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_runs_of_different_corpora_are_ranked_apart(
    sweep: tuple[subprocess.CompletedProcess, Path, float], tmp_path: Path, text_file: Path
) -> None:
    """Perplexities of different texts or vocabularies do not compare: a table, and a best, for each."""
    _, sweep_dir, _ = sweep
    result = run_train(["data=textfile", f"data.path={text_file}", *TINY], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(sweep_dir, tmp_path / "logs" / "multiruns" / sweep_dir.name)
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()
    for path in [run_dir, *sweep_dir.glob("*_hidden=*")]:  # in the HPARAMS tab
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))["chars"]
        corpus = read_run(path).corpus
        assert corpus["corpus"] == ("textfile" if path == run_dir else "names")
        assert corpus["vocab_size"] == len(vocab)

    result = report_cli(tmp_path / "logs")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "logs" / "report.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", report, flags=re.MULTILINE)
    (names,) = [s for s in sections if s.startswith("corpus=names")]
    (textfile,) = [s for s in sections if s.startswith("corpus=textfile")]
    assert names.count("★") == 1 and textfile.count("★") == 1  # each its own best
    assert f"runs/{run_dir.name}" in textfile and "hidden=8" in names and "hidden=16" in names
    assert "Best: **runs/" in textfile and "next" not in textfile
    assert result.stdout.count("★") == 2


def test_runs_logged_before_the_corpus_was_are_grouped_by_their_config(tmp_path: Path) -> None:
    """Runs whose HPARAMS hold no data/corpus: by the data config chosen, and its data.path."""
    for name, data, path, loss in [
        ("0_a", "names", None, 1.5),
        ("1_b", "textfile", "poems.txt", 1.0),
        ("2_c", "textfile", "songs.txt", 2.0),
        ("3_d", "names", None, 1.8),
    ]:
        writer = SummaryWriter(str(tmp_path / name))
        _, session_start, _ = hparams({"config/data": data, "data/path": str(path)}, {})
        writer.file_writer.add_summary(session_start)
        writer.add_scalar("hp_metric", math.exp(loss), 0)
        writer.close()
    (tmp_path / "4_e").mkdir()  # a job that failed before it logged anything
    (tmp_path / "4_e" / "error.txt").write_text("CharLMError: hidden must be at least 1, got 0\n")
    runs = write_report(tmp_path)
    assert [r.name for r in runs] == ["a", "b", "c", "d", "e"]
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.*)$", report, flags=re.MULTILINE)
    assert headings[:4] == [
        "corpus=names",
        "corpus=textfile, path=poems.txt",
        "corpus=textfile, path=songs.txt",
        "corpus unknown",
    ]
    assert "Best: **a**" in report and "next d" in report
    assert "Best: **b**" in report and "Best: **c**" in report and report.count("★") == 3


def test_a_report_that_cannot_be_written_says_so_in_one_line(tmp_path: Path) -> None:
    write_events(tmp_path / "0_lr=0.002", [2.0, 1.5], api_pb2.STATUS_SUCCESS)
    (tmp_path / "report.md").mkdir()  # in the way, as a read-only folder would be (the tests run as root)
    result = report_cli(tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot write the report into {tmp_path}" in line
