"""The protocol end to end with a stand-in embedder: crops, per-fold norm stats, the memory-mapped embedding
cache (reuse, atomicity), evaluate's reports and determinism; plus a real-data check of the log-mel baseline."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from byola.evaluation import LogMelStatsEmbedder, ModelEmbedder, ProbeConfig, evaluate, load_task, run_task
from byola.evaluation.embedders import ClipEmbedder
from byola.evaluation.run import crop_or_pad, embed_fold
from byola.frontend import LogMelSpectrogram
from byola.models import build_encoder
from byola.norm import PreNormalization
from tests.conftest import shared_data

SR = 16000
FAST = ProbeConfig(lr_grid=(1e-2, 1e-1), max_epochs=12, patience=4, batch_size=64, device="cpu")
FREQS = {"low": 300.0, "mid": 1200.0, "high": 3500.0}


def read_audio(path: Path, sample_rate: int) -> torch.Tensor:
    """Test-local decoder (soundfile + torchaudio resampling), standing in for byola.audio.load_audio."""
    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = torch.from_numpy(wave.mean(axis=1))
    return torchaudio.functional.resample(wave, sr, sample_rate) if sr != sample_rate else wave


class BandEmbedder:
    """Stand-in embedder: log energies of 16 FFT bands, scaled by a norm mean; records what it was given."""

    def __init__(self, name: str = "bands"):
        self.name, self.sample_rate = name, SR
        self.norm_calls: list[int] = []
        self.embedded = 0
        self.seen: list[torch.Tensor] = []
        self.mean = 0.0

    def fit_norm(self, clips):
        clips = list(clips)
        self.norm_calls.append(len(clips))
        self.mean = float(torch.stack(clips).abs().mean())
        return {"mean": self.mean, "count": len(clips)}

    def embed_clips(self, waves: torch.Tensor) -> torch.Tensor:
        self.embedded += len(waves)
        self.seen.append(waves.clone())
        spec = torch.fft.rfft(waves).abs() ** 2
        bands = torch.stack([b.sum(-1) for b in spec[:, 1:].chunk(16, dim=-1)], dim=1)
        return torch.log(bands + 1e-6) + self.mean


def _tone(freq: float, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * rng.standard_normal()) * t)
            + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def _dataset(root: Path, n_per_class: int = 12, kind: str = "split") -> Path:
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for label, freq in FREQS.items():
        for i in range(n_per_class):
            name = f"audio/{label}_{i}.wav"
            sf.write(root / name, _tone(freq, 0.3 + 0.05 * (i % 4), seed=i), SR)
            where = (["train"] * 4 + ["valid", "test"])[i % 6] if kind == "split" else str(1 + i % 3)
            rows.append((name, label, where))
    path = root / "tones.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label", "split" if kind == "split" else "fold"])
        w.writerows(rows)
    return path


def test_crop_or_pad():
    wave = torch.arange(10.0)
    assert crop_or_pad(wave, 4, None).tolist() == [0, 1, 2, 3]
    assert crop_or_pad(wave, 4, 0.999).tolist() == [6, 7, 8, 9]
    assert crop_or_pad(wave, 4, 0.0).tolist() == [0, 1, 2, 3]
    assert crop_or_pad(wave[:3], 5, 0.5).tolist() == [0, 1, 2, 0, 0]


def test_stand_in_satisfies_the_interface():
    assert isinstance(BandEmbedder(), ClipEmbedder)


def test_run_task_scores_caches_and_reuses(tmp_path):
    task = load_task(_dataset(tmp_path / "data"), unit_sec=0.25)
    emb = BandEmbedder()
    result = run_task(task, emb, tmp_path / "cache", seeds=(0, 1), probe=FAST, batch_size=8, audio_loader=read_audio,
                      progress=False)
    assert result.score > 90 and result.seed_count == 2 and result.lr in FAST.lr_grid
    assert (result.n_train, result.n_valid, result.n_test) == (24, 6, 6) and result.cache_hits == 0
    assert emb.norm_calls == [24] and emb.embedded == 36  # stats from the 24 training clips only
    assert all(w.shape[1] == 4000 for w in emb.seen)  # cropped/padded to unit_sec
    (cached,) = (tmp_path / "cache").rglob("*.npy")
    arr = np.load(cached, mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.shape == (36, 16)
    assert not list((tmp_path / "cache").rglob("*tmp*"))

    again = BandEmbedder()
    rerun = run_task(task, again, tmp_path / "cache", seeds=(0, 1), probe=FAST, batch_size=8,
                     audio_loader=read_audio, progress=False)
    assert again.embedded == 0 and again.norm_calls == [] and rerun.cache_hits == 1
    assert rerun.seed_scores == result.seed_scores and rerun.lr == result.lr

    other = BandEmbedder("bands-v2")  # another embedder name: new cache entry
    run_task(task, other, tmp_path / "cache", seeds=(0,), probe=FAST, audio_loader=read_audio, progress=False)
    assert other.embedded == 36 and len(list((tmp_path / "cache").rglob("*.npy"))) == 2


def test_test_clips_start_at_zero_and_train_crops_are_seeded(tmp_path):
    task = load_task(_dataset(tmp_path / "data"), unit_sec=0.1)
    folds = task.folds()

    def embedded_waves(cache: str, crop_seed: int) -> torch.Tensor:
        emb = BandEmbedder()
        embed_fold(task, folds[0], emb, tmp_path / cache, crop_seed=crop_seed, batch_size=64, audio_loader=read_audio,
                   progress=False)
        return torch.cat(emb.seen)

    a, b, c = embedded_waves("a", 0), embedded_waves("b", 0), embedded_waves("c", 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for i in folds[0].test:
        assert torch.equal(a[i], read_audio(task.files[i], SR)[:1600])
    starts = [torch.equal(a[i], read_audio(task.files[i], SR)[:1600]) for i in folds[0].train]
    assert not all(starts)


def test_interrupted_embedding_leaves_no_cache(tmp_path):
    task = load_task(_dataset(tmp_path / "data"), unit_sec=0.25)

    class Failing(BandEmbedder):
        def embed_clips(self, waves):
            if self.embedded:
                raise RuntimeError("boom")
            return super().embed_clips(waves)

    with pytest.raises(RuntimeError, match="boom"):
        embed_fold(task, task.folds()[0], Failing(), tmp_path / "cache", batch_size=8, audio_loader=read_audio,
                   progress=False)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_fold_task_has_per_fold_stats_and_caches(tmp_path):
    task = load_task(_dataset(tmp_path / "data", n_per_class=9, kind="fold"), unit_sec=0.25)
    emb = BandEmbedder()
    result = run_task(task, emb, tmp_path / "cache", seeds=(0,), probe=FAST, audio_loader=read_audio, progress=False)
    assert result.n_folds == 3 and result.n_test == 27
    assert emb.norm_calls == [16, 16, 16]  # 18 training-fold clips minus a stratified 10% (2) each
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 3
    assert result.score > 50  # chance: 33%


def test_evaluate_writes_reports_and_is_deterministic(tmp_path):
    csv_path = _dataset(tmp_path / "data")
    kwargs = dict(unit_sec=0.25, seeds=(0,), probe=FAST, audio_loader=read_audio, progress=False,
                  baselines={"other": lambda: BandEmbedder("other")})
    results = evaluate([csv_path], lambda: BandEmbedder(), tmp_path / "out", **kwargs)
    assert [r.label for r in results] == ["bands", "other"]
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    need = {"task", "metric", "score", "std", "n_train", "n_test", "checkpoint", "seed_count", "lr"}
    assert need <= set(rows[0]) and rows[0]["task"] == "tones" and rows[0]["seed_count"] == "1"
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| tones | accuracy |" in md and "**average**" in md and "lr=" in md
    assert (tmp_path / "out" / "confusion" / "bands" / "tones.png").stat().st_size > 1000
    rerun = evaluate([csv_path], lambda: BandEmbedder(), tmp_path / "out2", cache_dir=tmp_path / "out" / "cache",
                     **kwargs)
    assert [r.seed_scores for r in rerun] == [r.seed_scores for r in results]
    assert all(r.cache_hits == 1 for r in rerun)


def test_evaluate_records_provenance_and_a_reproduce_section(tmp_path, tiny_ckpt):
    import platform

    import sklearn

    import byola
    from byola.embed import load
    from byola.files import file_sha256

    csv_path = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    command = f"byola evaluate {csv_path} --checkpoint {tiny_ckpt} --unit_sec 0.25"
    kwargs = dict(unit_sec=0.25, probe=FAST, audio_loader=read_audio, progress=False, crop_seed=3, split_seed=5)
    evaluate([csv_path], lambda: ModelEmbedder(load(tiny_ckpt), name="tiny@abc"), out, seeds=(0, 1),
             baselines={"random": lambda: ModelEmbedder(load(tiny_ckpt, random_init=0), name="random"),
                        "other": lambda: BandEmbedder("other")}, command=command, **kwargs)
    prov = json.loads((out / "provenance.json").read_text())
    env = prov["environment"]
    assert (env["byola_version"], env["torch_version"]) == (byola.__version__, torch.__version__)
    assert (env["numpy_version"], env["scikit_learn_version"]) == (np.__version__, sklearn.__version__)
    assert env["python_version"] == platform.python_version()
    assert prov["command"] == command and prov["started"] <= prov["finished"]
    settings = prov["settings"]
    assert settings["seeds"] == [0, 1] and (settings["crop_seed"], settings["split_seed"]) == (3, 5)
    assert settings["probe"]["lr_grid"] == list(FAST.lr_grid) and settings["probe"]["kind"] == "linear"
    assert settings["batch_size"] == 64 and settings["audio_loader"] == "tests.test_eval_run.read_audio"
    (task,) = prov["tasks"]
    assert task == {"name": "tones", "csv": {"path": str(csv_path.absolute()), "sha256": file_sha256(csv_path)},
                    "unit_sec": 0.25, "metric": "accuracy", "clips": 36, "classes": 3}
    model, random, other = prov["embedders"]
    ckpt = {"path": str(tiny_ckpt.absolute()), "sha256": file_sha256(tiny_ckpt)}
    assert model["label"] == "tiny@abc|norm=fold" and model["norm"] == "fold" and model["checkpoint"] == ckpt
    assert model["settings"]["checkpoint_id"] == "sha256:" + file_sha256(tiny_ckpt)
    assert "norm_stats" not in model["settings"] and model["device"] == "cpu"
    # random weights: the file gave only the architecture, and is not named as the checkpoint
    assert random["architecture"] == ckpt and "checkpoint" not in random
    assert random["settings"]["checkpoint_id"].startswith("random-init:0:")
    assert other == {"label": "other", "name": "other"}  # an embedder without provenance(): label and name
    md = (out / "results.md").read_text()
    reproduce = md[md.index("## Reproduce"):]
    assert f"```sh\n{command}\n```" in reproduce
    assert f"byola {byola.__version__}, torch {torch.__version__}" in reproduce
    assert f"| tiny@abc\\|norm=fold | {tiny_ckpt.absolute()} | `{file_sha256(tiny_ckpt)}` |" in reproduce
    assert reproduce.count(file_sha256(tiny_ckpt)) == 1  # not for the random initialization

    # A rerun into the same folder rewrites results and provenance together: both describe the latest run.
    evaluate([csv_path], lambda: BandEmbedder(), out, seeds=(0,), **kwargs)
    again = json.loads((out / "provenance.json").read_text())
    assert again["command"] is None and again["settings"]["seeds"] == [0]
    assert [e["label"] for e in again["embedders"]] == ["bands"]
    assert "Run from Python" in (out / "results.md").read_text()


def test_byola_evaluate_records_its_command_line(tmp_path, tiny_ckpt, capsys):
    import shlex

    from byola import cli

    argv = ["evaluate", str(_dataset(tmp_path / "data")), "--checkpoint", str(tiny_ckpt), "--unit_sec", "0.25",
            "--seeds", "1", "--out", str(tmp_path / "my out"), "--progress", "False"]
    cli.main(argv)
    prov = json.loads((tmp_path / "my out" / "provenance.json").read_text())
    assert prov["command"] == shlex.join(["byola", *argv]) and "'" in prov["command"]  # the space quoted
    assert f"```sh\n{prov['command']}\n```" in capsys.readouterr().out  # results.md, printed


def test_provenance_of_an_interrupted_evaluation_says_it_did_not_finish(tmp_path):
    def broken():
        raise RuntimeError("no such model")

    with pytest.raises(RuntimeError, match="no such model"):
        evaluate([_dataset(tmp_path / "data")], lambda: BandEmbedder(), tmp_path / "out", baselines={"x": broken},
                 unit_sec=0.25, seeds=(0,), probe=FAST, audio_loader=read_audio, progress=False)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    with open(tmp_path / "out" / "results.csv") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    assert prov["finished"] is None and prov["started"]
    assert [e["label"] for e in prov["embedders"]] == labels == ["bands"]  # the results it describes


class TinyModel(torch.nn.Module):
    """What ModelEmbedder needs from byola.embed.Embedder: frontend, sample_rate, set_norm_stats, embed_batch."""

    sample_rate = SR

    def __init__(self):
        super().__init__()
        self.frontend = LogMelSpectrogram()
        self.encoder = build_encoder("AudioNTT2020", d=32).eval()
        self.prenorm = None

    def set_norm_stats(self, stats) -> None:
        self.prenorm = PreNormalization(stats.mean, stats.std)

    @torch.no_grad()
    def embed_batch(self, waves: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.prenorm(self.frontend(waves)).unsqueeze(1))


def test_model_embedder_fits_exact_fold_stats(tmp_path):
    task = load_task(_dataset(tmp_path / "data"), unit_sec=0.25)
    torch.manual_seed(0)
    embedder = ModelEmbedder(TinyModel(), "tiny-random")
    assert embedder.name == "tiny-random|norm=fold"
    fold = task.folds()[0]
    emb, meta, hit = embed_fold(task, fold, embedder, tmp_path / "cache", audio_loader=read_audio, progress=False)
    assert emb.shape == (36, 32) and not hit and np.isfinite(emb).all()
    stats = meta["norm_stats"]
    offsets = np.random.default_rng(0).random(len(task))  # the protocol's seeded train crops
    crops = torch.stack([crop_or_pad(read_audio(task.files[i], SR), 4000, float(offsets[i])) for i in fold.train])
    mel = LogMelSpectrogram()(crops).double()
    assert stats["mean"] == pytest.approx(float(mel.mean()), rel=1e-5)
    assert stats["std"] == pytest.approx(float(mel.std(unbiased=False)), rel=1e-4)


@pytest.mark.slow
def test_logmel_baseline_on_real_spoken_digits(tmp_path):
    root = shared_data("fsdd")
    with open(root / "fsdd_digit.csv") as f:
        rows = list(csv.DictReader(f))[::12]  # 250 clips: all digits, speakers and splits
    with open(tmp_path / "digits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label", "split"])
        w.writerows([(str(root / r["file_name"]), r["label"], r["split"]) for r in rows])
    task = load_task(tmp_path / "digits.csv", unit_sec=1.0)
    probe = ProbeConfig(lr_grid=(1e-2, 3e-2), max_epochs=60, patience=8, batch_size=128, device="cpu")
    result = run_task(task, LogMelStatsEmbedder(device="cpu"), tmp_path / "cache", seeds=(0,), probe=probe,
                      batch_size=32, progress=False)  # decoded by byola.audio.load_audio
    assert result.n_test == sum(r["split"] == "test" for r in rows) and result.n_classes == 10
    assert not result.warnings
    assert result.score > 50, result  # chance is 10%


def test_multilabel_task_with_knn_probe_end_to_end(tmp_path):
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(30):
        labels = [["low"], ["high"], ["low", "high"]][i % 3]
        wave = sum(_tone(FREQS[l], 0.3, seed=i) for l in labels)
        sf.write(root / "audio" / f"{i}.wav", wave, SR)
        rows.append((f"audio/{i}.wav", ",".join(labels), "train" if i < 18 else "valid" if i < 24 else "test"))
    with open(root / "ml.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label", "split"])
        w.writerows(rows)
    task = load_task(root / "ml.csv", unit_sec=0.25)
    assert task.metric == "mAP"
    results = evaluate([task], lambda: BandEmbedder(), tmp_path / "out", seeds=(0, 1), audio_loader=read_audio,
                       probe=ProbeConfig(kind="knn", k_grid=(1, 3)), progress=False)
    (r,) = results
    assert r.score > 90 and r.lr is None and r.hyper_name == "k" and r.seed_count == 1 and r.y_pred == []
    assert not (tmp_path / "out" / "confusion" / "bands" / "ml.png").exists()  # no confusion matrix for mAP
    assert "| ml | mAP |" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_unreadable_clip_is_one_line_naming_it(tmp_path, num_workers):
    """A clip of the task CSV that cannot be decoded stops the task with a TaskError naming the file, also when
    the decoding runs in a DataLoader worker process (which would wrap it in a multi-line RuntimeError)."""
    from byola.evaluation.tasks import TaskError

    csv_path = _dataset(tmp_path / "data")
    (tmp_path / "data" / "audio" / "mid_3.wav").write_bytes(b"not audio")
    task = load_task(csv_path, unit_sec=0.25)
    with pytest.raises(TaskError) as caught:
        run_task(task, BandEmbedder(), tmp_path / "cache", seeds=(0,), probe=FAST, batch_size=8,
                 num_workers=num_workers, progress=False)
    message = str(caught.value)
    assert "mid_3.wav" in message and "\n" not in message and "tones" in message, message
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_progress_bars_show_the_label_not_the_cache_identity(tmp_path, capsys):
    task = load_task(_dataset(tmp_path / "data"), unit_sec=0.25)
    embedder = BandEmbedder("bands:" + "x" * 200)  # a long cache identity, as the log-mel baseline's
    run_task(task, embedder, tmp_path / "cache", seeds=(0,), probe=FAST, batch_size=8, audio_loader=read_audio,
             progress=True, label="bands")
    shown = capsys.readouterr().err
    assert "bands tones" in shown and "x" * 200 not in shown, shown[-300:]
