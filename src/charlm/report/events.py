"""A run's figures read back from its TensorBoard event files (and a failed sweep job's
error.txt), through TensorBoard's own reader: a report can be rebuilt at any time, also for runs
still going or killed."""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from charlm.report.summary import RunSummary, job_name

EVENTS = "events.out.tfevents.*"
ERROR_FILE = "error.txt"  # what a failed sweep job died of (charlm.training.run.train_job writes it)
_SAMPLES_TAG = "samples/text_summary"  # SampleText's TEXT-tab entries
# what makes two runs' perplexities comparable: the same text (corpus, file, splits, preprocessing)
# and the same vocabulary (LogHyperparameters.run_hparams logs them)
CORPUS_HPARAMS = ("corpus", "path", "splits", "lowercase", "letters_only", "normalize", "vocab_size")
# a writer flushes at least every 2 minutes (SummaryWriter's flush_secs): a file written to within
# this long, ending in half a record, may be a live run's, whose next flush completes it
_LIVE_SECONDS = 600
_FIX = "the run is reported as damaged, without its figures: restore the file from a backup, or remove it"


def damage(path: Path) -> str | None:
    """Why the events file `path` cannot be read whole, in one line naming it (None: it can).

    TensorBoard's reader stops without a word at the first record that fails its checksum or is
    cut short, and the rest of the run is silently missing: this reads the records with that
    same reader and says so instead.
    """
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    if path.is_dir():
        return f"{path} is a folder, not an events file: {_FIX}"
    if not path.exists():
        return f"{path} is a link to a file that does not exist: {_FIX}"
    records = 0
    try:
        reader = pywrap_tensorflow.PyRecordReader_New(str(path))
        while True:
            reader.GetNext()
            records += 1
    except errors.OutOfRangeError:  # the end of the file
        return None
    except errors.DataLossError as err:
        if "truncated" not in err.message:
            return f"{path}: damaged events file (record {records + 1} fails its checksum); {_FIX}"
        if time.time() - path.stat().st_mtime < _LIVE_SECONDS:
            return None  # TensorBoard reads up to the half-written record, and so does the report
        return f"{path}: events file cut short (in record {records + 1}); {_FIX}"
    except OSError as err:
        return f"{path}: cannot read it ({err.strerror or err}); {_FIX}"


def _hparams_record(accumulator: Any, tag: str) -> Any:
    """The hparams plugin's record under `tag` (session start or end), or None."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    try:
        content = accumulator.PluginTagToContent("hparams")[tag]
    except KeyError:  # no hparams written (no such plugin), or not this record
        return None
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def _status(accumulator: Any) -> str:
    from tensorboard.plugins.hparams import api_pb2

    record = _hparams_record(accumulator, "_hparams_/session_end_info")
    if record is None:
        return "unfinished"
    return "finished" if record.session_end_info.status == api_pb2.STATUS_SUCCESS else "failed"


def _hparams(accumulator: Any) -> dict[str, Any]:
    record = _hparams_record(accumulator, "_hparams_/session_start_info")
    if record is None:
        return {}
    start = record.session_start_info
    # each a protobuf Value: number_value, string_value or bool_value
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}


def _corpus(hparams: dict[str, Any]) -> dict[str, Any]:
    """What the run's perplexity is of (CORPUS_HPARAMS): runs logged before `data/corpus` was
    give the data config chosen instead, and their data.path."""
    corpus = {key: hparams[f"data/{key}"] for key in CORPUS_HPARAMS if f"data/{key}" in hparams}
    if "corpus" not in corpus and "config/data" in hparams:
        corpus["corpus"] = hparams["config/data"]
    return {key: value for key, value in corpus.items() if value not in (None, "None")}


def read_run(path: Path, name: str | None = None) -> RunSummary:
    """A run's summary from the event files in its directory (training and test write one each).

    The best val loss is the log of the last `hp_metric`, the best val perplexity of the whole run:
    a run resumed into a new directory keeps its best from before the resume, as its checkpoint
    does (a diverged run's, whose perplexity overflows, is the least of its val losses). Its val
    curve, chars/s and time cover what it logged after the resume.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    name = name or path.name
    if damaged := [line for file in sorted(path.glob(EVENTS)) if (line := damage(file))]:
        # what TensorBoard reads of it would pass for the whole run: none of it is shown
        return RunSummary(name=name, path=path, status="damaged", damage=damaged)
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every file it reads at INFO
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])

    def scalars(tag: str) -> list[Any]:
        return accumulator.Scalars(tag) if tag in tags else []

    hparams = _hparams(accumulator)
    run = RunSummary(name=name, path=path, status=_status(accumulator), corpus=_corpus(hparams))
    parameters = hparams.get("model/parameters")
    run.parameters = None if parameters is None else int(parameters)
    best_ppl = [e.value for e in scalars("hp_metric")]
    if best_ppl and 0 < best_ppl[-1] < math.inf:
        run.val_loss = math.log(best_ppl[-1])
    elif val_losses := [e.value for e in scalars("val/loss")]:  # hp_metric overflows past a loss of 88.7
        run.val_loss = min((v for v in val_losses if not math.isnan(v)), default=math.nan)
    run.val_ppl_curve = [(e.step, e.value) for e in scalars("val/ppl")]
    if test := scalars("test/ppl"):
        run.test_ppl = test[-1].value
    chars, seconds = scalars("train/lengths"), scalars("train/time")
    if chars and seconds and seconds[-1].value > 0:
        # under DDP the counts are rank 0's, and every rank reads as many characters
        run.chars_per_sec = chars[-1].value / seconds[-1].value * hparams.get("trainer/world_size", 1)
    if times := [e.wall_time for tag in tags for e in accumulator.Scalars(tag)]:
        run.wall_time = max(times) - min([accumulator.FirstEventTimestamp(), *times])
    # Lightning logs the epoch with every write, and at the test once more (by then one past the last)
    fit_steps = [
        e.step for tag in tags if tag != "epoch" and not tag.startswith("test/") for e in scalars(tag)
    ]
    if epochs := [e.value for e in scalars("epoch") if fit_steps and e.step <= max(fit_steps)]:
        run.epochs = int(max(epochs)) + 1
    if _SAMPLES_TAG in accumulator.Tags()["tensors"]:
        from tensorboard.util import tensor_util

        text = tensor_util.make_ndarray(accumulator.Tensors(_SAMPLES_TAG)[-1].tensor_proto).item()
        run.sample = "\n".join(line.removeprefix("    ") for line in text.decode().split("\n"))
    return run


def _job_order(path: Path) -> tuple[str, int, str]:
    """Runs by folder, then a sweep's jobs by number (10_... after 9_...)."""
    match = re.match(r"(\d+)_", path.name)
    return (str(path.parent), int(match.group(1)) if match else -1, path.name)


def find_runs(root: Path) -> list[RunSummary]:
    """Every run under `root` (a folder holding event files), in job order, named by its overrides:
    `hidden=256` for `<multirun>/1_hidden=256`; by its path under `root` otherwise."""
    logged = {p.parent for p in root.rglob(EVENTS)}
    failed = {p.parent for p in root.rglob(ERROR_FILE)}
    runs = []
    for path in sorted(logged | failed, key=_job_order):
        if path.parent == root:
            name = job_name(path)
        else:
            name = path.name if path == root else str(path.relative_to(root))
        run = read_run(path, name) if path in logged else RunSummary(name=name, path=path)
        if path in failed:  # it may have logged before it failed, or not
            run.status, run.error = "failed", _error(path / ERROR_FILE, run)
        runs.append(run)
    return runs


def _error(path: Path, run: RunSummary) -> str:
    """What a failed job died of, from its error.txt; a file that cannot be read is named in
    `run.damage` (the job failed all the same)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8"
        run.damage.append(f"{path}: cannot read it ({why}); the train.log beside it says why the job failed")
        return f"(unreadable {ERROR_FILE}: {why})"
