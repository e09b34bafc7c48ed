"""BN-free BYOL training aids: data-dependent norm init, weight-standardized head linears, predictor lr scale."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from byola.engine import METHODS, MLP, build_method
from byola.engine.heads import affine_norms, calibrate_norms
from byola.layers import WSLinear, convert_backbone, replace_batchnorm, standardize_convs
from byola.engine.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(projector_hidden=32, projector_dim=16, predictor_hidden=32)


def conv_encoder() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net


def images(b: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 6, 6, generator=g) * 2 + 1


def record_outputs(layers: list[nn.Module]) -> tuple[dict[int, torch.Tensor], list]:
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, i, o: seen.__setitem__(id(mod), o.detach().clone()))
               for m in layers]
    return seen, handles


@pytest.mark.parametrize("norm", ["gn", "ln"])
def test_calibrate_norms_standardizes_every_norm_output_per_channel(norm: str) -> None:
    torch.manual_seed(0)
    enc = standardize_convs(replace_batchnorm(conv_encoder(), norm))
    head = MLP(16, 256, 8, norm=norm)  # GN: 32 groups of 8
    x = images()
    layers = affine_norms([enc, head])
    assert len(layers) == 3
    with torch.no_grad():
        before = head(enc(x))
        with calibrate_norms([enc, head]) as n:
            inside = head(enc(x))
        seen, handles = record_outputs(layers)
        after = head(enc(x))
    for h in handles:
        h.remove()
    assert n == 3
    assert not torch.allclose(before, after)
    torch.testing.assert_close(inside, after, atol=1e-4, rtol=1e-3)  # the affine fold reproduces the hook's output
    for layer in layers:
        y = seen[id(layer)]
        dims = [0, *range(2, y.dim())]
        torch.testing.assert_close(y.mean(dims), torch.zeros(y.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(y.var(dims, unbiased=False), torch.ones(y.shape[1]), atol=1e-2, rtol=0)


def test_calibrate_norms_only_centres_a_constant_channel() -> None:
    norm = nn.GroupNorm(1, 2)
    x = torch.tensor([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]])  # per-sample norm: always [1, -1]
    with torch.no_grad(), calibrate_norms([norm]):
        y = norm(x)
    torch.testing.assert_close(y, torch.zeros(3, 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.weight, torch.ones(2))


def test_calibrate_norms_sets_each_layer_once_and_removes_its_hooks() -> None:
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 4)
    x = torch.randn(10, 4, 3) * 3 + 2
    with torch.no_grad(), calibrate_norms([norm]):
        norm(x)
        w = norm.weight.clone()
        norm(x * 5 + 1)  # a second call inside the block changes nothing
        torch.testing.assert_close(norm.weight, w)
    assert not norm._forward_hooks


def test_wslinear_ignores_the_per_sample_mean_and_keeps_linear_keys() -> None:
    torch.manual_seed(0)
    layer = WSLinear(6, 4)
    x = torch.randn(5, 6)
    shifted = x + torch.randn(5, 1) * 10
    torch.testing.assert_close(layer(shifted), layer(x), atol=1e-4, rtol=1e-4)
    assert set(layer.state_dict()) == set(nn.Linear(6, 4).state_dict())
    mlp = MLP(6, 8, 4, norm="gn", weight_standardization=True)
    assert [type(m) for m in mlp.net if isinstance(m, nn.Linear)] == [WSLinear, WSLinear]


def byol_bnfree(**overrides) -> nn.Module:
    torch.manual_seed(0)
    encoder = convert_backbone(conv_encoder(), **METHODS["byol_bnfree"].backbone_options())
    return build_method("byol_bnfree", encoder, 16, **{**SMALL, **overrides})


def test_data_init_runs_on_the_first_training_forward_only_and_copies_into_the_target() -> None:
    m = byol_bnfree()
    assert m.data_init and not bool(m.data_init_done)
    m.eval()
    m([images(), images(seed=1)])  # evaluation never initializes
    assert not bool(m.data_init_done)
    gamma = m.online.projector.net[1].weight.clone()
    m.train()
    m([images(), images(seed=1)])
    assert bool(m.data_init_done)
    assert not torch.allclose(m.online.projector.net[1].weight, gamma)
    for (k, v), (_, t) in zip(m.online.state_dict().items(), m.targets[0].state_dict().items()):
        torch.testing.assert_close(v, t, msg=k)
    gamma = m.online.projector.net[1].weight.clone()
    m([images(seed=2), images(seed=3)])
    torch.testing.assert_close(m.online.projector.net[1].weight, gamma)
    assert "data_init_done" in m.state_dict()  # resume does not initialize again


def test_bnfree_start_is_not_collapsed() -> None:
    """The projections of different inputs start far apart with data_init, nearly parallel without it."""
    def mean_cos(m: nn.Module, x: torch.Tensor) -> float:
        z = nn.functional.normalize(m.online(x), dim=1)
        s = z @ z.T
        return float((s.sum() - s.diagonal().sum()) / (len(z) ** 2 - len(z)))

    x = images(64)
    plain = byol_bnfree(data_init=False, head_weight_standardization=False).train()
    init = byol_bnfree().train()
    with torch.no_grad():
        init.initialize_from_data([x[:32], x[32:]])
        assert mean_cos(init, x) < 0.5 < 0.9 < mean_cos(plain, x)


def test_parameter_groups_cover_every_trainable_parameter_once() -> None:
    m = byol_bnfree()
    groups = m.parameter_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in m.parameters() if p.requires_grad])
    assert groups[1]["lr_scale"] == 10.0 and {id(p) for p in groups[1]["params"]} == {
        id(p) for p in m.predictor.parameters()}
    encoder = convert_backbone(conv_encoder(), **METHODS["byol_bnfree_directpred"].backbone_options())
    closed = build_method("byol_bnfree_directpred", encoder, 16, **SMALL)
    assert len(closed.parameter_groups()) == 1  # a closed-form predictor has no parameters


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return images(1, seed=i)[0]


def test_trainer_scales_the_predictor_learning_rate(tmp_path: Path) -> None:
    m = byol_bnfree(predictor_lr_scale=4.0)
    trainer = Trainer(m, lambda p: torch.optim.SGD(p, lr=0.1), _Data(), lambda b: [b, b.flip(-1)], tmp_path,
                      batch_size=4, steps=1, lr_schedule="constant", progress=False, device="cpu")
    trainer.fit()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.1, 0.4])
    assert bool(m.data_init_done)


def test_bnfree_registry_declares_the_training_aids() -> None:
    for name in ("byol_bnfree", "byol_bnfree_ln"):
        assert METHODS[name].defaults == {"data_init": True, "head_weight_standardization": True,
                                          "predictor_lr_scale": 10.0}
    assert METHODS["byol_bnfree_none"].defaults["data_init"] is False
