"""The modality-free BYOL engine on a tiny MLP encoder and random data."""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byola.engine import (
    BYOL, METHODS, MLP, LossTerm, build_method, byol_loss, cross_cosine_loss, cross_sigmoid_loss, get_method,
    make_norm, tau_at,
)
from byola.layers import WSConv2d, convert_backbone, group_count, has_batchnorm, replace_batchnorm, standardize_convs
from byola.engine.losses import cross_similarity

IN, EMB = 8, 12
SMALL = dict(projector_hidden=32, projector_dim=16, predictor_hidden=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def encoder() -> nn.Module:
    return nn.Sequential(nn.Linear(IN, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, EMB))


def conv_encoder() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, EMB))


def views(n: int = 2, b: int = 10, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, IN, generator=g) for _ in range(n)]


def model(**kwargs) -> BYOL:
    torch.manual_seed(0)
    return BYOL(encoder(), EMB, **{**SMALL, **kwargs})


def perturb_online(m: BYOL) -> None:
    with torch.no_grad():
        for p in m.online.parameters():
            p.add_(torch.randn_like(p))


# --- losses -----------------------------------------------------------------------------------------------------

def test_byol_loss_values():
    z = torch.randn(5, 7)
    assert byol_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(z, -3 * z).item() == pytest.approx(4.0, abs=1e-6)  # opposite, scale-invariant
    e = torch.eye(4)
    assert byol_loss(e[:2], e[2:]).item() == pytest.approx(2.0, abs=1e-6)  # orthogonal
    p, q = torch.randn(6, 7), torch.randn(6, 7)
    assert byol_loss(p, q).item() == pytest.approx(byol_loss(q, p).item(), abs=1e-6)
    expected = (2 - 2 * F.cosine_similarity(p, q, dim=-1)).mean()
    assert byol_loss(p, q).item() == pytest.approx(expected.item(), abs=1e-6)
    # The symmetric BYOL loss of a model whose two views coincide with opposite vectors: 4 + 4.
    assert (byol_loss(z, -z) + byol_loss(-z, z)).item() == pytest.approx(8.0, abs=1e-5)


def test_byol_loss_detaches_target_and_checks_shapes():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    with pytest.raises(ValueError):
        byol_loss(torch.randn(4, 3), torch.randn(4, 5))


def unit_rows(cos: list[float]) -> torch.Tensor:
    """Row 0 = e0; row k = cos_k·e0 + sin_k·e_k (so cos(row0, row k) = cos_k, other pairs cos_j·cos_k)."""
    n = len(cos) + 1
    rows = torch.zeros(n, n)
    rows[0, 0] = 1
    for k, c in enumerate(cos, start=1):
        rows[k, 0], rows[k, k] = c, math.sqrt(1 - c * c)
    return rows


def test_ccsl_selects_pairs_by_threshold():
    z = unit_rows([0.9, 0.1])  # cos01 = .9, cos02 = .1, cos12 = .09
    sim = cross_similarity(z, z)
    assert sim[0, 1].item() == pytest.approx(0.9) and sim[1, 2].item() == pytest.approx(0.09)
    # Only the (0,1) and (1,0) pairs are above θ⁺; the others are below θ⁻ and ignored.
    assert cross_cosine_loss(z, z).item() == pytest.approx(2 - 2 * 0.9, abs=1e-5)
    assert cross_cosine_loss(z, z, ramp=False).item() == pytest.approx(2 - 2 * 0.9, abs=1e-5)
    # In-between pair (0.5): linear ramp weight (0.5 − 0.2)/0.6 = 0.5, or ignored without the ramp.
    z = unit_rows([0.9, 0.5])  # cos12 = 0.45 → weight 0.41667
    w = {0.9: 1.0, 0.5: 0.5, 0.45: 0.25 / 0.6}
    num = sum(2 * wt * (2 - 2 * s) for s, wt in w.items())
    assert cross_cosine_loss(z, z).item() == pytest.approx(num / (2 * sum(w.values())), abs=1e-5)
    assert cross_cosine_loss(z, z, ramp=False).item() == pytest.approx(2 - 2 * 0.9, abs=1e-5)


def test_ccsl_and_cssl_zero_when_no_pair_is_similar():
    z = torch.eye(4)
    p = torch.eye(4, requires_grad=True)
    loss = cross_cosine_loss(p, z) + cross_sigmoid_loss(p, z)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(p.grad) == 0


def test_cssl_sigmoid_weights():
    z = unit_rows([0.9, 0.5])
    sims = {0.9: None, 0.5: None, 0.45: None}
    w = {s: 1 / (1 + math.exp(-(s - 0.5) / 0.1)) for s in sims}
    num = sum(wt * (2 - 2 * s) for s, wt in w.items())
    assert cross_sigmoid_loss(z, z).item() == pytest.approx(num / sum(w.values()), abs=1e-5)
    # A pair under θ⁻ gets no weight even with a center below it.
    z = unit_rows([0.9, 0.1])
    assert cross_sigmoid_loss(z, z, center=0.0).item() == pytest.approx(2 - 2 * 0.9, abs=1e-5)
    with pytest.raises(ValueError):
        cross_sigmoid_loss(z, z, temperature=0)
    with pytest.raises(ValueError):
        cross_cosine_loss(z, z, theta_pos=0.1, theta_neg=0.2)


def test_cross_losses_pull_similar_pairs_and_detach_target():
    z = unit_rows([0.9, 0.1])
    p = z.clone().requires_grad_(True)
    zt = z.clone().requires_grad_(True)
    cross_cosine_loss(p, zt).backward()
    assert zt.grad is None
    step = p.detach() - 0.1 * p.grad
    assert cross_cosine_loss(step, z).item() < cross_cosine_loss(z, z).item()


def test_loss_term_registry():
    term = LossTerm("ccsl", 0.5, {"theta_pos": 0.7})
    assert term.to_dict() == {"name": "ccsl", "weight": 0.5, "params": {"theta_pos": 0.7}}
    with pytest.raises(ValueError):
        LossTerm("nope")


# --- heads ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["bn", "ln", "gn", "none"])
def test_mlp_norms(norm):
    mlp = MLP(6, 20, 4, norm=norm)
    assert mlp(torch.randn(3, 6)).shape == (3, 4)
    kinds = {"bn": nn.BatchNorm1d, "ln": nn.LayerNorm, "gn": nn.GroupNorm, "none": nn.Identity}
    assert isinstance(mlp.net[1], kinds[norm])
    with pytest.raises(ValueError):
        mlp(torch.randn(3, 5))


def test_norm_helpers():
    assert group_count(64, 32) == 32 and group_count(96, 32) == 32 and group_count(4096) == 32
    assert group_count(16) == 8 and group_count(50) == 25 and group_count(7) == 1 and group_count(1) == 1
    assert group_count(16, min_channels=1) == 16 and group_count(20, 32, 4) == 5
    assert make_norm("gn", 4096).num_groups == 32
    with pytest.raises(ValueError):
        make_norm("batch", 8)
    with pytest.raises(ValueError):
        MLP(4, 8, 4, norm="xx")


def test_bn_free_backbone_conversion():
    torch.manual_seed(0)  # the variance check's tolerance depends on the drawn weights (eps 1e-5 in WS)
    enc = conv_encoder()
    x = torch.randn(2, 1, 6, 6)
    plain = enc[0](x)
    standardize_convs(replace_batchnorm(enc, "gn"))
    assert not has_batchnorm(enc) and isinstance(enc[1], nn.GroupNorm) and isinstance(enc[0], WSConv2d)
    w = enc[0].standardized_weight()
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5)
    assert torch.allclose(w.var(dim=(1, 2, 3), unbiased=False), torch.ones(8), atol=1e-3)
    assert torch.allclose(enc[0](x), F.conv2d(x, w, enc[0].bias, padding=1), atol=1e-6)
    assert not torch.allclose(enc[0](x), plain)
    assert isinstance(replace_batchnorm(conv_encoder(), "none")[1], nn.Identity)
    assert replace_batchnorm(conv_encoder(), "ln")[1].num_groups == 1


# --- EMA schedule and target updates ----------------------------------------------------------------------------

def test_tau_schedule_endpoints():
    assert tau_at(0, 100, 0.99) == pytest.approx(0.99)
    assert tau_at(100, 100, 0.99) == pytest.approx(1.0)
    assert tau_at(50, 100, 0.99) == pytest.approx(0.995)
    assert tau_at(250, 100, 0.99) == pytest.approx(1.0)  # clamped
    taus = [tau_at(k, 10, 0.9) for k in range(11)]
    assert taus == sorted(taus)
    assert tau_at(7, 10, 0.99, "constant") == 0.99
    with pytest.raises(ValueError):
        tau_at(0, 10, 0.99, "linear")


def test_target_update_is_exact_ema():
    m = model(tau_base=0.9)
    perturb_online(m)
    old_t = [p.clone() for p in m.targets[0].parameters()]
    online = [p.clone() for p in m.online.parameters()]
    tau = m.update_targets(3, 10)
    assert tau == pytest.approx(tau_at(3, 10, 0.9))
    for t, o, new in zip(old_t, online, m.targets[0].parameters()):
        assert torch.allclose(new, tau * t + (1 - tau) * o, atol=1e-6, rtol=0)
    for a, b in zip(m.online.buffers(), m.targets[0].buffers()):
        assert torch.equal(a, b)
    # τ = 1 at the end of the cosine schedule: targets frozen.
    before = [p.clone() for p in m.targets[0].parameters()]
    assert m.update_targets(10, 10) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, m.targets[0].parameters()))


def test_targets_are_independent_copies_without_gradient():
    m = model(n_targets=2, pairs=[(0, 0, 1), (1, 1, 0)])
    ptrs = [{p.data_ptr() for p in net.parameters()} for net in [m.online, *m.targets]]
    assert all(ptrs[i].isdisjoint(ptrs[j]) for i in range(3) for j in range(i + 1, 3))
    for (a, b) in zip(m.online.state_dict().values(), m.targets[1].state_dict().values()):
        assert torch.equal(a, b)  # initialized as copies
    out = m(views())
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for t in m.targets for p in t.parameters())
    assert all(p.grad is not None for p in m.online.parameters())
    assert all(p.grad is not None for p in m.predictor.parameters())
    assert [(o is m.online, t is m.targets[i]) for i, (o, t) in enumerate(m.momentum_pairs())] == [(True, True)] * 2


def test_tribyol_alternation_updates_one_target_per_step():
    m = build_method("tribyol", encoder(), EMB, **SMALL)
    assert m.target_update == "alternate" and m.n_targets == 2
    for step in range(4):
        perturb_online(m)
        before = [[p.clone() for p in t.parameters()] for t in m.targets]
        m.update_targets(step, 100)
        changed = [any(not torch.equal(a, b) for a, b in zip(old, t.parameters()))
                   for old, t in zip(before, m.targets)]
        assert changed == [step % 2 == 0, step % 2 == 1]
    m_all = build_method("tribyol", encoder(), EMB, target_update="all", **SMALL)
    perturb_online(m_all)
    before = [[p.clone() for p in t.parameters()] for t in m_all.targets]
    m_all.update_targets(0, 100)
    assert all(any(not torch.equal(a, b) for a, b in zip(old, t.parameters()))
               for old, t in zip(before, m_all.targets))


def test_tribyol_loss_is_average_of_two_symmetric_losses():
    m = build_method("tribyol", encoder(), EMB, **SMALL)
    out = m(views(3))
    parts = [out[f"byol/{k}"] for k in ("0-0-1", "1-0-0", "0-1-2", "2-1-0")]
    sym1, sym2 = parts[0] + parts[1], parts[2] + parts[3]
    assert out["loss"].item() == pytest.approx(((sym1 + sym2) / 2).item(), abs=1e-5)
    with pytest.raises(ValueError):
        m(views(2))


def test_symmetric_loss_is_invariant_to_view_order():
    m = model()
    v = views()
    a, b = m(v), m(v[::-1])
    assert a["loss"].item() == pytest.approx(b["loss"].item(), abs=1e-5)
    assert a["byol/0-0-1"].item() == pytest.approx(b["byol/1-0-0"].item(), abs=1e-5)


def test_target_mode_eval_and_train():
    m = model(target_mode="eval")
    m.train()
    assert m.online.training and not any(t.training for t in m.targets)
    m = model()
    m.train()
    assert all(t.training for t in m.targets)
    m.eval()
    assert not any(t.training for t in m.targets)


def test_invalid_configurations():
    with pytest.raises(ValueError):
        model(pairs=[(0, 1, 1)])  # target 1 does not exist
    with pytest.raises(ValueError):
        model(n_targets=2)  # target 1 unused by the default pairs
    with pytest.raises(ValueError):
        model(pair_weights=[1.0])
    with pytest.raises(ValueError):
        model(tau_schedule="step")
    with pytest.raises(ValueError):
        model(target_update="random")
    with pytest.raises(TypeError):
        model(extra_losses=[("ccsl", 1.0)])


def test_training_reduces_loss_on_toy_problem():
    torch.manual_seed(0)
    centers = torch.randn(4, IN) * 2
    m = BYOL(encoder(), EMB, tau_base=0.99, **SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    steps = 60
    for step in range(steps):
        x = centers[torch.randint(0, 4, (32,))]
        out = m([x + 0.3 * torch.randn_like(x), x + 0.3 * torch.randn_like(x)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.update_targets(step, steps)
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first


def test_autocast_forward_returns_float32_loss():
    m = model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(views())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_closed_form_predictor_state_is_checkpointed():
    m = build_method("byol_directpred", encoder(), EMB, **SMALL)
    m(views())
    state = m.state_dict()
    assert {"predictor.matrix", "predictor.sigma", "predictor.calls"} <= set(state)
    fresh = build_method("byol_directpred", encoder(), EMB, **SMALL)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.predictor.matrix, m.predictor.matrix) and fresh.predictor._calls == 1
    assert not torch.equal(m.predictor.matrix, torch.eye(SMALL["projector_dim"]))


# --- registry ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_and_trains_a_step(name):
    spec = METHODS[name]
    torch.manual_seed(0)
    enc = convert_backbone(conv_encoder(), **spec.backbone_options())  # build_method never converts
    m = build_method(name, enc, EMB, **SMALL)
    x = torch.randn(6, 1, 5, 5)
    vs = [x + 0.1 * torch.randn_like(x) for _ in range(spec.n_views)]
    out = m(vs)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    for term in spec.extra_losses:
        assert f"loss_{term.name}" in out
    out["loss"].backward()
    grads = [p.grad for p in m.online.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    torch.optim.SGD(m.parameters(), lr=0.01).step()
    m.update_targets(0, 10)
    assert has_batchnorm(m.encoder) == (spec.backbone_norm in (None, "bn"))
    if spec.weight_standardization:
        assert isinstance(m.encoder[0], WSConv2d)
    json.dumps(spec.to_dict())


def test_build_method_overrides():
    m = build_method("byola", encoder(), EMB, **SMALL)
    assert m.tau_schedule == "constant" and m.tau(5, 10) == 0.99
    m = build_method("byola", encoder(), EMB, tau_schedule="cosine", **SMALL)
    assert m.tau_schedule == "cosine"
    m = build_method("byol_newton_schulz", encoder(), EMB, predictor_params={"update_every": 4}, **SMALL)
    assert m.predictor.n_iter == 9 and m.predictor.update_every == 4
    m = build_method("byol", encoder(), EMB, extra_losses=[{"name": "cssl", "weight": 0.3}], **SMALL)
    assert m.extra_losses[0].weight == 0.3
    assert get_method("byol", head_norm="ln").head_norm == "ln"
    with pytest.raises(ValueError):
        build_method("byol", encoder(), EMB, learning_rate=1.0)
    with pytest.raises(ValueError):
        build_method("nope", encoder(), EMB)


def test_registry_declares_views_consistently():
    for spec in METHODS.values():
        assert spec.n_views == 1 + max(max(ov, tv) for ov, _, tv in spec.pairs)
    assert METHODS["tribyol"].view_augmentations == (0, 1, 1)


def test_engine_imports_nothing_modality_specific():
    forbidden = ("torchaudio", "torchvision", "nnAudio", "librosa", "soundfile", "PIL")
    engine_dir = Path(__file__).resolve().parents[1] / "byola" / "engine"
    for path in engine_dir.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root not in forbidden, f"{path.name} imports {name}"
                # byola modules the engine may use: its own, and modality-free helpers (compute precision, optional
                # extras: TensorBoard logging, file mechanics: atomic writes)
                assert not name.startswith("byola.") or name.split(".")[1] in ("engine", "precision", "extras",
                                                                               "files"), \
                    f"{path.name}: {name}"
