"""The BYOL model: an online network, one or more EMA target networks, and declared view pairs.

Modality-free: the encoder is any ``nn.Module`` mapping a batch of views to ``[B, embed_dim]``.

* Online network: ``encoder → projector (MLP d→4096→256) → predictor`` (trainable MLP 256→4096→256, or a
  closed-form predictor from :mod:`byola.engine.predictors`).
* ``n_targets`` target networks: deep copies of ``encoder → projector`` made at construction, updated only by
  EMA (:meth:`BYOL.update_targets`), never by gradient, sharing no weights with each other.
* Which online view is compared with which target network on which view is declared by ``pairs``, a list of
  ``(online_view, target_index, target_view)`` with optional ``pair_weights``; the loss is
  ``Σ_k weight_k · byol_loss(q(online_view_k), z_target_k(target_view_k))`` plus declared extra terms
  (:class:`~byola.engine.losses.LossTerm`) applied to the same pairs with the same weights. BYOL's symmetric
  loss is ``pairs = [(0, 0, 1), (1, 0, 0)]``; TriBYOL's is
  ``[(0, 0, 1), (1, 0, 0), (0, 1, 2), (2, 1, 0)]`` with weights ½ (the average of two symmetric losses).

Batching: views that share a shape go through a network in one concatenated batch (BatchNorm statistics are
then computed over all of them together, as in common BYOL implementations); otherwise one call per view.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn

from .heads import MLP, calibrate_norms
from .losses import LossTerm, byol_loss
from .predictors import ClosedFormPredictor, build_predictor

Pair = tuple[int, int, int]
BYOL_PAIRS: tuple[Pair, ...] = ((0, 0, 1), (1, 0, 0))
TAU_SCHEDULES = ("cosine", "constant")
TARGET_UPDATES = ("all", "alternate")
TARGET_MODES = ("train", "eval")


def tau_at(step: int, total_steps: int, tau_base: float = 0.99, schedule: str = "cosine") -> float:
    """EMA rate after optimizer step ``step`` of ``total_steps``.

    ``"cosine"`` (BYOL): ``1 − (1 − τ_base)(cos(π·k/K) + 1)/2`` — ``τ_base`` at ``k = 0``, 1 at ``k = K``
    (``k`` clamped to ``[0, K]``). ``"constant"`` (BYOL-A): ``τ_base``.
    """
    if schedule not in TAU_SCHEDULES:
        raise ValueError(f"tau schedule must be one of {TAU_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return float(tau_base)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 for the cosine schedule, got {total_steps}")
    k = min(max(step, 0), total_steps)
    return 1 - (1 - tau_base) * (math.cos(math.pi * k / total_steps) + 1) / 2


def _check_pairs(pairs: Sequence[Pair], n_targets: int) -> tuple[Pair, ...]:
    pairs = tuple(tuple(int(i) for i in pair) for pair in pairs)
    if not pairs:
        raise ValueError("pairs must not be empty")
    for pair in pairs:
        if len(pair) != 3 or min(pair) < 0:
            raise ValueError(f"each pair is (online_view, target_index, target_view) >= 0, got {pair}")
        if pair[1] >= n_targets:
            raise ValueError(f"pair {pair} names target {pair[1]} but n_targets={n_targets}")
    unused = set(range(n_targets)) - {pair[1] for pair in pairs}
    if unused:
        raise ValueError(f"targets {sorted(unused)} are not used by any pair {pairs}")
    return pairs


def _run(net: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """``net`` on each view, in one concatenated batch when the shapes allow."""
    if len(views) > 1 and all(v.shape == views[0].shape for v in views):
        return list(net(torch.cat(views)).chunk(len(views)))
    return [net(v) for v in views]


class BYOL(nn.Module):
    """BYOL with declared view pairs, any number of EMA targets, and pluggable predictor and loss terms.

    Args:
        encoder: backbone, views → ``[B, embed_dim]``.
        embed_dim: encoder output size.
        projector_hidden, projector_dim: projector MLP widths (BYOL: 4096, 256).
        predictor: ``"mlp"`` (trainable, ``projector_dim → predictor_hidden → projector_dim``), a closed-form
            kind from ``byola.engine.predictors.PREDICTORS``, or a ready ``nn.Module``.
        predictor_hidden: hidden width of the MLP predictor.
        predictor_params: extra keyword arguments for the predictor constructor.
        head_norm: normalization in projector and MLP predictor: ``"bn"``, ``"ln"``, ``"gn"``, ``"none"``.
        n_targets: number of target networks.
        pairs: ``(online_view, target_index, target_view)`` triples; default BYOL's symmetric pair.
        pair_weights: one weight per pair (default 1 each).
        extra_losses: :class:`LossTerm` s added to the loss, each applied to every pair with its weight.
        tau_base, tau_schedule: EMA rate, see :func:`tau_at`.
        target_update: ``"all"`` updates every target each step; ``"alternate"`` (TriBYOL) updates only
            target ``step % n_targets``.
        target_mode: ``"train"`` (default, as BYOL: target BatchNorm uses batch statistics) or ``"eval"``
            (target BatchNorm uses running statistics, which are copied from the online network at each update).
            Only matters when the model is in training mode; ``model.eval()`` puts targets in eval mode too.
        data_init: on the first training forward call, set the affine of every GroupNorm/LayerNorm of the online
            network and MLP predictor from that batch (:func:`~byola.engine.heads.calibrate_norms`: per-channel
            batch-standardized outputs, as BatchNorm gives at initialization), then copy the online network into
            the targets. For BN-free variants, whose per-sample norms otherwise start near a collapsed
            (constant) output. Done once: a ``data_init_done`` buffer records it (checkpoints, resume).
        head_weight_standardization: weight-standardized linear layers (:class:`~byola.engine.heads.WSLinear`) in
            the projector and the MLP predictor (BN-free heads).
        predictor_lr_scale: learning-rate multiplier of the trainable predictor's parameters relative to the
            rest (:meth:`parameter_groups`; DirectPred, Tian et al. 2021, trains the predictor faster, e.g. 10×).
    """

    def __init__(self, encoder: nn.Module, embed_dim: int, projector_hidden: int = 4096, projector_dim: int = 256,
                 predictor: str | nn.Module = "mlp", predictor_hidden: int = 4096,
                 predictor_params: dict | None = None, head_norm: str = "bn", n_targets: int = 1,
                 pairs: Sequence[Pair] = BYOL_PAIRS, pair_weights: Sequence[float] | None = None,
                 extra_losses: Iterable[LossTerm] = (), tau_base: float = 0.99, tau_schedule: str = "cosine",
                 target_update: str = "all", target_mode: str = "train", data_init: bool = False,
                 head_weight_standardization: bool = False, predictor_lr_scale: float = 1.0):
        super().__init__()
        if n_targets < 1:
            raise ValueError(f"n_targets must be >= 1, got {n_targets}")
        if not 0 <= tau_base <= 1:
            raise ValueError(f"tau_base must be in [0, 1], got {tau_base}")
        if tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"tau_schedule must be one of {TAU_SCHEDULES}, got {tau_schedule!r}")
        if target_update not in TARGET_UPDATES:
            raise ValueError(f"target_update must be one of {TARGET_UPDATES}, got {target_update!r}")
        if target_mode not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {TARGET_MODES}, got {target_mode!r}")
        self.pairs = _check_pairs(pairs, n_targets)
        weights = [1.0] * len(self.pairs) if pair_weights is None else [float(w) for w in pair_weights]
        if len(weights) != len(self.pairs):
            raise ValueError(f"{len(weights)} pair_weights for {len(self.pairs)} pairs")
        self.pair_weights = tuple(weights)
        self.extra_losses = tuple(extra_losses)
        for term in self.extra_losses:
            if not isinstance(term, LossTerm):
                raise TypeError(f"extra_losses must be LossTerm instances, got {type(term).__name__}")
        self.n_views = 1 + max(max(ov, tv) for ov, _, tv in self.pairs)
        self.online_views = tuple(sorted({ov for ov, _, _ in self.pairs}))
        self.target_views = tuple(tuple(sorted({tv for _, t, tv in self.pairs if t == i})) for i in range(n_targets))
        self.embed_dim, self.projector_dim, self.n_targets = embed_dim, projector_dim, n_targets
        self.tau_base, self.tau_schedule = float(tau_base), tau_schedule
        self.target_update, self.target_mode = target_update, target_mode

        projector = MLP(embed_dim, projector_hidden, projector_dim, norm=head_norm,
                        weight_standardization=head_weight_standardization)
        self.online = nn.Sequential(OrderedDict(encoder=encoder, projector=projector))
        if isinstance(predictor, nn.Module):
            self.predictor = predictor
        else:
            params = dict(predictor_params or {})
            if predictor == "mlp" and head_weight_standardization:
                params["weight_standardization"] = True
            self.predictor = build_predictor(predictor, projector_dim, predictor_hidden, head_norm, **params)
        self.targets = nn.ModuleList(copy.deepcopy(self.online) for _ in range(n_targets))
        for target in self.targets:
            target.requires_grad_(False)
        if predictor_lr_scale <= 0:
            raise ValueError(f"predictor_lr_scale must be positive, got {predictor_lr_scale}")
        self.predictor_lr_scale = float(predictor_lr_scale)
        self.data_init = bool(data_init)
        if self.data_init:
            self.register_buffer("data_init_done", torch.zeros((), dtype=torch.bool))
        self.train(self.training)

    @property
    def encoder(self) -> nn.Module:
        """The online encoder (the network kept after pretraining)."""
        return self.online.encoder

    @property
    def projector(self) -> nn.Module:
        return self.online.projector

    def train(self, mode: bool = True) -> "BYOL":
        super().train(mode)
        if mode and self.target_mode == "eval":
            self.targets.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups: the online network's trainable parameters, then the predictor's with
        ``lr_scale = predictor_lr_scale`` (read by :class:`~byola.engine.trainer.Trainer`); empty groups left out."""
        online = [p for p in self.online.parameters() if p.requires_grad]
        predictor = [p for p in self.predictor.parameters() if p.requires_grad]
        groups = [{"params": online}, {"params": predictor, "lr_scale": self.predictor_lr_scale}]
        return [g for g in groups if g["params"]]

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online_module, target_module)`` for every target: the modules :meth:`update_targets` averages."""
        return [(self.online, target) for target in self.targets]

    def tau(self, step: int, total_steps: int) -> float:
        """EMA rate for ``step`` of ``total_steps`` under this model's schedule."""
        return tau_at(step, total_steps, self.tau_base, self.tau_schedule)

    def targets_to_update(self, step: int) -> list[int]:
        """Indices of the targets that :meth:`update_targets` moves at ``step``."""
        if self.target_update == "alternate":
            return [step % self.n_targets]
        return list(range(self.n_targets))

    @torch.no_grad()
    def update_targets(self, step: int, total_steps: int) -> float:
        """EMA step after optimizer step ``step`` (0-based) of ``total_steps``:
        ``target ← τ·target + (1 − τ)·online`` for every parameter (``torch._foreach_lerp_``, no host sync).
        Buffers (BatchNorm running statistics) are copied from the online network. Returns τ."""
        tau = self.tau(step, total_steps)
        online_params = list(self.online.parameters())
        online_buffers = list(self.online.buffers())
        for index in self.targets_to_update(step):
            target = self.targets[index]
            target_params = list(target.parameters())
            if tau < 1:
                torch._foreach_lerp_(target_params, online_params, 1.0 - tau)
            if online_buffers:
                torch._foreach_copy_(list(target.buffers()), online_buffers)
        return tau

    @torch.no_grad()
    def initialize_from_data(self, views: Sequence[torch.Tensor]) -> int:
        """Data-dependent init (see ``data_init``) on ``views``; returns the number of layers set."""
        online_views = [views[i] for i in self.online_views]
        with calibrate_norms([self.online, self.predictor]) as n_layers:
            z = _run(self.online, online_views)
            if isinstance(self.predictor, MLP):
                self.predictor(torch.cat(z))
        for target in self.targets:
            target.load_state_dict(self.online.state_dict())
        if self.data_init:
            self.data_init_done.fill_(True)
        return n_layers

    def forward(self, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss for a list of already-augmented views (each ``[B, ...]``).

        Returns ``"loss"`` (differentiable) and detached logs: ``"loss_byol"``, ``"loss_<extra term>"``
        (unweighted sums over pairs of each term times the pair weight) and ``"byol/<ov>-<t>-<tv>"`` per pair.
        """
        if len(views) < self.n_views:
            raise ValueError(f"the declared pairs need {self.n_views} views, got {len(views)}")
        if self.data_init and self.training and not bool(self.data_init_done):  # one host sync, first call only
            self.initialize_from_data(views)
        z_online = dict(zip(self.online_views, _run(self.online, [views[i] for i in self.online_views])))
        z_target: dict[tuple[int, int], torch.Tensor] = {}
        with torch.no_grad():
            for t, target in enumerate(self.targets):
                outputs = _run(target, [views[i] for i in self.target_views[t]])
                z_target.update({(t, i): z.detach() for i, z in zip(self.target_views[t], outputs)})

        online_batch = torch.cat([z_online[i] for i in self.online_views])
        if isinstance(self.predictor, ClosedFormPredictor) and self.training:
            self.predictor.update(torch.cat([z_online[ov] for ov, _, _ in self.pairs]),
                                  torch.cat([z_target[(t, tv)] for _, t, tv in self.pairs]))
        p_online = dict(zip(self.online_views, self.predictor(online_batch).chunk(len(self.online_views))))

        out: dict[str, torch.Tensor] = {}
        byol_sum: torch.Tensor | int = 0
        extra_sums: list[torch.Tensor | int] = [0] * len(self.extra_losses)
        for (ov, t, tv), weight in zip(self.pairs, self.pair_weights):
            p, z = p_online[ov], z_target[(t, tv)]
            term = byol_loss(p, z)
            out[f"byol/{ov}-{t}-{tv}"] = term.detach()
            byol_sum = byol_sum + weight * term
            for k, extra in enumerate(self.extra_losses):
                extra_sums[k] = extra_sums[k] + weight * extra(p, z)
        total = byol_sum
        out["loss_byol"] = byol_sum.detach()
        for extra, value in zip(self.extra_losses, extra_sums):
            total = total + extra.weight * value
            out[f"loss_{extra.name}"] = value.detach()
        out["loss"] = total
        return out


__all__ = ["BYOL", "BYOL_PAIRS", "tau_at", "TAU_SCHEDULES", "TARGET_UPDATES", "TARGET_MODES"]
