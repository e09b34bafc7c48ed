"""Batch normalization with statistics over the batches of all processes (the BYOL paper's synchronized BN).

:func:`convert_sync_batchnorm` turns every BatchNorm layer of a module into a synchronized one (same parameters,
buffers and state-dict keys, so checkpoints and exports are unchanged). Under ``torch.distributed`` with more than one
process, a training-mode forward normalizes with the mean and variance of the union of every process's batch, and the
gradient flows back through those statistics to every process's inputs: ``P`` processes with batch ``B`` compute the
same function as one process with batch ``P * B``.

On CUDA (and the other devices torch's kernels serve) the layer is :class:`torch.nn.SyncBatchNorm`. Its fused
kernels (``batch_norm_stats`` and friends) have no CPU implementation, its forward refuses CPU tensors and DDP refuses
it in a CPU module, so elsewhere (a CPU cluster with gloo; the tests) the layer is :class:`PortableSyncBatchNorm`: each
process's per-channel count, mean and centred sum of squares are all-reduced in one differentiable collective and
merged exactly (Chan et al.'s parallel variance), as numerically stable as torch's kernels.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["PortableSyncBatchNorm", "convert_sync_batchnorm"]

# Device types torch.nn.SyncBatchNorm's forward accepts (see its source); others get PortableSyncBatchNorm.
_TORCH_DEVICES = ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name())


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: the gradient of a sum is the sum of the gradients. (torch's own,
    ``torch.distributed.nn.functional.all_reduce``, is deprecated; its successor in ``_functional_collectives`` is
    private.)"""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _global_moments(x: torch.Tensor, group: dist.ProcessGroup) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (dim 1) mean, biased variance and count over ``x`` of every process, differentiable. One
    all-reduce of a ``[world_size, 2C + 1]`` table where each process fills its own row (an all-gather that
    autograd and every backend support)."""
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
    row = torch.cat([mean, var * count, count])
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    table = row.new_zeros(world, row.numel()).index_copy(0, torch.tensor([rank], device=x.device), row[None])
    table = _AllReduceSum.apply(table, group)
    c = x.shape[1]
    means, m2s, counts = table[:, :c], table[:, c:2 * c], table[:, 2 * c:]
    total = counts.sum()
    mean_all = (counts * means).sum(0) / total
    m2_all = m2s.sum(0) + (counts * (means - mean_all) ** 2).sum(0)
    return mean_all, m2_all / total, total


class PortableSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input ``[N, C, ...]``) whose training-mode statistics span every process of ``process_group``
    (default: the whole world), computed with one differentiable all-reduce on any device and backend (see the
    module docstring). Without an initialized process group, with one process or in eval mode it is plain
    BatchNorm."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input [N, C, ...], got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(x)
        self._check_input_dim(x)
        xf = x.float()
        mean, var, count = _global_moments(xf, group)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
            with torch.no_grad():  # as F.batch_norm: the running variance is the unbiased one
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every BatchNorm layer (1d/2d/3d, any subclass of ``_BatchNorm``) of ``module`` in place by
    :class:`torch.nn.SyncBatchNorm` when the layer lives on a device torch's kernels serve (CUDA), else by
    :class:`PortableSyncBatchNorm`, keeping its parameter objects (an optimizer built before stays valid), buffers and
    training mode; returns ``module`` (or the new layer when ``module`` itself is a BatchNorm)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (nn.SyncBatchNorm, PortableSyncBatchNorm)):
        state = next(iter(module.buffers()), None) if module.weight is None else module.weight
        if state is not None and state.device.type in _TORCH_DEVICES:
            return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
        layer = PortableSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, process_group)
        if module.affine:
            layer.weight, layer.bias = module.weight, module.bias
        layer.running_mean, layer.running_var = module.running_mean, module.running_var
        layer.num_batches_tracked = module.num_batches_tracked
        layer.train(module.training)
        return layer
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module

