"""Checkpoints: safetensors round trip, clear errors, no unpickling; official BYOL-A weights load and convert."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from byola.checkpoint import (FORMAT_VERSION, CheckpointError, convert_official, default_frontend_config,
                              load_checkpoint, load_official_state_dict, read_metadata, save_checkpoint)
from byola.models import AudioNTT2020, AudioNTT2022

FRONTEND = {"sample_rate": 16000, "n_fft": 1024, "win_length": 1024, "hop_length": 160, "n_mels": 64, "f_min": 60.0,
            "f_max": 7800.0, "power": 2.0, "eps": 1.1920928955078125e-07, "backend": "nnaudio"}


# --- official-layout state dicts, written out key by key (independent of byola.models) -------------------------

def official_state(version: int, d: int, n_mels: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the exact key names and shapes of the published BYOL-A files."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    n_blocks = 3 if version == 1 else 2
    for b in range(n_blocks):
        conv, bn, cin = 4 * b, 4 * b + 1, 1 if b == 0 else 64
        sd[f"features.{conv}.weight"] = torch.randn(64, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{conv}.bias"] = torch.randn(64, generator=g) * 0.1
        sd[f"features.{bn}.weight"] = 1 + 0.2 * torch.randn(64, generator=g)
        sd[f"features.{bn}.bias"] = 0.1 * torch.randn(64, generator=g)
        sd[f"features.{bn}.running_mean"] = 0.1 * torch.randn(64, generator=g)
        sd[f"features.{bn}.running_var"] = 0.5 + torch.rand(64, generator=g)
        sd[f"features.{bn}.num_batches_tracked"] = torch.tensor(12345)
    conv_d = 64 * (n_mels // 2 ** n_blocks)
    hidden, out = (d, d) if version == 1 else (2048, d - conv_d)
    sd["fc.0.weight"] = torch.randn(hidden, conv_d, generator=g) / conv_d ** 0.5
    sd["fc.0.bias"] = 0.1 * torch.randn(hidden, generator=g)
    sd["fc.3.weight"] = torch.randn(out, hidden, generator=g) / hidden ** 0.5
    sd["fc.3.bias"] = 0.1 * torch.randn(out, generator=g)
    return sd


def official_embedding(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """BYOL-A's encoder written functionally from the published description: conv blocks, [B, T, F*C] frames
    (mel-major), MLP, v2 stacking, clip = max + mean over time."""
    n_blocks = 3 if "features.8.weight" in sd else 2
    for b in range(n_blocks):
        c, n = f"features.{4 * b}", f"features.{4 * b + 1}"
        x = F.conv2d(x, sd[c + ".weight"], sd[c + ".bias"], padding=1)
        x = F.batch_norm(x, sd[n + ".running_mean"], sd[n + ".running_var"], sd[n + ".weight"], sd[n + ".bias"],
                         training=False, eps=1e-5)
        x = F.max_pool2d(F.relu(x), 2, 2)
    conv = x.permute(0, 3, 2, 1).flatten(2)
    h = F.relu(F.linear(conv, sd["fc.0.weight"], sd["fc.0.bias"]))
    out = F.relu(F.linear(h, sd["fc.3.weight"], sd["fc.3.bias"]))
    frames = out if n_blocks == 3 else torch.cat([conv, out], dim=-1)
    return frames.max(dim=1).values + frames.mean(dim=1)


def logmels(b: int = 3, t: int = 96) -> torch.Tensor:
    return torch.randn(b, 1, 64, t, generator=torch.Generator().manual_seed(7)) * 2 - 5


WRAPPERS = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd},
    "model.": lambda sd: {"model." + k: v for k, v in sd.items()},
    "module.+state_dict": lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
}


@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize("version,d,file", [(1, 512, "AudioNTT2020-BYOLA-64x96d512.pth"),
                                            (1, 2048, "AudioNTT2020-BYOLA-64x96d2048.pth"),
                                            (2, 3072, "AudioNTT2022-BYOLA-64x96d2048.pth")])
def test_official_weights_load_and_convert(tmp_path, wrap, version, d, file):
    sd = official_state(version, d)
    src = tmp_path / file
    torch.save(WRAPPERS[wrap](sd), src)
    x = logmels()
    with torch.inference_mode():
        expected = official_embedding(sd, x)

    state, arch = load_official_state_dict(src)
    name = "AudioNTT2020" if version == 1 else "AudioNTT2022"
    assert arch["name"] == name and arch["params"]["d"] == d and arch["params"]["n_mels"] == 64
    assert sorted(state) == sorted(sd)

    meta = convert_official(src, tmp_path / "converted.safetensors")
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["encoder"] == {"name": name, "params": arch["params"]}
    assert meta["frontend"] == FRONTEND | {"backend": "librosa" if version == 1 else "nnaudio"}
    assert meta["norm_stats"] is None
    prov = meta["provenance"]
    assert prov["official_file"] == file and prov["trained_frontend_backend"] == meta["frontend"]["backend"]
    assert {"source", "created", "byola_version"} <= set(prov)

    encoder, loaded_meta = load_checkpoint(tmp_path / "converted.safetensors")
    assert loaded_meta == meta and not encoder.training
    assert isinstance(encoder, AudioNTT2020 if version == 1 else AudioNTT2022)
    for k, v in sd.items():
        assert torch.equal(encoder.state_dict()[k], v), k
    with torch.inference_mode():
        got = encoder(x)
    assert got.shape == (3, d)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_convert_records_norm_stats(tmp_path):
    torch.save(official_state(1, 512), tmp_path / "v1.pth")
    meta = convert_official(tmp_path / "v1.pth", tmp_path / "v1.safetensors", norm_stats={"mean": -5.4, "std": 4.1})
    assert meta["norm_stats"] == {"mean": -5.4, "std": 4.1}
    assert read_metadata(tmp_path / "v1.safetensors") == meta


def test_round_trip(tmp_path):
    class Stats:  # anything with mean/std, like byola.norm.NormStats
        mean, std, count = -6.5, 3.25, 100

    encoder = AudioNTT2022(n_mels=32, d=1024, mlp_hidden_d=256)
    for m in encoder.modules():  # non-default BN statistics must survive
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
    path = tmp_path / "sub" / "model.safetensors"
    save_checkpoint(path, encoder, FRONTEND | {"n_mels": 32}, Stats(), {"source": "test", "recipe": "r.yaml"})
    assert sorted(os.listdir(path.parent)) == ["model.safetensors"]  # no temporary file left behind
    loaded, meta = load_checkpoint(path)
    assert meta["encoder"] == encoder.config()
    assert meta["frontend"]["n_mels"] == 32 and meta["norm_stats"] == {"mean": -6.5, "std": 3.25}
    assert meta["provenance"]["source"] == "test" and meta["provenance"]["recipe"] == "r.yaml"
    assert not loaded.training
    assert all(p.device.type == "cpu" and p.requires_grad for p in loaded.parameters())
    for k, v in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 1, 32, 40)
    with torch.inference_mode():
        assert torch.equal(loaded(x), encoder.eval()(x))
    # Overwriting is atomic and leaves a single file.
    save_checkpoint(path, AudioNTT2020(n_mels=32, d=64), FRONTEND, None, None)
    assert load_checkpoint(path)[1]["encoder"]["name"] == "AudioNTT2020"
    assert sorted(os.listdir(path.parent)) == ["model.safetensors"]


def test_default_frontend_config_matches_contract():
    assert default_frontend_config() == FRONTEND
    json.dumps(default_frontend_config(), allow_nan=False)


# --- errors ------------------------------------------------------------------------------------------------------

def write_tampered(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint with its byola metadata rewritten by ``edit(meta) -> meta or str``."""
    from safetensors import safe_open
    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["byola"])
    new = edit(meta)
    save_file(load_file(src), dst, metadata={"byola": new if isinstance(new, str) else json.dumps(new)})
    return dst


@pytest.fixture
def ckpt(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, AudioNTT2020(d=128), FRONTEND, {"mean": 0.0, "std": 1.0}, {"source": "test"})
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda m: m | {"encoder": {"name": "Wav2Vec9", "params": {}}}, "unknown encoder 'Wav2Vec9'.*AudioNTT2020"),
    (lambda m: m | {"format_version": FORMAT_VERSION + 1}, "newer"),
    (lambda m: m | {"encoder": {"name": "AudioNTT2020", "params": {"d": 256}}}, r"shape mismatch fc\.0\.weight"),
    (lambda m: m | {"encoder": {"name": "AudioNTT2020", "params": {"d": 10 ** 9}}}, "shape mismatch"),  # no 4 TB alloc
    (lambda m: m | {"encoder": {"name": "AudioNTT2020", "params": {"width": 3}}}, "cannot build AudioNTT2020"),
    (lambda m: m | {"encoder": {"name": "AudioNTT2022", "params": {}}}, r"unexpected tensors \['features\.8"),
    (lambda m: {k: v for k, v in m.items() if k != "frontend"}, "lacks frontend"),
    (lambda m: m | {"norm_stats": {"mean": 0.0, "std": -1.0}}, "norm_stats"),
    (lambda m: "{not json", "not valid JSON"),
])
def test_tampered_metadata(ckpt, tmp_path, edit, message):
    bad = write_tampered(ckpt, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(bad)
    assert str(bad) in str(e.value)


def test_safetensors_without_metadata(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file(AudioNTT2020(d=64).state_dict(), path)
    with pytest.raises(CheckpointError, match="without byola metadata"):
        load_checkpoint(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(100))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
    torch.save(official_state(1, 512), tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match="byola convert"):
        load_checkpoint(tmp_path / "official.pth")


class _Payload:
    """Unpickling this object creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"features.0.weight": _Payload(marker)}, f, protocol=2)
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))  # the payload does work when unpickled
    assert (tmp_path / "control").exists()
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="not a PyTorch state dict"):
        load_official_state_dict(evil)
    with pytest.raises(CheckpointError):
        convert_official(evil, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_official_loader_rejects_other_state_dicts(tmp_path):
    sd = official_state(1, 512)
    cases = {
        "extra.pth": sd | {"projector.0.weight": torch.zeros(2, 2)},
        "two_prefixes.pth": {"online." + k: v for k, v in sd.items()} | {"target." + k: v for k, v in sd.items()},
        "not_dict.pth": [torch.zeros(1)],
        "no_fc.pth": {k: v for k, v in sd.items() if not k.startswith("fc.")},
    }
    messages = {"extra.pth": "outside features./fc.", "two_prefixes.pth": "several prefixes",
                "not_dict.pth": "not a state dict", "no_fc.pth": "no fc.0.weight"}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=messages[name]):
            load_official_state_dict(tmp_path / name)
    bad_shape = sd | {"fc.3.weight": torch.zeros(512, 100)}
    torch.save(bad_shape, tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch fc\.3\.weight"):
        convert_official(tmp_path / "bad_shape.pth", tmp_path / "x.safetensors")


def test_save_rejects_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "a.safetensors", torch.nn.Linear(2, 2), FRONTEND)
    with pytest.raises(ValueError, match="std"):
        save_checkpoint(tmp_path / "a.safetensors", AudioNTT2020(d=64), FRONTEND, {"mean": 0.0})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "a.safetensors", AudioNTT2020(d=64), FRONTEND | {"eps": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_format_1_files_read_as_format_2(tmp_path: Path) -> None:
    """Format 2 has a top-level modality; format 1 files (images kept it inside frontend) load unchanged."""
    from byola.checkpoint import load_checkpoint, save_checkpoint
    from byola.models import build_encoder

    assert FORMAT_VERSION == 2
    for encoder, frontend, modality in ((AudioNTT2020(n_mels=32, d=64), FRONTEND | {"n_mels": 32}, "audio"),
                                        (build_encoder("small_cnn", channels=[4, 8]), {"size": [8, 8]}, "image")):
        v1 = {"format_version": 1, "encoder": encoder.config(), "norm_stats": None, "provenance": {},
              "frontend": frontend | ({"modality": "image"} if modality == "image" else {})}
        old = tmp_path / f"v1-{modality}.safetensors"
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, old,
                  metadata={"byola": json.dumps(v1)})
        _, meta = load_checkpoint(old)
        assert (meta["modality"], meta["frontend"]) == (modality, frontend)
        new = tmp_path / f"v2-{modality}.safetensors"
        save_checkpoint(new, encoder, frontend, None, {}, modality=modality)
        _, meta2 = load_checkpoint(new)
        assert (meta2["format_version"], meta2["modality"], meta2["frontend"]) == (2, modality, frontend)
    with pytest.raises(ValueError, match="modality argument"):
        save_checkpoint(tmp_path / "x.safetensors", encoder, {"modality": "image"})


@pytest.mark.parametrize("start", [b"\x80", b"PK"])
def test_load_any_tells_a_byola_file_from_a_torch_file_by_its_header(tmp_path, start):
    """A safetensors file starts with the length of its JSON header (8 bytes, little-endian), so it may start like
    a pickle (0x80) or a zip file ("PK"): such a byola checkpoint was read as an official .pth file, which dropped
    its normalization statistics (and recorded librosa as its frontend)."""
    from byola.checkpoint import load_any

    encoder, path = AudioNTT2020(n_mels=64, d=64), tmp_path / "model.safetensors"

    def save(pad: int) -> int:  # the header's length grows by one byte per character of the provenance
        save_checkpoint(path, encoder, FRONTEND, {"mean": -6.0, "std": 5.0}, {"pad": "x" * pad})
        return int.from_bytes(path.read_bytes()[:8], "little")

    length = save(0)
    target = int.from_bytes(start, "little")
    target += -(-(length - target) // 256**len(start)) * 256**len(start)  # the first length >= ours that starts so
    save(target - length)
    assert path.read_bytes().startswith(start)
    meta = load_any(path)[1]
    assert meta["norm_stats"] == {"mean": -6.0, "std": 5.0} and meta["frontend"] == load_checkpoint(path)[1]["frontend"]


def test_convert_refuses_what_is_not_an_official_file(tmp_path):
    """A byola checkpoint given to convert was written out again with wrong metadata (no statistics, the v1
    backend, official provenance); a text file gave torch's six-line unpickling message."""
    ckpt = tmp_path / "mine.safetensors"
    save_checkpoint(ckpt, AudioNTT2020(d=64), FRONTEND, {"mean": -5.0, "std": 4.0}, {"source": "test"})
    with pytest.raises(CheckpointError, match=r"mine.safetensors: already a byola checkpoint: nothing to convert"):
        convert_official(ckpt, tmp_path / "x.safetensors")
    text = tmp_path / "notes.pth"
    text.write_text("# notes\n" * 50)
    with pytest.raises(CheckpointError, match=r"notes.pth: not a PyTorch state dict \(UnpicklingError: ") as err:
        convert_official(text, tmp_path / "x.safetensors")
    assert "\n" not in str(err.value) and len(str(err.value)) < 200
    assert not (tmp_path / "x.safetensors").exists()
