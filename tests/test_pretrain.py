"""BYOL-A pretraining wiring (byola.pretrain): recipes, overrides, a tiny end-to-end run, export, resume."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import byola
from byola.checkpoint import load_checkpoint
from byola.embed import load
from byola.errors import UsageError
from byola.engine import trainer as trainer_mod
from byola.norm import RunningNorm
from byola.precision import cpu_model
from byola.pretrain import pretrain
from byola.recipe import RECIPES_DIR, load_recipe, resolve_config

# A few-second run: tiny encoder and heads, 16 mels, batch 4.
TINY = {"model.conv_channels": 4, "frontend.n_mels": 16, "method.projector_hidden": 32, "method.projector_dim": 16,
        "method.predictor_hidden": 32, "augment.bank_size": 16, "norm.max_samples": 8, "data.num_workers": 0,
        "train.batch_size": 4, "train.steps": 6, "train.checkpoint_every": 3, "train.progress": False, "seed": 1}
TINY_V1 = {**TINY, "model.d": 32}
TINY_V2 = {**TINY, "model.d": 48, "model.mlp_hidden_d": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(10):
        sr = (16000, 22050, 8000)[i % 3]
        t = np.arange(int(sr * (0.6 + 0.2 * i))) / sr
        chirp = np.sin(2 * np.pi * (150 + 40 * i) * t * (1 + t)) * np.exp(-2 * t * (i % 4))
        sf.write(root / f"clip{i:02d}.{('wav', 'flac')[i % 2]}",
                 (0.4 * chirp + 0.02 * rng.standard_normal(t.shape)).astype(np.float32), sr)
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    return root


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_recipes_hold_the_published_values() -> None:
    v1, v2 = load_recipe("byola_v1"), load_recipe(RECIPES_DIR / "byola_v2.yaml")
    assert (v1["model"], v2["model"]) == ({"name": "AudioNTT2020", "d": 2048}, {"name": "AudioNTT2022", "d": 3072})
    assert (v1["optim"]["lr"], v2["optim"]["lr"]) == (3e-4, 1e-4)
    assert (v1["augment"]["mixup_ratio"], v2["augment"]["mixup_ratio"]) == (0.4, 0.2)
    assert v1["augment"]["fader_gain"] == 0 and v2["augment"]["fader_gain"] > 0
    for r in (v1, v2):
        assert r["train"]["batch_size"] == 256 and r["train"]["epochs"] == 100 and r["data"]["unit_sec"] == 0.95
        assert r["method"]["tau_base"] == 0.99
        assert (r["method"]["projector_hidden"], r["method"]["projector_dim"]) == (4096, 256)
    assert (v1["norm"]["mode"], v2["norm"]["mode"]) == ("running", "corpus")
    with pytest.raises(FileNotFoundError, match="byola_v1"):
        load_recipe("no_such_recipe")


def test_overrides_dotted_flat_and_coerced() -> None:
    cfg = resolve_config("byola_v2", {"optim.lr": "3e-4", "epochs": 5, "train__batch_size": 8,
                                      "augment.freq_scale": "[0.5, 2.0]", "model.mlp_hidden_d": 1024,
                                      "steps": "null"})
    assert cfg["optim"]["lr"] == 3e-4 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["batch_size"] == 8 and cfg["train"]["steps"] is None
    assert cfg["augment"]["freq_scale"] == [0.5, 2.0] and cfg["model"]["mlp_hidden_d"] == 1024
    assert load_recipe("byola_v2")["optim"]["lr"] == 1e-4  # the recipe itself is untouched
    with pytest.raises(KeyError, match="ambiguous.*model.name"):
        resolve_config("byola_v2", {"name": "x"})
    with pytest.raises(KeyError, match="matches no recipe value"):
        resolve_config("byola_v2", {"learning_rate": 1.0})
    with pytest.raises(KeyError, match="new keys"):
        resolve_config("byola_v2", {"train.lr_typo": 1.0})


def test_running_norm_accumulates_exact_moments_then_freezes() -> None:
    norm = RunningNorm(max_samples=6)
    a, b, c = torch.randn(4, 3, 5) * 2 + 1, torch.randn(2, 3, 5) - 3, torch.randn(4, 3, 5) * 9
    norm(a)
    out = norm(b)
    both = torch.cat([a, b]).double()
    torch.testing.assert_close(out, ((b - both.mean()) / both.std()).float())
    norm(c)  # 6 samples seen: frozen
    stats = norm.stats()
    assert stats.count == both.numel() and stats.mean == pytest.approx(both.mean().item())
    clone = RunningNorm(max_samples=6)
    clone.load_state_dict(norm.state_dict())
    torch.testing.assert_close(clone(c), norm(c))


def test_pretrain_v2_tiny_end_to_end(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    final = pretrain([str(corpus)], "byola_v2", str(run), **TINY_V2)
    assert final == run / "model.safetensors"
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    for r in rows:
        assert float(r["views_mean_after"]) == pytest.approx(0, abs=1e-4)
        assert float(r["views_std_after"]) == pytest.approx(1, abs=1e-4)
        assert float(r["tau"]) == 0.99 and float(r["lr"]) == pytest.approx(1e-4)
    stats = json.loads((run / "norm_stats.json").read_text())
    encoder, meta = load_checkpoint(final)
    assert meta["encoder"]["name"] == "AudioNTT2022" and meta["frontend"]["n_mels"] == 16
    assert meta["norm_stats"]["mean"] == pytest.approx(stats["mean"])
    prov = meta["provenance"]
    assert prov["recipe"] == "byola_v2" and prov["step"] == 6 and prov["final"] is True
    assert prov["data"]["files"] == 10 and prov["data"]["unreadable"] == 1
    assert (prov["byola_version"], prov["torch_version"], prov["numpy_version"]) == \
        (byola.__version__, torch.__version__, np.__version__)  # byola.provenance.environment()
    gpu = torch.cuda.is_available()  # the device pretraining picks by default
    assert prov["hardware"] == {"device": torch.cuda.get_device_name(0) if gpu else cpu_model(), "world_size": 1}
    assert sorted(p.name for p in run.glob("model-step*")) == ["model-step00000003.safetensors"]
    with torch.no_grad():
        emb = encoder(torch.randn(2, 1, 16, 96))
    assert emb.shape == (2, 48) and torch.isfinite(emb).all()
    # What `byola embed --checkpoint RUN/model.safetensors` loads.
    embedder = load(final)
    assert embedder.embed(torch.randn(16000) * 0.1, 16000).shape[-1] == 48
    with pytest.raises(FileExistsError, match="resume"):
        pretrain([str(corpus)], "byola_v2", str(run), **TINY_V2)


def test_an_existing_run_is_refused_before_any_data_work(tmp_path: Path) -> None:
    """Without --resume, a run folder holding checkpoints is refused before the data is read or anything written."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "state-00000003.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="resume"):
        pretrain([str(tmp_path / "no corpus here")], "byola_v2", str(run), **TINY_V2)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == ["checkpoints",
                                                                            "checkpoints/state-00000003.pt"]


def test_a_finished_run_without_checkpoints_is_refused_before_any_data_work(tmp_path: Path) -> None:
    """A run folder whose checkpoints were removed still holds the model and the log: a new run, with or without
    --resume (nothing to continue from), is refused in one line naming them, before anything in it changes."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.safetensors", "model-step00000003.safetensors", "log.csv", "config.yaml"):
        (run / name).write_text(name)
    for resume in (False, True):
        with pytest.raises(FileExistsError) as err:
            pretrain([str(tmp_path / "no corpus here")], "byola_v2", str(run), resume=resume, **TINY_V2)
        message = str(err.value)
        assert "model.safetensors" in message and "--out" in message and "\n" not in message
    assert {p.name: p.read_text() for p in run.iterdir()} == {n: n for n in (
        "model.safetensors", "model-step00000003.safetensors", "log.csv", "config.yaml")}


def test_pretrain_v1_resume_after_interruption_matches(corpus: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ref = pretrain([str(corpus)], "byola_v1", str(tmp_path / "ref"), **TINY_V1)

    original_save = trainer_mod.Trainer._save

    def save_then_die(self, final):
        original_save(self, final)
        if self.step == 3:
            raise KeyboardInterrupt  # stands for a crash right after checkpoint 3

    monkeypatch.setattr(trainer_mod.Trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain([str(corpus)], "byola_v1", str(tmp_path / "run"), **TINY_V1)
    monkeypatch.setattr(trainer_mod.Trainer, "_save", original_save)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    resumed = pretrain([str(corpus)], "byola_v1", str(tmp_path / "run"), resume=True, **TINY_V1)
    a, b = load_file(ref), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in _rows(tmp_path / "run")] == [r["loss"] for r in _rows(tmp_path / "ref")]
    # Running statistics (v1) are restored with the views' state and exported with the model.
    assert load_checkpoint(ref)[1]["norm_stats"] == load_checkpoint(resumed)[1]["norm_stats"]


@pytest.mark.parametrize(("override", "named"), [
    ({"train.steps": 0}, r"train\.steps must be >= 1, got 0"),                  # used to start the full 100 epochs
    ({"model.d": 512}, r"model .*AudioNTT2022"),                                # v2's d must exceed its conv width
    ({"optim.lr": -1.0}, r"optim .*learning rate"),
    ({"train.batch_size": "many"}, r"train\.batch_size must be an integer"),
    ({"norm.mode": "median"}, r"norm\.mode must be one of"),
    ({"data.pad": "middle"}, r"data\.pad must be one of 'center', 'end', 'random', got 'middle'"),
    ({"data.cache_dtype": "int8"}, r"data\.cache_dtype must be one of 'float32', 'float16'"),
    ({"frontend.backend": "sox"}, r"frontend\.backend must be one of 'nnaudio', 'torchaudio', 'librosa'"),
    ({"augment.version": "v3"}, r"augment\.version must be one of 'v1', 'v2'"),
    ({"model.n_mels": 128}, r"model\.n_mels 128 differs from frontend\.n_mels 64"),
    ({"method.name": "byol_bnfree", "model.backbone_norm": "ln"}, r"model\.backbone_norm is set by the method"),
    # A misspelt key names the closest valid ones (open sections: from the signature of what they configure).
    ({"optim.lrr": 0.1}, r"^unknown key optim\.lrr \(did you mean optim\.lr\?\): known keys: lr, betas, eps, "),
    ({"optim.name": "sgd", "optim.momentun": 0.9}, r"^unknown key optim\.momentun \(did you mean optim\.momentum\?\)"),
    ({"model.conv_chanels": 32}, r"^unknown key model\.conv_chanels \(did you mean model\.conv_channels\?\)"),
    ({"method.tau_bas": 0.9}, r"^unknown key method\.tau_bas \(did you mean method\.tau_base\?\)"),
    ({"train.batch_sizee": 8}, r"^unknown key train\.batch_sizee \(did you mean train\.batch_size\?\)"),
    ({"frontend.n_mel": 32}, r"^unknown key frontend\.n_mel \(did you mean frontend\.n_mels\?\)"),
    ({"trian.steps": 3}, r"^unknown key trian \(did you mean train\?\)"),
    ({"lrr": 0.1}, r"^override 'lrr' matches no recipe value \(did you mean optim\.lr\?\)"),
])
def test_recipe_errors_come_before_any_data_work(tmp_path: Path, override: dict, named: str) -> None:
    """Issue 10 point 11: every recipe error, model/recipe mismatches included, is one ValueError naming the key,
    raised before the (here missing) data is looked at."""
    with pytest.raises(ValueError, match=named) as err:
        pretrain([str(tmp_path / "no_such_corpus")], "byola_v2", str(tmp_path / "run"), **override)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_batch_larger_than_the_corpus_is_refused_before_statistics(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.batch_size 64 x 1 process\(es\) needs at least 64 items"):
        pretrain([str(corpus)], "byola_v2", str(tmp_path / "run"), **{**TINY_V2, "train.batch_size": 64})
    assert not (tmp_path / "run" / "norm_stats.json").exists()


def test_cli_recipe_error_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "byola", "pretrain", str(tmp_path), "--train.steps=0",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "byola pretrain: error: train.steps must be >= 1, got 0"]


def test_resume_with_changed_hyperparameters_is_refused(corpus: Path, tmp_path: Path) -> None:
    """Issue 10 point 10: `--resume --optim.lr=0.1` used to train on with the checkpoint's 1e-4 and write 0.1 into
    the exported model's metadata. A change the run cannot honour is refused, naming it, and nothing is written."""
    run = tmp_path / "run"
    pretrain([str(corpus)], "byola_v2", str(run), **{**TINY_V2, "train.steps": 3})
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"optim\.lr 0\.0001 -> 0\.1"):
        pretrain([str(corpus)], "byola_v2", str(run), resume=True, **{**TINY_V2, "train.steps": 3, "optim.lr": 0.1})
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_finished_run_extends_as_if_planned_longer(corpus: Path, tmp_path: Path) -> None:
    """Issue 11: `--resume --train.steps=N` continues a finished run from its last state; with BYOL-A's constant
    schedules the result equals a run planned for N steps, and the change is recorded with its step."""
    ref = pretrain([str(corpus)], "byola_v2", str(tmp_path / "ref"), **TINY_V2)                  # 6 steps
    run = tmp_path / "run"
    pretrain([str(corpus)], "byola_v2", str(run), **{**TINY_V2, "train.steps": 3})
    extended = pretrain([str(corpus)], "byola_v2", str(run), resume=True, **TINY_V2)
    a, b = load_file(ref), load_file(extended)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _rows(run)] == [r["loss"] for r in _rows(tmp_path / "ref")]
    prov = load_checkpoint(extended)[1]["provenance"]
    assert prov["step"] == prov["total_steps"] == 6 and prov["config"]["train"]["steps"] == 6
    assert prov["resumes"] == [{"step": 3, "changed": {"train.steps": {"then": 3, "now": 6}}}]
    # a usage error (one line from the command), raised before any data work
    with pytest.raises(UsageError, match=r"--resume: the run is at step 6, beyond the 4 steps asked for: give "
                                         r"--train.steps 6 or more"):
        pretrain([str(corpus)], "byola_v2", str(run), resume=True, **{**TINY_V2, "train.steps": 4})


def test_recipe_inheritance_and_complete_resolution(tmp_path: Path) -> None:
    from byola.recipe import RecipeError, load

    tri, v2 = resolve_config("tribyola"), resolve_config("byola_v2")
    assert {k: v for k, v in tri.items() if k not in ("method", "train")} == {
        k: v for k, v in v2.items() if k not in ("method", "train")}
    assert tri["method"] == {**v2["method"], "name": "tribyol"} and tri["train"] == {**v2["train"], "batch_size": 64}
    child = tmp_path / "child.yaml"
    child.write_text("base: byola_v1\noptim:\n  lr: 1.0e-3\n")
    cfg = load(child)
    assert cfg.optim.params["lr"] == 1e-3 and cfg.model.params["d"] == 2048 and cfg.train.warmup_steps == 0
    assert set(cfg.to_dict()["frontend"]) == {"n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max",
                                              "backend"}
    (tmp_path / "loop.yaml").write_text("base: loop\n")
    with pytest.raises(RecipeError, match="inherits from itself"):
        load(tmp_path / "loop.yaml")
    child.write_text("base: byola_v1\ntrain:\n  batch_szie: 8\n")
    with pytest.raises(RecipeError, match=r"unknown key train\.batch_szie \(did you mean train\.batch_size\?\)"):
        load(child)
    child.write_text("base: byola_v1\noptim:\n  weight_decy: 0.1\n")
    with pytest.raises(RecipeError, match=r"unknown key optim\.weight_decy \(did you mean optim\.weight_decay or "):
        load(child)


def test_torchrun_pretraining_reports_each_message_once(corpus: Path, tmp_path: Path) -> None:
    """Issue 11: under torchrun only rank 0 logs (here: the unreadable-file warning) and prints the final line."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    overrides = [f"--{k}={v}" for k, v in {**TINY_V2, "train.steps": 2, "train.device": "cpu"}.items()]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "byola", "pretrain", str(corpus), "--out", str(tmp_path / "run"), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("model written to") == 1
    assert done.stderr.count("skipping 1 unreadable audio file") == 1


def test_pretrain_tensorboard_logs_the_loss_of_log_csv(corpus: Path, tmp_path: Path) -> None:
    """Issue 11: ``--train.tensorboard=true`` writes RUN/tensorboard, whose loss curve is log.csv's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    pretrain([str(corpus)], "byola_v2", str(run), **{**TINY_V2, "train.steps": 3, "train.tensorboard": True})
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "views_std_after" in events.Tags()["scalars"]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in _rows(run)] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in _rows(run)], rel=1e-6)


def test_train_sync_timing_reaches_the_trainer_and_may_change_on_resume(corpus: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.sync_timing`` (exact ``views_s`` on a GPU, docs/scaling.md) is a recipe key passed to the Trainer,
    off by default (the Trainer's default); it does not change the numbers, so a resumed run may switch it."""
    import byola.pretrain as pretrain_mod
    from byola.recipe import load as load_recipe_checked

    seen = []

    class Recording(trainer_mod.Trainer):
        def __init__(self, *args, **kwargs) -> None:
            seen.append(kwargs["sync_timing"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pretrain_mod, "Trainer", Recording)
    assert load_recipe_checked("byola_v2", {}).train.sync_timing is False
    run = tmp_path / "run"
    pretrain([str(corpus)], "byola_v2", str(run), **{**TINY_V2, "train.steps": 3, "train.sync_timing": True})
    pretrain([str(corpus)], "byola_v2", str(run), resume=True, **{**TINY_V2, "train.steps": 3})
    assert seen == [True, False]
    changed = json.loads((run / "resumes.json").read_text())[-1]["changed"]
    assert changed == {"train.sync_timing": {"then": True, "now": False}}


def test_tensorboard_without_the_extra_is_refused_before_data_work(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from byola.extras import optional_module

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` meets when it is not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(trainer_mod, "_tensorboard", optional_module("torch.utils.tensorboard", "tensorboard"))
    with pytest.raises(ValueError, match=r"^train\.tensorboard: .*pip install 'byola\[tensorboard\]'$") as err:
        pretrain([str(tmp_path / "no_such_corpus")], "byola_v2", str(tmp_path / "run"), **{"train.tensorboard": True})
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
