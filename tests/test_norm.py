"""byola.norm: exact pre-norm statistics, PreNormalization and PostNormalization."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from byola.audio import AudioError
from byola.errors import UsageError
from byola.frontend import LogMelSpectrogram
from byola.norm import NormStats, PostNormalization, PreNormalization, compute_norm_stats

SR = 16000


@pytest.fixture(scope="module")
def frontend() -> LogMelSpectrogram:
    return LogMelSpectrogram(backend="torchaudio")  # same maths as the default, imports faster


def _clips(lengths=(9000, 16000, 5000, 16000, 16000, 23456, 700), seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        t = torch.arange(n) / SR
        out.append(0.3 * torch.sin(2 * np.pi * (200 + 150 * i) * t) + (0.02 * (i + 1)) * torch.randn(n, generator=g))
    return out


def _reference(frontend, waves) -> tuple[float, float, int]:
    """numpy over the concatenated log-mels of the clips, each run through the front end on its own."""
    with torch.no_grad():
        values = np.concatenate([frontend(w).numpy().astype(np.float64).ravel() for w in waves])
    return float(values.mean()), float(values.std()), values.size


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_matches_numpy_over_concatenated_logmels(frontend):
    waves = _clips(lengths=(9000, 16000, 5000, 12000, 23456, 700))  # all lengths differ: one clip per batch
    stats = compute_norm_stats(waves, frontend, progress=False)
    mean, std, count = _reference(frontend, waves)
    assert stats.count == count
    assert _rel(stats.mean, mean) <= 1e-9 and _rel(stats.std, std) <= 1e-9


def test_paths_numpy_and_tensors_agree(frontend, tmp_path):
    waves = _clips()
    paths = []
    for i, w in enumerate(waves):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], w.numpy(), SR, subtype="FLOAT")
    from_tensors = compute_norm_stats(waves, frontend, progress=False)
    from_paths = compute_norm_stats([str(p) for p in paths], frontend, progress=False)
    from_numpy = compute_norm_stats((w.numpy() for w in waves), frontend, progress=False)  # a generator works too
    assert from_tensors == from_paths == from_numpy


@pytest.mark.parametrize("backend", ["torchaudio", "nnaudio"])
def test_independent_of_batching_and_order(backend):
    frontend = LogMelSpectrogram(backend=backend)
    waves = _clips(lengths=(16000,) * 6 + (8000,) * 3 + (16000,) * 2)
    mean, std, _ = _reference(frontend, waves)
    results = [compute_norm_stats(waves, frontend, batch_size=b, progress=False) for b in (1, 2, 4, 64)]
    results.append(compute_norm_stats(waves[::-1], frontend, batch_size=3, progress=False))
    for r in results:
        # Measured: torchaudio <= 2e-16, nnaudio <= 6.2e-9 relative (its float32 conv1d rounding depends on the
        # batch size); the moments themselves are merged per clip.
        assert _rel(r.mean, mean) <= 1e-7 and _rel(r.std, std) <= 1e-7
        assert r.count == results[0].count
    assert compute_norm_stats(waves, frontend, batch_size=4, progress=False) == results[2]  # deterministic


def test_long_files_are_streamed(frontend, tmp_path):
    waves = _clips(lengths=(16000 * 65 + 77, 9000, 16000 * 2))  # the first spans two 6000-frame chunks
    paths = []
    for i, w in enumerate(waves):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], w.numpy(), SR, subtype="FLOAT")
    loaded = compute_norm_stats(paths, frontend, progress=False)
    streamed = compute_norm_stats(paths, frontend, max_load_sec=0.7, progress=False)  # 1 s blocks, 6000-frame chunks
    mean, std, count = _reference(frontend, waves)
    assert loaded.count == streamed.count == count
    # Measured: equal to ~1e-16 relative (torchaudio's frames do not depend on the segment).
    assert _rel(streamed.mean, mean) <= 1e-9 and _rel(streamed.std, std) <= 1e-9
    data = paths[0].read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) * 2 // 3])  # long and truncated
    with pytest.warns(UserWarning, match="skipped 1"):
        again = compute_norm_stats([*paths, tmp_path / "cut.wav"], frontend, max_load_sec=0.7, skip_errors=True,
                                   progress=False)
    assert again == streamed


def test_worker_processes_give_the_same_statistics_and_waves(frontend, tmp_path):
    """num_workers > 0: chunks of files in one-thread worker processes, merged in input order. Chunks of 32 files
    (70 files: three chunks), a long file streamed inside a worker, bad files in the middle."""
    waves = _clips(lengths=(16000, 16000, 9000, 16000 * 3 + 5) * 17 + (16000, 700), seed=3)
    paths = []
    for i, w in enumerate(waves):
        paths.append(str(tmp_path / f"{i:03d}.wav"))
        sf.write(paths[-1], w.numpy(), SR, subtype="FLOAT")
    (tmp_path / "bad.wav").write_bytes(b"RIFF not audio")
    paths[40:40] = [str(tmp_path / "bad.wav")]
    runs = {}
    for workers in (0, 2):
        kept: list[tuple[str, torch.Tensor]] = []
        with pytest.warns(UserWarning, match="skipped 1"):
            stats = compute_norm_stats(paths, frontend, max_load_sec=2.0, skip_errors=True, progress=False,
                                       num_workers=workers, on_decoded=lambda p, w, kept=kept: kept.append((p, w)))
        runs[workers] = stats, kept
    (seq, seq_kept), (par, par_kept) = runs[0], runs[2]
    assert par.count == seq.count
    # Workers run one torch thread. Measured: equal to the last bit when the caller runs one too (and on spcv2_12's
    # 2,706 files with two), 1e-12 relative here with two (float32 front-end rounding under threads).
    assert _rel(par.mean, seq.mean) <= 1e-9 and _rel(par.std, seq.std) <= 1e-9
    assert [p for p, _ in par_kept] == [p for p, _ in seq_kept]  # every file decoded whole, in input order
    assert len(seq_kept) == 70 - 17  # the 3-s files are streamed (max_load_sec=2), the bad one is left out
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seq_kept, par_kept))
    with pytest.raises(AudioError, match="bad.wav"):
        compute_norm_stats(paths, frontend, progress=False, num_workers=2)


@pytest.mark.parametrize("crop", ["start", "center"])
def test_unit_sec_crops_and_pads(frontend, crop):
    waves = _clips()
    unit = 8000
    stats = compute_norm_stats(waves, frontend, unit_sec=unit / SR, crop=crop, progress=False)

    def cut(w):
        if w.numel() < unit:
            return torch.cat([w, torch.zeros(unit - w.numel())])
        start = 0 if crop == "start" else (w.numel() - unit) // 2
        return w[start:start + unit]

    mean, std, count = _reference(frontend, [cut(w) for w in waves])
    assert stats.count == count == len(waves) * 64 * (unit // 160 + 1)
    assert _rel(stats.mean, mean) <= 1e-7 and _rel(stats.std, std) <= 1e-7


def test_random_crop_is_seeded(frontend):
    waves = _clips()
    a = compute_norm_stats(waves, frontend, unit_sec=0.25, seed=1, progress=False)
    b = compute_norm_stats(waves, frontend, unit_sec=0.25, seed=1, batch_size=2, progress=False)
    c = compute_norm_stats(waves, frontend, unit_sec=0.25, seed=2, progress=False)
    assert _rel(a.mean, b.mean) <= 1e-7 and a.mean != c.mean


def test_bad_files_raise_or_are_skipped_once(frontend, tmp_path):
    waves = _clips(lengths=(16000, 9000))
    good = []
    for i, w in enumerate(waves):
        good.append(tmp_path / f"{i}.wav")
        sf.write(good[-1], w.numpy(), SR, subtype="FLOAT")
    empty, text = tmp_path / "empty.wav", tmp_path / "text.flac"
    empty.write_bytes(b"")
    text.write_text("not audio at all " * 20)
    items = [good[0], empty, good[1], text]
    with pytest.raises(AudioError, match="empty"):
        compute_norm_stats(items, frontend, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = compute_norm_stats(items, frontend, skip_errors=True, progress=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 2" in message and str(empty) in message and str(text) in message
    assert stats == compute_norm_stats(good, frontend, progress=False)
    with pytest.raises(UsageError, match="no audio.*1 unreadable"), pytest.warns(UserWarning, match="skipped 1"):
        compute_norm_stats([empty], frontend, skip_errors=True, progress=False)
    with pytest.raises(UsageError, match="no audio"):
        compute_norm_stats([], frontend, progress=False)


def test_rejects_bad_arguments(frontend):
    with pytest.raises(ValueError, match="1-D float"):
        compute_norm_stats([torch.zeros(2, 16000)], frontend, progress=False)
    with pytest.raises(ValueError, match="sample_rate"):
        compute_norm_stats(_clips(), frontend, sample_rate=8000, progress=False)
    with pytest.raises(ValueError, match="crop"):
        compute_norm_stats(_clips(), frontend, crop="middle", progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        compute_norm_stats([torch.full((16000,), float("nan"))], frontend, progress=False)


def test_norm_stats_round_trip():
    s = NormStats(mean=-7.25, std=4.5, count=123)
    assert NormStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert NormStats.from_dict({"mean": 1, "std": 2}) == NormStats(1.0, 2.0, 0)


def test_pre_normalization_standardizes(frontend):
    waves = _clips()
    stats = compute_norm_stats(waves, frontend, progress=False)
    pre = PreNormalization.from_stats(stats)
    with torch.no_grad():
        z = torch.cat([pre(frontend(w)).flatten() for w in waves]).double()
    assert abs(z.mean().item()) < 1e-5 and abs(z.std(correction=0).item() - 1) < 1e-5
    assert pre.state_dict() == {} and pre.to(torch.float64).mean.dtype == torch.float64
    for bad in [(0.0, 0.0), (0.0, -1.0), (float("nan"), 1.0)]:
        with pytest.raises(ValueError):
            PreNormalization(*bad)


def test_post_normalization():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(8, 1, 64, 96, generator=g)
    y = PostNormalization()(x)
    assert abs(y.mean().item()) < 1e-5 and abs(y.std().item() - 1) < 1e-5
    two = torch.cat([x, 10 * x], dim=1)  # per channel for [B, C, F, T]
    y2 = PostNormalization()(two)
    torch.testing.assert_close(y2.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y2.std(dim=(0, 2, 3)), torch.ones(2), atol=1e-5, rtol=0)
    flat = PostNormalization()(x[:, 0])  # [B, F, T]: over everything
    assert abs(flat.std().item() - 1) < 1e-5
    const = PostNormalization()(torch.full((2, 1, 4, 4), 5.0))
    assert torch.equal(const, torch.zeros_like(const))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_clip_too_short_for_the_front_end_is_skipped_like_an_unreadable_one(frontend, tmp_path, num_workers):
    """A 100-sample file used to end the pass in the front end's ValueError (reflect padding needs more than
    n_fft // 2 samples); it is an input problem, reported like an unreadable file."""
    good = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for path, wave in zip(good, _clips(lengths=(16000, 9000))):
        sf.write(path, wave.numpy(), SR, subtype="FLOAT")
    short = tmp_path / "short.wav"
    sf.write(short, _clips(lengths=(100,))[0].numpy(), SR, subtype="FLOAT")
    items = [good[0], short, good[1]]
    with pytest.raises(AudioError, match="short.wav: .*too short"):
        compute_norm_stats(items, frontend, progress=False, num_workers=num_workers)
    with pytest.warns(UserWarning, match=r"^normalization statistics: skipped 1 .*file\(s\): .*short.wav") as caught:
        stats = compute_norm_stats(items, frontend, skip_errors=True, progress=False, num_workers=num_workers)
    assert len(caught) == 1
    assert stats == compute_norm_stats(good, frontend, progress=False)
    with pytest.warns(UserWarning, match="skipped 1"):  # a waveform item is named by its position
        stats = compute_norm_stats([_clips()[1], torch.zeros(100)], frontend, skip_errors=True, progress=False)
    assert stats == compute_norm_stats([_clips()[1]], frontend, progress=False)
