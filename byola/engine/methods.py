"""The one registry of BYOL-family methods: what differs between methods is declared, not coded.

A :class:`MethodSpec` declares the views (how many, from which augmentation pipeline), the target networks
and their update rule, the view pairs and their weights, the predictor, the head and backbone normalization,
extra loss terms and default model settings. :func:`build_method` turns a spec and an encoder into a
:class:`~byola.engine.byol.BYOL`. Adding a method means adding a ``METHODS`` entry.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .byol import BYOL, BYOL_PAIRS, Pair
from ..layers import NORMS, has_batchnorm
from .losses import LossTerm
from .predictors import PREDICTORS


@dataclass(frozen=True)
class MethodSpec:
    """Declared configuration of one method.

    Attributes:
        name, description, reference: identification (reference: the paper it follows).
        view_augmentations: one entry per view: the index of the augmentation pipeline that makes it (BYOL's
            asymmetric image augmentations: 0 and 1; TriBYOL: v1 from the first, v2 and v3 from the second).
            The data pipeline reads this; ``len(view_augmentations)`` is the number of views.
        n_targets, pairs, pair_weights, target_update: see :class:`BYOL`.
        predictor, predictor_params: predictor kind (``PREDICTORS``) and its keyword arguments.
        head_norm: projector/predictor normalization.
        backbone_norm: replace the encoder's BatchNorm layers by this norm (``None``: leave the encoder as is).
        weight_standardization: replace the encoder's Conv2d layers by weight-standardized ones.
        norm_groups: the largest GroupNorm group count in the backbone (``backbone_norm="gn"``; each layer takes
            the largest divisor of its width up to this, ``byola.layers.group_count``). 32 is Wu & He's (2018) default;
            narrow backbones do better with fewer (the digits recipe's small CNN uses 4, docs/variants.md).
        extra_losses: extra :class:`LossTerm` s.
        defaults: default :class:`BYOL` keyword arguments for this method (e.g. BYOL-A's constant τ).
    """

    name: str
    description: str
    reference: str = "Grill et al., NeurIPS 2020 (BYOL)"
    view_augmentations: tuple[int, ...] = (0, 1)
    n_targets: int = 1
    pairs: tuple[Pair, ...] = BYOL_PAIRS
    pair_weights: tuple[float, ...] | None = None
    target_update: str = "all"
    predictor: str = "mlp"
    predictor_params: dict[str, Any] = field(default_factory=dict)
    head_norm: str = "bn"
    backbone_norm: str | None = None
    weight_standardization: bool = False
    norm_groups: int = 32
    extra_losses: tuple[LossTerm, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.predictor not in PREDICTORS:
            raise ValueError(f"{self.name}: unknown predictor {self.predictor!r}")
        for norm in (self.head_norm, self.backbone_norm):
            if norm is not None and norm not in NORMS:
                raise ValueError(f"{self.name}: norm must be one of {NORMS}, got {norm!r}")
        if self.norm_groups < 1:
            raise ValueError(f"{self.name}: norm_groups must be positive, got {self.norm_groups}")
        n_views = 1 + max(max(ov, tv) for ov, _, tv in self.pairs)
        if n_views != len(self.view_augmentations):
            raise ValueError(f"{self.name}: pairs use {n_views} views, view_augmentations declares "
                             f"{len(self.view_augmentations)}")

    @property
    def n_views(self) -> int:
        return len(self.view_augmentations)

    def backbone_options(self) -> dict[str, Any]:
        """The encoder settings this method needs, as keyword arguments of :func:`byola.models.build_encoder` (or
        :func:`byola.layers.convert_backbone` for an unregistered encoder): empty when the encoder stays as built."""
        norm = None if self.backbone_norm in (None, "bn") else self.backbone_norm
        if norm is None and not self.weight_standardization:
            return {}
        options: dict[str, Any] = {"backbone_norm": norm, "weight_standardization": self.weight_standardization}
        if norm == "gn":
            options["norm_groups"] = self.norm_groups
        return options

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for run metadata)."""
        out = dataclasses.asdict(self)
        out["extra_losses"] = [term.to_dict() for term in self.extra_losses]
        out["pairs"] = [list(pair) for pair in self.pairs]
        return out


def _closed_form(kind: str, description: str, **params: Any) -> MethodSpec:
    return MethodSpec(name=f"byol_{kind}", description=description, predictor=kind, predictor_params=params,
                      reference="Richemond et al., ICML 2023 (The Edge of Orthogonality)")


_SLR = "Self-Labeling Refinement (2022)"
# BN-free training settings (ours, measured on the digits benchmark, docs/variants.md). Per-sample norms (GN, LN)
# start the network next to the collapsed solution: every image gets nearly the same embedding and projection
# (pairwise cosine 0.97-1.0 vs 0.3 with BatchNorm heads), and BYOL's loss goes to 0 within 300 steps. Three
# remedies, each a BYOL argument: data_init (norm affines set from the first batch so that they start as BatchNorm
# would, after Richemond et al. 2020's argument that BN-free BYOL needs a well-scaled initialization),
# head_weight_standardization (zero-mean head weights ignore the per-sample mean of the post-ReLU embedding, the
# component all inputs share) and predictor_lr_scale 10 (DirectPred, Tian et al. 2021: a faster predictor).
_BNFREE = {"data_init": True, "head_weight_standardization": True, "predictor_lr_scale": 10.0}

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in [
    MethodSpec("byol", "BYOL: symmetric loss, one EMA target, MLP predictor, cosine tau schedule"),
    MethodSpec("byola", "BYOL-A: BYOL with a constant tau (0.99)", reference="Niizumi et al., IJCNN 2021 (BYOL-A)",
               view_augmentations=(0, 0), defaults={"tau_schedule": "constant", "tau_base": 0.99}),
    MethodSpec("tribyol", "TriBYOL: one online, two targets updated alternately, three views; the average of "
               "the symmetric losses on (v1, v2) with target 1 and (v1, v3) with target 2",
               reference="Li et al., ICASSP 2022 (TriBYOL)", view_augmentations=(0, 1, 1), n_targets=2,
               pairs=((0, 0, 1), (1, 0, 0), (0, 1, 2), (2, 1, 0)), pair_weights=(0.5, 0.5, 0.5, 0.5),
               target_update="alternate"),
    _closed_form("lstsq", "least-squares predictor (Σ + αI)⁻¹C"),
    _closed_form("neumann", "Neumann-expansion predictor (2C − (Σ/λ)C)/λ, λ = max eigenvalue of Σ"),
    _closed_form("directpred", "DirectPred: normalized square roots of the EMA(Σ) eigenvalues + ε"),
    _closed_form("directcopy", "DirectCopy: EMA(Σ)/‖EMA(Σ)‖ + εI"),
    _closed_form("visser", "Visser iteration toward √Σ"),
    _closed_form("newton_schulz", "Newton–Schulz √Σ, n = 9"),
    _closed_form("ns2", "two-stage Newton–Schulz (≈ Σ^¼), n = 7 + 7"),
    _closed_form("stiefel", "Stiefel predictor B_nΣᵀ/‖B_n‖_F"),
    # Weight 0.3 (ours): with weight 1 the extra pull cancelled BYOL's gain in the digits benchmark.
    MethodSpec("byol_ccsl", "BYOL + 0.3 × cross-cosine similarity loss (θ⁺ 0.8, θ⁻ 0.2)", reference=_SLR,
               extra_losses=(LossTerm("ccsl", 0.3),)),
    MethodSpec("byol_cssl", "BYOL + 0.3 × cross-sigmoid similarity loss (θ⁺ 0.8, θ⁻ 0.2, center 0.5, T 0.1)",
               reference=_SLR, extra_losses=(LossTerm("cssl", 0.3),)),
    MethodSpec("byol_bnfree", "BN-free BYOL: GroupNorm in heads and backbone, weight-standardized convolutions "
               "and head linears, data-dependent norm init, predictor learning rate x10", reference=_SLR,
               head_norm="gn", backbone_norm="gn", weight_standardization=True, defaults=_BNFREE),
    # Ours: the closed-form predictor follows the projections' correlation (Tian et al. 2021) and also avoids the
    # collapse, without _BNFREE's init (docs/variants.md).
    MethodSpec("byol_bnfree_directpred", "BN-free BYOL (GroupNorm + weight standardization) with the DirectPred "
               "closed-form predictor", reference=_SLR, head_norm="gn", backbone_norm="gn",
               weight_standardization=True, predictor="directpred"),
    # Weight-standardized convolutions as with GroupNorm (Qiao et al. 2019 pair WS with GN and LN): without them
    # the digits benchmark gave 0.897 over 3 seeds (below the BatchNorm random init, 0.904), with them 0.922.
    MethodSpec("byol_bnfree_ln", "BN-free BYOL: LayerNorm in heads and backbone (GroupNorm(1, C) in convs), "
               "weight-standardized convolutions and head linears, data-dependent norm init, predictor learning "
               "rate x10", reference=_SLR, head_norm="ln", backbone_norm="ln", weight_standardization=True,
               defaults=_BNFREE),
    # An ablation: with no normalization layer there is no affine for data_init to set, and it collapses on the
    # digits benchmark (docs/variants.md).
    MethodSpec("byol_bnfree_none", "ablation: BYOL without any normalization layer (weight-standardized head "
               "linears, predictor learning rate x10)", reference=_SLR, head_norm="none", backbone_norm="none",
               defaults={**_BNFREE, "data_init": False}),
]}

_SPEC_FIELDS = {f.name for f in dataclasses.fields(MethodSpec)} - {"name", "description", "reference", "defaults"}
_BYOL_ARGS = set(inspect.signature(BYOL.__init__).parameters) - {"self", "encoder", "embed_dim"}
METHOD_KEYS = frozenset(_SPEC_FIELDS | _BYOL_ARGS)  # what a method configuration may set (build_method's overrides)


def get_method(name: str, **overrides: Any) -> MethodSpec:
    """``METHODS[name]`` with spec fields in ``overrides`` replaced (others are rejected); ``predictor_params`` is
    merged into the spec's when the predictor kind is unchanged."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    unknown = set(overrides) - _SPEC_FIELDS
    if unknown:
        raise ValueError(f"not MethodSpec fields: {sorted(unknown)}")
    spec = METHODS[name]
    if "predictor_params" in overrides and overrides.get("predictor", spec.predictor) == spec.predictor:
        overrides["predictor_params"] = {**spec.predictor_params, **overrides["predictor_params"]}
    if "extra_losses" in overrides:
        overrides["extra_losses"] = tuple(t if isinstance(t, LossTerm) else LossTerm(**t)
                                          for t in overrides["extra_losses"])
    for key in ("pairs", "pair_weights", "view_augmentations"):
        if overrides.get(key) is not None:
            overrides[key] = tuple(tuple(x) if isinstance(x, list) else x for x in overrides[key])
    return dataclasses.replace(spec, **overrides) if overrides else spec


def method_spec_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a method configuration that override :class:`MethodSpec` fields (for `get_method`)."""
    return {k: v for k, v in config.items() if k in _SPEC_FIELDS}


def build_method(name: str, encoder: nn.Module, embed_dim: int, **overrides: Any) -> BYOL:
    """Build method ``name`` around ``encoder``.

    ``overrides`` may set any :class:`MethodSpec` field (``predictor_params`` is merged into the spec's when the
    predictor kind is unchanged) and any
    other :class:`BYOL` keyword (``projector_hidden``, ``projector_dim``, ``predictor_hidden``, ``tau_base``,
    ``tau_schedule``, ``target_mode``), which take precedence over the spec's ``defaults``. ``encoder`` is used as
    given, never modified: when the spec sets ``backbone_norm`` or ``weight_standardization``, build it with
    ``build_encoder(name, **spec.backbone_options())``; an encoder that does not match raises ``ValueError``.
    """
    unknown = set(overrides) - METHOD_KEYS
    if unknown:
        raise ValueError(f"unknown overrides for {name!r}: {sorted(unknown)}")
    spec = get_method(name, **method_spec_overrides(overrides))
    _check_backbone(spec, encoder)
    kwargs = {**spec.defaults, **{k: v for k, v in overrides.items() if k in _BYOL_ARGS and k not in _SPEC_FIELDS}}
    return BYOL(encoder, embed_dim, predictor=spec.predictor, predictor_params=dict(spec.predictor_params),
                head_norm=spec.head_norm, n_targets=spec.n_targets, pairs=spec.pairs,
                pair_weights=spec.pair_weights, extra_losses=spec.extra_losses, target_update=spec.target_update,
                **kwargs)


def _check_backbone(spec: MethodSpec, encoder: nn.Module) -> None:
    """Raise ``ValueError`` unless ``encoder`` is what ``spec.backbone_options()`` builds: compared with the settings
    its ``config()`` records (registered encoders), else with its layers (no BatchNorm, no plain Conv2d)."""
    wanted = spec.backbone_options()
    if not wanted:
        return
    config = getattr(encoder, "config", None)
    if callable(config):
        params = config()["params"]
        have = {k: params.get(k) for k in wanted}
        have["weight_standardization"] = bool(have["weight_standardization"])
        ok = have == wanted
    else:
        have = {"batchnorm layers": has_batchnorm(encoder),
                "plain Conv2d layers": any(type(m) is nn.Conv2d for m in encoder.modules())}
        ok = not ((wanted["backbone_norm"] is not None and have["batchnorm layers"])
                  or (wanted["weight_standardization"] and have["plain Conv2d layers"]))
    if not ok:
        raise ValueError(f"{spec.name} needs an encoder built with {wanted}, this one has {have}: build it with "
                         f"build_encoder(name, **get_method({spec.name!r}).backbone_options()) "
                         f"(byola.layers.convert_backbone for an unregistered encoder)")


__all__ = ["MethodSpec", "METHODS", "get_method", "method_spec_overrides", "build_method"]
