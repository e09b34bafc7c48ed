"""Faithful multi-process pretraining (CPU, gloo): synchronized BatchNorm, the global Mixup bank, 2 ranks x batch B
against 1 rank x batch 2B, and exact resume after one rank is killed (tests/trainer_toy.py runs the trainer)."""
from __future__ import annotations

import copy
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from byola.augment.audio import MixupBank
from byola.engine import sync_bn
from byola.engine.sync_bn import PortableSyncBatchNorm, convert_sync_batchnorm
from byola.engine.trainer import latest_checkpoint
from tests.conftest import load_trainer_toy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
toy = load_trainer_toy()

pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _torchrun(run_dir: Path, *args: str, check: bool = True) -> subprocess.Popen | None:
    """Train tests/trainer_toy.py with 2 gloo processes; ``check=False`` returns the running launcher."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "trainer_toy.py"), str(run_dir), "--device", "cpu", *args]
    if check:
        subprocess.run(cmd, check=True, env=toy.subprocess_env(), timeout=180)
        return None
    return subprocess.Popen(cmd, env=toy.subprocess_env())


# ------------------------------------------------------------------------------------------ layer and bank, 2 ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batchnorm() -> nn.BatchNorm2d:
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(3)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn


def _reference_batchnorm(x: torch.Tensor) -> tuple[nn.BatchNorm2d, torch.Tensor, torch.Tensor]:
    bn = _batchnorm()
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return bn, y.detach(), x.grad


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = torch.randn(8, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 3 + 2
        mine = slice(rank * 4, rank * 4 + 4)
        ref_bn, ref_y, ref_grad = _reference_batchnorm(x)
        bn = convert_sync_batchnorm(_batchnorm())
        xr = x[mine].clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y = bn(xr)
        weights = torch.linspace(-1, 1, ref_y.numel()).view_as(ref_y)[mine]
        (y * weights).sum().backward()
        dist.all_reduce(bn.weight.grad), dist.all_reduce(bn.bias.grad)  # DDP's job (a sum: the loss is a sum)

        bank = MixupBank(0.4, bank_size=12, global_bank=True)
        for step in range(2):  # 2 steps x 2 ranks x 4 samples: the oldest 4 are overwritten
            bank.push(x[mine] + step)
        torch.save({"y": y.detach(), "grad": xr.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
                    "running_mean": bn.running_mean, "running_var": bn.running_var, "bank": bank.bank,
                    "ref_y": ref_y[mine], "ref_grad": ref_grad[mine], "ref_weight_grad": ref_bn.weight.grad,
                    "ref_bias_grad": ref_bn.bias.grad, "ref_running_mean": ref_bn.running_mean,
                    "ref_running_var": ref_bn.running_var, "is_sync": isinstance(bn, PortableSyncBatchNorm)},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_and_global_mixup_bank_over_two_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank holds half the batch: SyncBatchNorm's output, input and parameter gradients and running statistics
    equal BatchNorm2d's on the whole batch; the global Mixup banks equal one bank fed the whole batches."""
    monkeypatch.syspath_prepend(str(ROOT))  # spawned workers import this module as tests.test_distributed
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    x = torch.randn(8, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 3 + 2
    one = MixupBank(0.4, bank_size=12)
    for step in range(2):
        one.push(x + step)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["is_sync"]
        for key in ("y", "grad", "weight_grad", "bias_grad", "running_mean", "running_var"):
            torch.testing.assert_close(r[key], r[f"ref_{key}"], rtol=1e-5, atol=1e-5, msg=key)
        assert torch.equal(r["bank"], one.bank)


def test_sync_batchnorm_is_batchnorm_on_one_process() -> None:
    """Conversion keeps parameter objects and state-dict keys; without a process group the layer is BatchNorm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2), nn.BatchNorm1d(2))
    plain = copy.deepcopy(model)
    params = list(model.parameters())
    assert convert_sync_batchnorm(model) is model
    assert [type(model[1]), type(model[4])] == [PortableSyncBatchNorm] * 2
    assert list(model.parameters()) == params  # the same Parameter objects: an existing optimizer stays valid
    assert list(model.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 4)
    assert torch.equal(model(x), plain(x))
    assert torch.equal(model[4].running_var, plain[4].running_var)


def test_convert_sync_batchnorm_uses_torch_layer_where_its_kernels_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA BatchNorm becomes torch.nn.SyncBatchNorm (simulated: CPU declared a torch-served device)."""
    monkeypatch.setattr(sync_bn, "_TORCH_DEVICES", ("cpu",))
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    weight = model[1].weight
    convert_sync_batchnorm(model)
    assert type(model[1]) is nn.SyncBatchNorm and model[1].weight is weight


# ------------------------------------------------------------------------------------------------ the trainer, 2 ranks
def test_two_ranks_with_sync_bn_train_like_one_rank_with_twice_the_batch(tmp_path: Path) -> None:
    """byola's BYOL engine (BatchNorm in encoder, projector, predictor and target) with views that are a function of
    each sample: 2 ranks x batch 4 with sync_bn follow 1 rank x batch 8 (same seed, same samples); without sync_bn
    they do not (the control shows the comparison can fail). SGD with momentum: Adam's per-element normalization
    turns the rounding differences of a different summation order into visible ones (measured: the same first loss,
    then up to 2e-4 relative by step 5 with Adam 1e-2; SGD: within 3e-7)."""
    common = ["--engine", "byol", "--views", "fixed", "--optim", "sgd", "--steps", "6", "--checkpoint-every", "6",
              "--batch-size", "4"]
    one = toy.run(tmp_path / "one", steps=6, checkpoint_every=6, batch_size=8, engine="byol", views="fixed",
                  device="cpu", optim="sgd").state_dict()
    _torchrun(tmp_path / "sync", *common, "--sync-bn", "--weights", str(tmp_path / "sync{rank}.pt"))
    _torchrun(tmp_path / "local", *common)
    ref = _losses(tmp_path / "one")
    sync, local = _losses(tmp_path / "sync"), _losses(tmp_path / "local")
    assert len(ref) == len(sync) == 6
    torch.testing.assert_close(torch.tensor(sync), torch.tensor(ref), rtol=1e-5, atol=0)
    assert (torch.tensor(local) - torch.tensor(ref)).abs().max() > 1e-3
    for rank in range(2):
        two = torch.load(tmp_path / f"sync{rank}.pt", weights_only=True)
        assert two.keys() == one.keys()
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def test_kill_one_rank_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """2 ranks (sync_bn, random views with per-rank memory banks and generators): rank 1 is killed with SIGKILL after
    step 6 (last checkpoint: step 4), torchrun stops rank 0; rerunning with --resume ends with bitwise the weights of
    an uninterrupted run on both ranks, and the same logged losses."""
    common = ["--engine", "byol", "--sync-bn", "--steps", "10", "--checkpoint-every", "4"]
    _torchrun(tmp_path / "ref", *common, "--weights", str(tmp_path / "ref{rank}.pt"))

    run = tmp_path / "run"
    run.mkdir()
    launcher = _torchrun(run, *common, "--hang-after", "6", "--hang-rank", "1", check=False)
    try:
        deadline = time.time() + 120
        while not (run / "hanging").exists() or not (run / "hanging").read_text():
            assert launcher.poll() is None, "training ended before a rank was killed"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(int((run / "hanging").read_text()), signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert latest_checkpoint(run).name == "state-00000004.pt"

    (run / "hanging").unlink()
    _torchrun(run, *common, "--resume", "--weights", str(tmp_path / "resumed{rank}.pt"))
    for rank in range(2):
        ref = torch.load(tmp_path / f"ref{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resumed{rank}.pt", weights_only=True)
        assert ref.keys() == resumed.keys()
        for k in ref:
            assert torch.equal(ref[k], resumed[k]), (rank, k)
    assert _losses(run) == _losses(tmp_path / "ref")
