"""Long steps show progress: the corpus download, the vocabulary and encoding of a large corpus, and
training, whose bar carries the loss and the val perplexity."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import TINY, compose_train

import charlm.data.vocab
from charlm.data.corpora import Download
from charlm.data.vocab import Vocabulary
from charlm.training.run import build


def test_a_download_shows_its_progress(http_server: tuple[str, Path], tmp_path: Path, capfd) -> None:
    url, served = http_server
    text = "En un lugar de la Mancha, de cuyo nombre no quiero acordarme\n" * 20_000  # 1.2 MB
    (served / "quijote.txt").write_text(text, encoding="utf-8")
    sha256 = hashlib.sha256(text.encode()).hexdigest()
    Download("quijote", f"{url}/quijote.txt", sha256).fetch(tmp_path / "data")
    assert (tmp_path / "data" / "quijote.txt").read_text(encoding="utf-8") == text
    bar = capfd.readouterr().err
    assert "100%" in bar and "1.22M" in bar  # pooch's tqdm bar, to the last byte


def test_a_large_corpus_shows_vocabulary_and_encoding_progress(monkeypatch, capsys) -> None:
    monkeypatch.setattr(charlm.data.vocab, "_CHUNK", 1_000)  # so 5,000 characters count as large
    text = "¡Qué señor hidalgo! " * 250
    vocab = Vocabulary.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text
    bars = capsys.readouterr().out
    assert "vocabulary (5,000 characters)" in bars and "encoding (5,000 characters)" in bars
    assert bars.count("100%") == 2

    Vocabulary.from_text(text[:2_000])  # two slices: quick, no bar
    assert capsys.readouterr().out == ""


def test_the_training_bar_shows_loss_and_val_perplexity(tmp_path: Path, text_file: Path) -> None:
    cfg = compose_train(
        ["data=textfile", f"data.path={text_file}", f"paths.output_dir={tmp_path}", "hidden=16", *TINY]
    )
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    shown = trainer.progress_bar_callback.get_metrics(trainer, model)  # what the bar prints after its counts
    assert {"train/loss", "train/ppl", "val/loss", "val/ppl"} <= set(shown)
    assert "train/bpc" not in shown  # the bar keeps to what one reads at a glance
