"""Inference-only rewrites of an encoder that keep its outputs (within float rounding) and its methods."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> int:
    """In place: fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential`` into that
    convolution (eval-mode statistics) and replace it by ``nn.Identity`` so indices stay put. Returns the count."""
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode (it bakes in the running statistics)")
    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


def pool_before_relu(module: nn.Module) -> int:
    """In place: turn every ``ReLU -> MaxPool2d`` pair of an ``nn.Sequential`` into ``MaxPool2d -> ReLU``.

    Exact, since max-pooling commutes with any non-decreasing function; the ReLU then touches a quarter of the
    values. Returns the number of swapped pairs.
    """
    swapped = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.ReLU) and isinstance(seq[i + 1], nn.MaxPool2d):
                seq[i], seq[i + 1] = seq[i + 1], seq[i]
                swapped += 1
    return swapped


def optimize_for_inference(encoder: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                           reorder_pool: bool = True, micro_batch: int | None = None, compile: bool = False,
                           compile_mode: str | None = None) -> nn.Module:
    """An eval-mode copy of ``encoder`` rewritten for fast inference; ``encoder`` itself is left untouched.

    - ``fold_bn``: batch norm folded into the preceding convolutions (``torch.nn.utils.fusion.fuse_conv_bn_eval``).
    - ``channels_last``: weights in channels-last memory format, so oneDNN runs the convolutions (and pooling)
      in NHWC; with one input channel the log-mel input needs no conversion.
    - ``reorder_pool``: max-pool before ReLU (exact, see ``pool_before_relu``).
    - ``micro_batch``: ``frame_embeddings`` (and ``forward``) run larger batches in chunks of this many clips,
      which keeps the large first-block activations in cache (see ``benchmarks/encoder_speed.py``).
    - ``compile``: ``torch.compile`` the conv stack and the MLP in place (``nn.Module.compile``), so
      ``forward``, ``frame_embeddings`` and attributes keep working; the first call of each input shape compiles.

    The copy is for inference only (no training: folded BN has no statistics left to update); its state dict
    differs from the original's.
    """
    model = copy.deepcopy(encoder).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(model)
    if reorder_pool:
        pool_before_relu(model)
    if micro_batch is not None:
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive number of clips, got {micro_batch}")
        model.micro_batch = micro_batch
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        for child in model.children():
            child.compile(mode=compile_mode, dynamic=None)
    return model
