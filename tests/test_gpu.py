"""What only a GPU can show; skipped without one (`pytest tests/test_gpu.py` on the GPU machine)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train
from test_host_syncs import MAY_SYNC, SyncCounter, sync_run

from charlm.models.network import CharRNN, NetworkConfig
from charlm.training.run import build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class SyncWarnings(SyncCounter):
    """Every synchronising CUDA call, as torch's sync debug mode reports them, by training batch."""

    def __init__(self) -> None:  # no patching: torch itself reports the syncs
        self.calls = {}
        self.trainer = None

    def show(self, message: Warning | str, *_: object, **__: object) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.training and "synchroniz" in str(message):
            batch = trainer.fit_loop.epoch_loop.batch_progress.total.ready
            self.calls.setdefault(batch, []).append(str(message))


def test_steps_that_do_not_log_make_no_host_sync_on_a_gpu(tmp_path: Path, text_file: Path) -> None:
    datamodule, model, trainer = build(sync_run(tmp_path, text_file, "trainer.accelerator=gpu"))
    counter = SyncWarnings()
    trainer.callbacks.append(counter)
    with warnings.catch_warnings():  # which puts showwarning back too
        warnings.simplefilter("always")
        warnings.showwarning = counter.show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(model, datamodule=datamodule)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert counter.calls, "torch reported no sync at all: the steps that log read the loss"
    found = {b: c for b, c in counter.calls.items() if b and b not in MAY_SYNC}
    assert not found, found


def test_gpu_batches_are_page_locked(tmp_path: Path, text_file: Path) -> None:
    overrides = ["data=textfile", f"data.path={text_file}", f"paths.output_dir={tmp_path}", *TINY]
    cfg = compose_train([*overrides, "trainer.accelerator=gpu"])
    datamodule, model, trainer = build(cfg)
    datamodule.trainer = trainer
    inputs, _ = next(iter(datamodule.train_dataloader()))
    assert inputs.is_pinned()


def recurrent_kernel(output: torch.Tensor) -> str:
    """The backward node of the kernel that made a torch.nn RNN's output (under batch_first's transpose)."""
    node = output.grad_fn
    while node is not None and "Rnn" not in node.name():
        node = node.next_functions[0][0]
    return node.name() if node is not None else "none"


@pytest.mark.parametrize("locked", [False, True])
def test_weight_drop_on_cudnn_matches_the_scratch_cells(locked: bool) -> None:
    """The same masks, outputs and gradients; each fused layer still runs as a cuDNN kernel."""
    results, kernels = {}, []
    ids = torch.arange(20, device="cuda").view(2, 10)
    for impl in ("fused", "scratch"):
        torch.manual_seed(0)
        config = NetworkConfig(
            hidden=32, num_layers=2, embedding_dim=8, weight_drop=0.3, locked_dropout=locked, impl=impl
        )
        net = CharRNN(20, config).cuda().train()
        for module in net.modules():
            if isinstance(module, torch.nn.LSTM):
                module.register_forward_hook(lambda m, args, out: kernels.append(recurrent_kernel(out[0])))
        logits, _ = net(ids)
        logits.square().sum().backward()
        results[impl] = (logits, {n: p.grad for n, p in net.named_parameters()})
    assert kernels and all("Cudnn" in name for name in kernels), kernels
    torch.testing.assert_close(results["fused"][0], results["scratch"][0], rtol=1e-3, atol=1e-3)
    for name, grad in results["fused"][1].items():
        torch.testing.assert_close(grad, results["scratch"][1][name], rtol=1e-3, atol=1e-3)
