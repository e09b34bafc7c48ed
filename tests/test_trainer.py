"""The training loop (byola.engine.trainer) on a tiny modality-free toy engine (tests/trainer_toy.py)."""
from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from byola.engine.distributed import DistInfo, default_device, process_group
from byola.engine.trainer import Trainer, WarmupCosine, checkpoint_step, latest_checkpoint, resume_checkpoint
from tests.conftest import load_trainer_toy

HERE = Path(__file__).resolve().parent
toy = load_trainer_toy()


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _trainer(run_dir: Path, model=None, **kw) -> Trainer:
    torch.manual_seed(0)
    kw = {"batch_size": 4, "steps": 6, "checkpoint_every": 2, "progress": False, **kw}
    return Trainer(model or toy.ToyBYOL(), lambda p: torch.optim.Adam(p, lr=1e-2), toy.ToyData(), toy.ToyViews(),
                   run_dir, **kw)


def test_loss_falls_and_log_columns(tmp_path: Path) -> None:
    _trainer(tmp_path, steps=60, checkpoint_every=60, warmup_steps=3).fit()
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    for col in ("epoch", "loss", "tau", "lr", "data_wait_s", "views_s", "step_s", "pred_std", "mean_before",
                "std_before"):
        assert col in rows[0]
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert float(rows[0]["tau"]) == pytest.approx(0.9)
    assert int(rows[-1]["epoch"]) == 5  # 40 items / batch 4 = 10 batches per epoch
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] < lrs[2] and lrs[-1] < lrs[10]  # warm-up, then cosine decay


def test_a_failed_log_header_write_leaves_no_partial_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header of log.csv is written atomically: a write that dies half-way leaves no log.csv (a partial header
    would break every later read of the log)."""
    real_writer = csv.writer

    def dying_writer(f, *args, **kwargs):
        writer = real_writer(f, *args, **kwargs)

        class Dying:
            def writerow(self, row):
                writer.writerow(list(row)[:2])  # part of the header reaches the file, then the disk is full
                raise OSError("disk full")
        return Dying()

    monkeypatch.setattr(csv, "writer", dying_writer)
    with pytest.raises(OSError, match="disk full"):
        _trainer(tmp_path).fit()
    assert not (tmp_path / "log.csv").exists()
    monkeypatch.setattr(csv, "writer", real_writer)
    _trainer(tmp_path / "run", steps=2).fit()
    header = (tmp_path / "run" / "log.csv").read_bytes().split(b"\r\n")[0]
    assert header.startswith(b"step,epoch,loss,tau,lr,") and len(_rows(tmp_path / "run")) == 2


def test_nan_loss_raises_naming_the_step(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match=r"at step 3 of 6"):
        _trainer(tmp_path, model=toy.ToyBYOL(nan_at=3)).fit()


def test_checkpoints_are_atomic_and_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exports = []
    killed = [tmp_path / "checkpoints" / n for n in (".state-00000002.pt.x1y2.tmp", ".state-00000002.pt.tmp-7")]
    killed[0].parent.mkdir()
    for temp in killed:  # temporaries of a killed write (atomic_writer's name; an older version's)
        temp.write_bytes(b"partial")
    _trainer(tmp_path, export=lambda step, final: exports.append((step, final))).fit()
    assert exports == [(2, False), (4, False), (6, True)]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["state-00000004.pt", "state-00000006.pt"]  # keep_checkpoints=2
    state = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert state["step"] == 6 and len(state["ranks"]) == 1

    # A save that dies mid-write leaves the previous file intact and no partial file behind.
    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    run2 = tmp_path / "run2"
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _trainer(run2).fit()
    assert list((run2 / "checkpoints").iterdir()) == []


def test_resume_refuses_changed_settings_and_fresh_run_refuses_old_dir(tmp_path: Path) -> None:
    _trainer(tmp_path).fit()
    with pytest.raises(FileExistsError):
        _trainer(tmp_path).fit()
    with pytest.raises(ValueError, match="batch_size"):
        _trainer(tmp_path, batch_size=8).fit(resume=True)


def test_resume_checkpoint_is_the_one_check_for_an_existing_run(tmp_path: Path) -> None:
    """A folder without checkpoints starts a fresh run (resume or not); one with checkpoints resumes from the newest,
    and a fresh run over it is refused, naming resume, before anything in it changes."""
    assert resume_checkpoint(tmp_path / "new", resume=False) is None
    assert resume_checkpoint(tmp_path / "new", resume=True) is None
    folder = tmp_path / "old" / "checkpoints"
    folder.mkdir(parents=True)
    for step in (2, 10, 4):
        (folder / f"state-{step:08d}.pt").write_bytes(b"")
    (folder / ".state-00000012.pt.x1y2.tmp").write_bytes(b"")  # an interrupted write is no checkpoint
    newest = resume_checkpoint(tmp_path / "old", resume=True)
    assert newest == folder / "state-00000010.pt" and checkpoint_step(newest) == 10
    with pytest.raises(FileExistsError, match="resume"):
        resume_checkpoint(tmp_path / "old", resume=False)
    with pytest.raises(ValueError, match="state-<step>.pt"):
        checkpoint_step(folder / "model.safetensors")

    _trainer(tmp_path / "run").fit()
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="resume"):
        _trainer(tmp_path / "run").fit()
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == files


def test_a_run_without_checkpoints_is_not_overwritten(tmp_path: Path) -> None:
    """A folder holding a run's log but no checkpoint (killed before its first one, or its checkpoints removed) is
    refused by a fresh run, naming what is there and what to do, with nothing changed; `resume` starts it again
    from step 0 (nothing to continue from), unless it holds trained weights (`trained`: they would be overwritten)."""
    run = tmp_path / "run"
    _trainer(run).fit()
    for state in (run / "checkpoints").iterdir():
        state.unlink()
    (run / "model.safetensors").write_bytes(b"weights")  # what an export callback leaves
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError) as err:
        _trainer(run).fit()
    assert "log.csv" in str(err.value) and "--out" in str(err.value) and "\n" not in str(err.value)
    for resume in (False, True):
        with pytest.raises(FileExistsError, match=r"model\.safetensors.*--out"):
            resume_checkpoint(run, resume, trained=("model*.safetensors",))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    assert resume_checkpoint(run, resume=True) is None
    _trainer(run, steps=2).fit(resume=True)  # from step 0: the old rows go, as rows past a checkpoint do
    assert [int(r["step"]) for r in _rows(run)] == [1, 2]


def test_process_group_is_made_once_and_ended_by_the_block_that_made_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun (WORLD_SIZE > 1) the outermost block makes the group (gloo on a CPU) and destroys it, also on an
    error; a nested block (pretrain's, then Trainer.fit's) uses it. A single process makes none."""
    state: dict = {"group": False, "calls": []}

    def init(backend: str, timeout: object = None) -> None:
        state["calls"].append(("init", backend))
        state["group"] = True

    def destroy() -> None:
        state["calls"].append("destroy")
        state["group"] = False

    monkeypatch.setattr(dist, "is_initialized", lambda: state["group"])
    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(dist, "destroy_process_group", destroy)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    with process_group("cpu") as info:
        assert info == DistInfo(0, 0, 1)
    assert state["calls"] == []

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(KeyboardInterrupt):
        with process_group("cpu") as info:
            assert info == DistInfo(1, 0, 2)
            with process_group("cpu") as inner:
                assert inner == info and state["calls"] == [("init", "gloo")]
            assert state["calls"] == [("init", "gloo")]  # the inner block did not end the outer block's group
            raise KeyboardInterrupt
    assert state["calls"] == [("init", "gloo"), "destroy"]


def test_gradient_accumulation_matches_big_batch(tmp_path: Path) -> None:
    class Plain(torch.nn.Module):  # no BatchNorm, mean loss: accumulation is exact
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(toy.DIM, 4)

        def forward(self, views):
            return {"loss": (self.lin(views[0]) ** 2).mean()}

    results = []
    for name, bs, accum in (("big", 8, 1), ("accum", 4, 2)):
        model = Plain()
        Trainer(model, lambda p: torch.optim.SGD(p, lr=0.1), toy.ToyData(), lambda x: [x], tmp_path / name,
                batch_size=bs, accum_steps=accum, steps=3, progress=False, amp="off").fit()  # bf16 is not exact
        results.append(model.lin.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_default_device_names_a_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun with more processes than GPUs: a clear error, not CUDA's 'invalid device ordinal' later."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert default_device() == torch.device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK 1 .* 1 CUDA device"):
        default_device()


def test_warmup_cosine_schedule() -> None:
    s = WarmupCosine(total_steps=10, warmup_steps=4, cosine=True, min_ratio=0.1)
    assert [s(k) for k in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert s(4) == pytest.approx(1.0) and s(10) == pytest.approx(0.1)
    assert s(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert WarmupCosine(10, 0, cosine=False)(9) == 1.0


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    run = tmp_path / "b"
    run.mkdir()
    # A training subprocess (with a DataLoader worker) is killed mid-epoch after step 6; its last checkpoint is at
    # step 4. Meanwhile the uninterrupted reference runs here, in deterministic mode too.
    proc = subprocess.Popen([sys.executable, str(HERE / "trainer_toy.py"), str(run), "--workers", "1",
                             "--hang-after", "6"], env=toy.subprocess_env())
    try:
        ref = toy.run(tmp_path / "a").state_dict()
        deadline = time.time() + 120
        while not (run / "hanging").exists():
            assert proc.poll() is None, "the training subprocess ended before it was killed"
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert latest_checkpoint(run).name == "state-00000004.pt"
    assert len(_rows(run)) == 6

    resumed = toy.run(run, workers=1, resume=True).state_dict()
    assert ref.keys() == resumed.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
    assert [int(r["step"]) for r in _rows(run)] == list(range(1, 13))
    assert [r["loss"] for r in _rows(run)] == [r["loss"] for r in _rows(tmp_path / "a")]


def test_torchrun_two_processes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    weights = tmp_path / "w{rank}.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "trainer_toy.py"), str(run), "--steps", "5", "--checkpoint-every", "5", "--weights",
           str(weights), "--device", "cpu"]  # gloo on CPU: a one-GPU machine has no cuda:1
    subprocess.run(cmd, check=True, env=toy.subprocess_env(), timeout=180)
    w0 = torch.load(tmp_path / "w0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "w1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "export-rank0-step5", "log.csv"]
    assert [int(r["step"]) for r in _rows(run)] == [1, 2, 3, 4, 5]
    state = torch.load(latest_checkpoint(run), weights_only=True)
    assert state["config"]["world_size"] == 2 and len(state["ranks"]) == 2
    # Each rank kept its own augmentation stream (ToyViews seeded by rank).
    g0, g1 = (r["rng"]["generators"]["generator"] for r in state["ranks"])
    assert not torch.equal(g0, g1)
    # 40 items / (2 ranks x batch 4) = 5 batches per epoch.
    assert int(_rows(run)[-1]["epoch"]) == 0


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard reads the event files of ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_logs_every_log_csv_value_and_follows_resume(tmp_path: Path) -> None:
    """Issue 11: ``tensorboard=True`` writes every log.csv column of every step as a scalar; a resumed run drops the
    events after its checkpoint as it drops those rows of log.csv, so the two agree."""
    _trainer(tmp_path, tensorboard=True, checkpoint_every=4).fit()        # checkpoints at steps 4 and 6
    (tmp_path / "checkpoints" / "state-00000006.pt").unlink()             # as if killed after step 6's log row
    _trainer(tmp_path, tensorboard=True, checkpoint_every=4).fit(resume=True)  # steps 5 and 6 again
    rows = _rows(tmp_path)
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert set(scalars) == set(rows[0]) - {"step"}
    for tag, events in scalars.items():
        assert [step for step, _ in events] == [int(r["step"]) for r in rows], tag
        logged = [float(r[tag]) for r in rows]
        assert [v for _, v in events] == pytest.approx(logged, rel=1e-6, nan_ok=True), tag


def test_tensorboard_without_the_extra_is_one_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from byola.engine import trainer as trainer_mod
    from byola.errors import UsageError
    from byola.extras import optional_module

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` meets when it is not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(trainer_mod, "_tensorboard", optional_module("torch.utils.tensorboard", "tensorboard"))
    with pytest.raises(UsageError, match=r"pip install 'byola\[tensorboard\]'") as err:
        _trainer(tmp_path, tensorboard=True)
    assert "\n" not in str(err.value) and not any(tmp_path.iterdir())
