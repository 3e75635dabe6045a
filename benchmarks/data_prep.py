"""A corpus far larger than a run needs in memory: encode once, memory-map in every run.

    python benchmarks/data_prep.py [--megabytes 2000] [--workdir /tmp/charlm-data-prep]

Writes a corpus of Don Quijote repeated to the given size (from data/ or ../shared/data/;
otherwise the names corpus), then runs `train.py data=textfile` on it as a user would, 5 steps
of a hidden=16 LSTM, and prints for each run its wall time and peak memory:

0. first, in this process, the encoder's speed on the corpus's first 100 MB (in memory:
   paths.cache_dir=null) against the notebooks' per-character dict lookup (on 10 MB, scaled),
   and the extra bytes of stride-1 windows over its ids (none: they are a view);
1. the first run, which encodes the corpus into its cache (paths.cache_dir);
2. the data set-up of a second process (prepare_data + setup: the cache mapped, not rebuilt);
3. a second run, which maps the cache;
4. a 2-rank `trainer=ddp_sim` run on it, its memory summed over both processes;
5. the same run as 1 with `paths.cache_dir=null` (encoded in memory at every run), side by side.

Peak RSS of one process is its kernel high-water mark (getrusage): that counts the pages of the
map that it touched (the kernel maps a file's page cache in folios of up to 2 MB, so a few random
windows touch far more than their bytes). The summed figures poll /proc every 50 ms: VmRSS,
RssAnon (the processes' own memory, leaving aside the page cache they share: the DDP goal's
measure) and Pss (every shared page counted once over the processes).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, local_corpus, timed

from charlm.data.cache import TextSettings, encode_once
from charlm.data.corpora import TextFiles
from charlm.data.windows import WindowDataset

RUN = [
    "data=textfile",
    "hidden=16",
    "model.num_layers=1",
    "++trainer.max_steps=5",
    "++trainer.val_check_interval=5",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "callbacks.sample_text=null",
]
GOALS = {  # the goals, for a 2 GB corpus
    "build": ("peak RSS while building", 2.0e9),
    "mapped": ("peak RSS after the cache exists", 1.5e9),
    "setup": ("second run's data set-up", 2.0),
    "ddp": ("2-rank ddp_sim, summed RssAnon", 2.0e9),
}


def write_corpus(path: Path, megabytes: int) -> None:
    """Quijote repeated to `megabytes`, written a copy at a time (never the whole in memory)."""
    size = megabytes * 10**6
    if path.exists() and path.stat().st_size == size:
        return
    seed_path = local_corpus("quijote")
    if seed_path:
        seed = seed_path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    else:
        sys.path.insert(0, str(ROOT / "src"))
        from charlm.data.corpora import CensusNames

        seed = CensusNames().read(ROOT / "data").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        written = 0
        while written < size:
            piece = seed[: size - written]
            if written + len(piece) >= size:  # end on a whole character
                piece = piece.decode("utf-8", "ignore").encode()
            file.write(piece)
            written += len(piece)
            if len(piece) < len(seed):
                break


def tree_memory(root: int) -> dict[str, int]:
    """VmRSS, RssAnon and Pss summed over `root` and its descendants, in bytes. Pss counts a page
    that n processes share (the map's page cache, libraries) as 1/n in each: its sum is what the
    processes together hold."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    sums = {"VmRSS": 0, "RssAnon": 0, "Pss": 0}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            text = Path(f"/proc/{pid}/status").read_text() + Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for key, value in re.findall(r"^(VmRSS|RssAnon|Pss):\s+(\d+) kB", text, re.M):
            sums[key] += int(value) * 1024
    return sums


def run(args: list[str], env: dict[str, str]) -> dict[str, float | str]:
    """`python <args>`: its wall seconds and peak RSS, and the peak sums over its process tree."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        peaks = {"VmRSS": 0, "RssAnon": 0, "Pss": 0}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            for key, value in tree_memory(proc.pid).items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): python {' '.join(args)}\n{output[-3000:]}")
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss": usage.ru_maxrss * 1024,  # Linux reports kB
        "tree_rss": peaks["VmRSS"],
        "tree_anon": peaks["RssAnon"],
        "tree_pss": peaks["Pss"],
        "output": output,
    }


# a fresh process's data set-up alone: the corpus found, its cache checked and mapped, splits cut
SETUP = """
import sys, time
from charlm.data.datamodule import CharDataModule, DataConfig
started = time.perf_counter()
datamodule = CharDataModule(DataConfig(path=sys.argv[1], cache_dir=sys.argv[2]))
datamodule.prepare_data()
datamodule.setup()
print(f"setup_seconds={time.perf_counter() - started:.3f}")
"""


def encoding_speed(corpus: Path, megabytes: int = 100) -> None:
    """Step 0: the streamed encoder against a per-character Python loop, and the windows' cost."""
    sample = corpus.with_name("sample.txt")
    with open(corpus, "rb") as source:
        sample.write_bytes(source.read(megabytes * 10**6).decode("utf-8", "ignore").encode())
    encoded, seconds = timed(encode_once, TextFiles(sample), sample.parent, TextSettings(), None)
    tenth = sample.read_text(encoding="utf-8")[: len(encoded.ids) // 10]
    index = {c: i for i, c in enumerate(encoded.vocab.chars)}  # the notebooks' way
    _, loop_seconds = timed(lambda: torch.tensor([index[c] for c in tenth], dtype=torch.uint8))
    windows = WindowDataset(encoded.ids, 100, 1)
    extra = windows.windows.untyped_storage().nbytes() - encoded.ids.untyped_storage().nbytes()
    speedup = 10 * loop_seconds / seconds
    print(
        f"0. encoding {len(encoded.ids) / 1e6:.0f} M characters: {seconds:.2f} s streamed "
        f"({len(encoded.ids) / seconds / 1e6:.0f} M chars/s, NFC included); a per-character dict "
        f"lookup: {10 * loop_seconds:.2f} s (scaled from a tenth), speedup={speedup:.1f}; "
        f"{len(windows):,} stride-1 windows add {extra} bytes",
        flush=True,
    )
    sample.unlink()


def gb(count: float) -> str:
    return f"{count / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/charlm-data-prep"))
    args = parser.parse_args()
    work = args.workdir
    corpus, cache = work / "corpus.txt", work / "cache"
    write_corpus(corpus, args.megabytes)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(work / "logs", ignore_errors=True)
    print(f"corpus: {corpus} ({corpus.stat().st_size / 1e6:,.0f} MB)", flush=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    train = ["train.py", *RUN, f"data.path={corpus}", f"paths.root_dir={work}"]

    encoding_speed(corpus)
    runs = {"build": run([*train, f"paths.cache_dir={cache}"], env)}
    print(f"1. first run, encoding the cache: {runs['build']['seconds']:.1f} s", flush=True)
    setup = run(["-c", SETUP, str(corpus), str(cache)], env)
    setup_seconds = float(re.search(r"setup_seconds=([\d.]+)", setup["output"])[1])
    print(f"2. a second process's data set-up: {setup_seconds:.3f} s", flush=True)
    runs["mapped"] = run([*train, f"paths.cache_dir={cache}"], env)
    print(f"3. second run, mapping the cache: {runs['mapped']['seconds']:.1f} s", flush=True)
    runs["ddp"] = run([*train, f"paths.cache_dir={cache}", "trainer=ddp_sim"], env)
    print(f"4. 2-rank ddp_sim run: {runs['ddp']['seconds']:.1f} s", flush=True)
    runs["memory"] = run([*train, "paths.cache_dir=null"], env)
    print(f"5. in memory (paths.cache_dir=null): {runs['memory']['seconds']:.1f} s", flush=True)

    (folder,) = cache.glob("textfile-*")
    ids = folder / "ids.bin"
    print(f"\ncache: {folder}, ids.bin {ids.stat().st_size / 1e6:,.0f} MB")
    print("\n| run | wall time | peak RSS | summed VmRSS | summed RssAnon | summed Pss |")
    print("|---|--:|--:|--:|--:|--:|")
    names = {
        "build": "1. first run (builds the cache)",
        "mapped": "3. second run (maps it)",
        "ddp": "4. trainer=ddp_sim, 2 ranks",
        "memory": "5. paths.cache_dir=null",
    }
    for key, name in names.items():
        r = runs[key]
        memory = " | ".join(gb(r[k]) for k in ("peak_rss", "tree_rss", "tree_anon", "tree_pss"))
        print(f"| {name} | {r['seconds']:.1f} s | {memory} |")
    figures = {
        "build": runs["build"]["peak_rss"],
        "mapped": runs["mapped"]["peak_rss"],
        "setup": setup_seconds,
        "ddp": runs["ddp"]["tree_anon"],
    }
    print(f"\ngoals (the issue's, for a 2 GB corpus; this one is {corpus.stat().st_size / 1e9:.2f} GB):")
    for key, (what, limit) in GOALS.items():
        value, unit = (figures[key], "s") if key == "setup" else (figures[key] / 1e9, "GB")
        bound = limit if key == "setup" else limit / 1e9
        verdict = "met" if value < bound else "MISSED"
        print(f"  {what}: {value:.2f} {unit} (goal < {bound:g} {unit}): {verdict}")
    print(
        f"\nspeedup of a run with the cache over one in memory: "
        f"{runs['memory']['seconds'] / runs['mapped']['seconds']:.1f}x wall time, "
        f"{runs['memory']['peak_rss'] / runs['mapped']['peak_rss']:.1f}x less peak RSS"
    )


if __name__ == "__main__":
    main()
