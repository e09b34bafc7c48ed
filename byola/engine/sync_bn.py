"""Batch normalization with statistics over the batches of all processes (the BYOL paper's synchronized BN).

:func:`convert_sync_batchnorm` turns every BatchNorm layer of a module into :class:`SyncBatchNorm` (same parameters,
buffers and state-dict keys, so checkpoints and exports are unchanged). Under ``torch.distributed`` with more than one
process, a training-mode forward normalizes with the mean and variance of the union of every process's batch, and the
gradient flows back through those statistics to every process's inputs: ``P`` processes with batch ``B`` compute the
same function as one process with batch ``P * B``.

On CUDA (and the other devices torch's kernels serve) the layer is :class:`torch.nn.SyncBatchNorm`. Its fused
kernels (``batch_norm_stats`` and friends) have no CPU implementation, and its forward refuses CPU tensors, so on other
devices (a CPU cluster, gloo; the tests) the same statistics are computed here: each process's per-channel count, mean
and centred sum of squares are all-reduced in one differentiable collective (``torch.distributed.nn.functional``) and
merged exactly (Chan et al.'s parallel variance), the numerically stable counterpart of torch's kernels.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]

# Device types torch.nn.SyncBatchNorm's forward accepts (see its source); others take the all-reduce path below.
_TORCH_DEVICES = ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name())


def _global_moments(x: torch.Tensor, group: dist.ProcessGroup | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (dim 1) mean, biased variance and count over ``x`` of every process, differentiable. One
    all-reduce of a ``[world_size, 2C + 1]`` table where each process fills its own row (an all-gather that
    autograd and every backend support)."""
    dims = [d for d in range(x.dim()) if d != 1]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
    row = torch.cat([mean, var * count, count])
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    table = row.new_zeros(world, row.numel()).index_copy(0, torch.tensor([rank], device=x.device), row[None])
    table = dist_fn.all_reduce(table, group=group or dist.group.WORLD)
    c = x.shape[1]
    means, m2s, counts = table[:, :c], table[:, c:2 * c], table[:, 2 * c:]
    total = counts.sum()
    mean_all = (counts * means).sum(0) / total
    m2_all = m2s.sum(0) + (counts * (means - mean_all) ** 2).sum(0)
    return mean_all, m2_all / total, total


class SyncBatchNorm(nn.SyncBatchNorm):
    """:class:`torch.nn.SyncBatchNorm` on the devices its kernels serve; on others (CPU), the same synchronized
    statistics computed with one differentiable all-reduce (see the module docstring). Without an initialized
    process group, with one process or in eval mode it is plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if (not self.training or group is None or dist.get_world_size(group) == 1
                or x.device.type in _TORCH_DEVICES):
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
    """Replace every BatchNorm layer (1d/2d/3d, any subclass of ``_BatchNorm``) of ``module`` by
    :class:`SyncBatchNorm` in place, keeping its parameter objects (an optimizer built before stays valid), buffers
    and training mode; returns ``module`` (or the new layer when ``module`` itself is a BatchNorm). Torch's
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` does the same but builds torch's class, which refuses CPU tensors."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        layer = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
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

