"""BYOL-A encoders: shapes, official parameter layout, frame/layer outputs, registry, inference rewrite."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from byola.models import ENCODERS, AudioNTT2020, AudioNTT2022, build_encoder, optimize_for_inference
from byola.models.inference import fold_batchnorm, pool_before_relu

V1_KEYS = [f"features.{i}.{p}" for i in (0, 4, 8) for p in ("weight", "bias")] + [
    f"features.{i}.{p}" for i in (1, 5, 9)
    for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")] + [
    f"fc.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
V2_KEYS = [k for k in V1_KEYS if not k.startswith(("features.8.", "features.9."))]


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


def mels(b: int = 2, f: int = 64, t: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1, f, t, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d", [512, 1024, 2048])
def test_v1_shapes_and_layout(d):
    model = AudioNTT2020(d=d).eval()
    sd = model.state_dict()
    assert sorted(sd) == sorted(V1_KEYS)
    assert sd["features.0.weight"].shape == (64, 1, 3, 3) and sd["features.8.weight"].shape == (64, 64, 3, 3)
    assert sd["fc.0.weight"].shape == (d, 64 * 8) and sd["fc.3.weight"].shape == (d, d)
    x = mels(3, t=101)
    assert model(x).shape == (3, d)
    assert model.frame_embeddings(x).shape == (3, 101 // 8, d)
    assert model.frame_hop == 8 and model.embed_dim == d


def test_v2_shapes_and_layout():
    model = AudioNTT2022().eval()
    sd = model.state_dict()
    assert sorted(sd) == sorted(V2_KEYS)
    assert sd["fc.0.weight"].shape == (2048, 1024) and sd["fc.3.weight"].shape == (2048, 2048)
    x = mels(3, t=101)
    assert model(x).shape == (3, 3072)
    assert model.frame_embeddings(x).shape == (3, 101 // 4, 3072)
    assert model.frame_hop == 4 and model.embed_dim == 3072
    small = AudioNTT2022(n_mels=32, d=1024, mlp_hidden_d=256)
    assert small.state_dict()["fc.3.weight"].shape == (1024 - 512, 256)
    assert small.eval()(mels(2, f=32)).shape == (2, 1024)


@pytest.mark.parametrize("cls", [AudioNTT2020, AudioNTT2022])
def test_clip_is_max_plus_mean_of_frames_and_3d_input(cls):
    model = cls().eval()
    x = mels(2, t=48)
    frames = model.frame_embeddings(x)
    assert torch.allclose(model(x), frames.max(dim=1).values + frames.mean(dim=1), atol=1e-6)
    assert torch.equal(model(x[:, 0]), model(x))


def reference_frames_v1(model: AudioNTT2020, x: torch.Tensor) -> torch.Tensor:
    """Frames by explicit loops over time and mel bins: frame t is the concatenation over mel bins f of the
    64-channel vector at (f, t), fed to the MLP (the order official fc.0 weights expect)."""
    conv = model.features(x)  # [B, C, F', T']
    b, c, f, t = conv.shape
    frames = torch.stack([torch.cat([conv[:, :, fi, ti] for fi in range(f)], dim=1) for ti in range(t)], dim=1)
    return model.fc(frames)


def test_flatten_order_is_mel_major_channel_minor():
    model = randomize_bn(AudioNTT2020(d=64)).eval()
    x = mels(2, t=33)
    assert torch.allclose(model.frame_embeddings(x), reference_frames_v1(model, x), atol=1e-6)


def test_v1_layer_features():
    model = AudioNTT2020(d=256).eval()
    x = mels(2, t=64)
    layers = model.layer_features(x)
    assert [tuple(t.shape) for t in layers] == [(2, 32, 2048), (2, 16, 1024), (2, 8, 512), (2, 8, 256), (2, 8, 256)]
    assert model.layer_dims == (2048, 1024, 512, 256, 256) and model.layer_hops == (2, 4, 8, 8, 8)
    assert torch.equal(layers[-1], model.frame_embeddings(x))
    assert torch.equal(layers[0], model.features[:4](x).permute(0, 3, 2, 1).reshape(2, 32, -1))


def test_v2_layer_features_and_stacking():
    model = AudioNTT2022().eval()
    x = mels(2, t=64)
    layers = model.layer_features(x)
    assert [tuple(t.shape) for t in layers] == [(2, 32, 2048), (2, 16, 1024), (2, 16, 2048), (2, 16, 3072)]
    assert model.layer_dims == (2048, 1024, 2048, 3072) and model.layer_hops == (2, 4, 4, 4)
    frames = model.frame_embeddings(x)
    assert torch.equal(layers[-1], frames)
    # The frame embedding starts with the flattened conv features, then the MLP output.
    assert torch.equal(frames[..., :1024], layers[1])
    assert torch.equal(frames[..., 1024:], model.fc(layers[1]))


@pytest.mark.parametrize("name,params", [("AudioNTT2020", {"d": 1024}), ("AudioNTT2022", {"n_mels": 32, "d": 640})])
def test_registry_round_trip(name, params):
    model = build_encoder(name, **params)
    cfg = model.config()
    assert cfg["name"] == name and set(ENCODERS) >= {"AudioNTT2020", "AudioNTT2022"}
    clone = build_encoder(cfg["name"], **cfg["params"])
    assert clone.config() == cfg
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_unknown_encoder_lists_known_names():
    with pytest.raises(ValueError, match="AudioNTT2020.*AudioNTT2022"):
        build_encoder("ResNet9000")


def test_bad_inputs():
    model = AudioNTT2020().eval()
    with pytest.raises(ValueError, match=r"\[B, 1, 64, T\]"):
        model(torch.randn(2, 1, 80, 96))
    with pytest.raises(ValueError, match=r"\[B, 1, 64, T\]"):
        model(torch.randn(2, 2, 64, 96))
    with pytest.raises(ValueError, match="at least 8 time frames"):
        model(torch.randn(2, 1, 64, 7))
    with pytest.raises(ValueError, match="d > conv feature dim 1024"):
        AudioNTT2022(d=1024)


def test_fold_and_swap_rewrite_structure():
    model = AudioNTT2020()
    rewritten = optimize_for_inference(model)
    assert not rewritten.training and not any(p.requires_grad for p in rewritten.parameters())
    assert [type(m).__name__ for m in rewritten.features[:4]] == ["Conv2d", "Identity", "MaxPool2d", "ReLU"]
    assert rewritten.features[4].weight.is_contiguous(memory_format=torch.channels_last)
    # The original is untouched.
    assert sorted(model.state_dict()) == sorted(V1_KEYS) and model.training
    assert fold_batchnorm(AudioNTT2022().eval()) == 2 and pool_before_relu(AudioNTT2022()) == 2
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(AudioNTT2022())


@pytest.mark.parametrize("cls", [AudioNTT2020, AudioNTT2022])
@pytest.mark.parametrize("options", [{}, {"channels_last": False}, {"reorder_pool": False, "fold_bn": False},
                                     {"micro_batch": 3}])
def test_optimized_matches_plain(cls, options):
    model = randomize_bn(cls(n_mels=32, d=1024 if cls is AudioNTT2022 else 128)).eval()
    fast = optimize_for_inference(model, **options)
    x = mels(4, f=32, t=75)
    with torch.inference_mode():
        for a, b in [(model(x), fast(x)), (model.frame_embeddings(x), fast.frame_embeddings(x))] + list(
                zip(model.layer_features(x), fast.layer_features(x))):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    assert fast.frame_hop == model.frame_hop and fast.config() == model.config()


def test_micro_batch_is_validated_and_leaves_original_alone():
    model = AudioNTT2020(d=64)
    assert optimize_for_inference(model, micro_batch=8).micro_batch == 8 and model.micro_batch is None
    with pytest.raises(ValueError, match="micro_batch"):
        optimize_for_inference(model, micro_batch=0)


def test_channels_last_propagates_through_convs():
    fast = optimize_for_inference(AudioNTT2020(d=64))
    with torch.inference_mode():
        out = fast.features[:3](mels(2, t=16))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


@pytest.mark.slow
def test_compiled_matches_plain():
    model = randomize_bn(AudioNTT2020(n_mels=32, d=64)).eval()
    fast = optimize_for_inference(model, compile=True)
    x = mels(2, f=32, t=40)
    with torch.inference_mode():
        ref, got = model.frame_embeddings(x), fast.frame_embeddings(x)
    assert (ref - got).abs().max() <= 1e-4 * ref.abs().max()
    assert list(fast.state_dict())[0] == "features.0.weight"  # compiled in place: no _orig_mod prefix
