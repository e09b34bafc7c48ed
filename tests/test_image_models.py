"""Image encoders (torchvision ResNets, small CNN), BN-free encoder configs, and the LARS optimizer."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from byola.checkpoint import load_checkpoint, save_checkpoint
from byola.layers import WSConv2d, has_batchnorm
from byola.engine.optim import LARS
from byola.models import ENCODERS, ResNet18CIFAR, build_encoder


def test_resnet18_cifar_stem_and_shape() -> None:
    enc = build_encoder("resnet18_cifar")
    assert isinstance(enc, ResNet18CIFAR) and enc.embed_dim == 512
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1) and isinstance(enc.maxpool, nn.Identity)
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    # A 32 px input keeps 32 px after the stem (stride 1, no max-pool), so layer4 sees 4x4.
    stem = enc.relu(enc.bn1(enc.conv1(torch.randn(1, 3, 32, 32))))
    assert enc.layer4(enc.layer3(enc.layer2(enc.layer1(enc.maxpool(stem))))).shape[-2:] == (4, 4)


@pytest.mark.parametrize(("name", "reference", "dim"), [("resnet18", resnet18, 512), ("resnet50", resnet50, 2048)])
def test_imagenet_resnets_keep_torchvision_keys(name: str, reference, dim: int) -> None:
    enc = build_encoder(name)
    assert enc.embed_dim == dim and enc.conv1.kernel_size == (7, 7) and isinstance(enc.maxpool, nn.MaxPool2d)
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, dim)
    ref = {k: v.shape for k, v in reference().state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in enc.state_dict().items()} == ref


def test_small_cnn_and_bad_input() -> None:
    enc = build_encoder("small_cnn", channels=[8, 16], in_channels=1)
    assert enc.embed_dim == 16 and enc(torch.randn(3, 1, 8, 8)).shape == (3, 16)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        enc(torch.randn(3, 3, 8, 8))
    assert {"resnet18_cifar", "resnet18", "resnet50", "small_cnn", "AudioNTT2020"} <= set(ENCODERS)


def test_config_round_trip_through_a_checkpoint(tmp_path) -> None:
    """A BN-free encoder (GroupNorm + weight standardization, its group count) records them in its config and
    reloads exactly."""
    for params in ({}, {"backbone_norm": "gn", "weight_standardization": True}, {"backbone_norm": "none"},
                   {"backbone_norm": "gn", "norm_groups": 2}):
        torch.manual_seed(0)
        enc = build_encoder("small_cnn", channels=[8, 16], **params)
        assert has_batchnorm(enc) == (not params)
        assert any(isinstance(m, WSConv2d) for m in enc.modules()) == bool(params.get("weight_standardization"))
        groups = {m.num_groups for m in enc.modules() if isinstance(m, torch.nn.GroupNorm)}
        assert groups == ({2} if "norm_groups" in params else {4, 8} if params.get("backbone_norm") == "gn" else set())
        path = tmp_path / f"m{len(params)}.safetensors"
        save_checkpoint(path, enc, {}, modality="image")
        loaded, meta = load_checkpoint(path)
        assert meta["encoder"] == enc.config()
        assert str(loaded) == str(enc)
        x = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(loaded(x), enc.eval()(x))


def test_lars_step_matches_the_formula() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    gw, gb = torch.randn(4, 3), torch.randn(4)
    w0, b0 = w.detach().clone(), b.detach().clone()
    lr, wd, eta, m = 0.5, 1e-2, 1e-3, 0.9
    opt = LARS([w, b], lr=lr, momentum=m, weight_decay=wd, eta=eta)
    for _ in range(2):
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
    # Step 1 from w0; step 2 from w1 with the momentum buffer.
    trust0 = eta * w0.norm() / (gw.norm() + wd * w0.norm())
    d0 = trust0 * (gw + wd * w0)
    w1 = w0 - lr * d0
    trust1 = eta * w1.norm() / (gw.norm() + wd * w1.norm())
    w2 = w1 - lr * (m * d0 + trust1 * (gw + wd * w1))
    torch.testing.assert_close(w.detach(), w2)
    # 1-D tensors (biases, norms): plain momentum SGD without weight decay.
    torch.testing.assert_close(b.detach(), b0 - lr * gb - lr * (m * gb + gb))
    with pytest.raises(ValueError, match="LARS"):
        LARS([w], lr=0.0)


def test_lars_clip_caps_the_local_rate() -> None:
    w = torch.ones(2, 2, requires_grad=True)
    w.grad = torch.full((2, 2), 1e-6)                       # tiny gradient: huge trust ratio
    LARS([w], lr=0.1, momentum=0.0, eta=1.0, clip_lr=True).step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 1.0 - 0.1 * 1e-6))


def test_build_method_records_the_bnfree_conversion() -> None:
    """An encoder built with the method's backbone options (build_encoder converts, build_method only checks) has a
    config that says so, so its checkpoint rebuilds the BN-free architecture."""
    from byola.engine import build_method, get_method

    torch.manual_seed(0)
    enc = build_encoder("small_cnn", channels=[8, 16], **get_method("byol_bnfree", norm_groups=2).backbone_options())
    build_method("byol_bnfree", enc, enc.embed_dim, projector_hidden=16, projector_dim=8, predictor_hidden=16,
                 norm_groups=2)
    params = enc.config()["params"]
    assert (params["backbone_norm"], params["weight_standardization"], params["norm_groups"]) == ("gn", True, 2)
    rebuilt = build_encoder("small_cnn", **params)
    assert str(rebuilt) == str(enc) and not has_batchnorm(rebuilt)


def test_build_method_never_modifies_the_encoder_it_is_given() -> None:
    """Issue 12 item 3: an encoder built for another norm ('ln') handed to a 'gn' method used to be converted a
    second time (plain convolutions became WS) and its config rewritten to 'gn' while the network held
    GroupNorm(1, C): a checkpoint then rebuilt a different network. build_method now refuses, naming the setting,
    and leaves the encoder as it was."""
    from byola.engine import build_method

    enc = build_encoder("small_cnn", channels=[8, 16], backbone_norm="ln")
    types, config = [type(m) for m in enc.modules()], enc.config()
    with pytest.raises(ValueError, match="backbone_norm"):
        build_method("byol_bnfree", enc, enc.embed_dim, projector_hidden=16, projector_dim=8, predictor_hidden=16)
    assert [type(m) for m in enc.modules()] == types and enc.config() == config


def test_every_method_encoder_rebuilds_from_its_exported_config() -> None:
    """For every registry method: the encoder built with the method's backbone options, trained inside the
    method, is rebuilt from its exported config with the same module types, loads strictly and gives the same
    outputs."""
    from byola.engine import METHODS, build_method

    x = torch.randn(4, 3, 8, 8)
    for name, spec in METHODS.items():
        torch.manual_seed(0)
        enc = build_encoder("small_cnn", channels=[8, 16], **spec.backbone_options())
        method = build_method(name, enc, enc.embed_dim, projector_hidden=16, projector_dim=8, predictor_hidden=16)
        assert method.encoder is enc
        cfg = enc.config()
        rebuilt = build_encoder(cfg["name"], **cfg["params"])
        assert [type(m) for m in rebuilt.modules()] == [type(m) for m in enc.modules()], name
        rebuilt.load_state_dict(enc.state_dict(), strict=True)
        torch.testing.assert_close(rebuilt.eval()(x), enc.eval()(x), msg=name)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_implements_the_encoder_protocol(name: str) -> None:
    """forward pools frame_embeddings (audio: max + mean over time; images: mean over positions); config()
    rebuilds the encoder."""
    from byola.models import Encoder

    small = {"AudioNTT2020": {"n_mels": 16, "d": 32, "conv_channels": 4},
             "AudioNTT2022": {"n_mels": 16, "d": 48, "mlp_hidden_d": 16, "conv_channels": 4}}
    torch.manual_seed(0)
    enc = build_encoder(name, **small.get(name, {})).eval()
    assert isinstance(enc, Encoder)
    x = torch.randn(2, 1, 16, 24) if name in small else torch.randn(2, 3, 32, 32)
    frames = enc.frame_embeddings(x)
    assert frames.dim() == 3 and frames.shape[0] == 2 and frames.shape[2] == enc.embed_dim
    pooled = frames.amax(dim=1) + frames.mean(dim=1) if name in small else frames.mean(dim=1)
    torch.testing.assert_close(enc(x), pooled)
    assert type(build_encoder(**{"name": enc.config()["name"], **enc.config()["params"]})) is type(enc)
