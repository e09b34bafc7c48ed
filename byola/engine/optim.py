"""Optimizers the BYOL recipes use that PyTorch does not ship: LARS.

Written here because torch has no LARS and the common implementations live in large training frameworks
(timm, solo-learn, mmselfsup) that byola does not depend on.
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) on SGD with momentum, as used by BYOL.

    For each parameter tensor ``w`` with gradient ``g``:
    ``trust = eta * ‖w‖ / (‖g‖ + weight_decay * ‖w‖)`` (1 when either norm is 0),
    ``scale = min(trust / lr, 1)`` when ``clip_lr`` (the local rate never exceeds the global one, solo-learn's
    option) else ``trust``;
    ``d = scale * (g + weight_decay * w)``; ``buf = momentum * buf + d``; ``w -= lr * buf``.

    ``exclude_1d`` (default, as BYOL: "biases and batch normalization parameters are excluded from LARS
    adaptation and weight decay"): tensors with at most one dimension take a plain momentum-SGD step, no decay.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, clip_lr: bool = False, exclude_1d: bool = True) -> None:
        if lr <= 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, eta > 0; got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      clip_lr=clip_lr, exclude_1d=exclude_1d))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch.optim.Optimizer's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eta = group["lr"], group["weight_decay"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not (group["exclude_1d"] and p.ndim <= 1):
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / (g_norm + wd * w_norm),
                                        torch.ones_like(w_norm))
                    scale = torch.clamp(trust / lr, max=1.0) if group["clip_lr"] else trust
                    g = (g + wd * p) * scale
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-lr)
        return loss
