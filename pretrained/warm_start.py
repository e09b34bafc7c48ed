"""`byola pretrain` with the encoder initialized from a byola checkpoint (warm start): the run continues training a
model (e.g. the previous default, `byola_v1_d512_berklee.safetensors`) on new data, with fresh projector, predictor
and optimizer, the target network starting as a copy of the loaded encoder.

    python pretrained/warm_start.py --init runs/byola_v1_d512_berklee/model.safetensors -- \\
        /work/corpus/train_all.txt --recipe pretrained/byola_v1_d512_open.recipe.yaml --out /work/runs/open_v1

Everything after ``--`` is `byola pretrain`'s command line (``--resume`` included: on resume the trainer restores the
saved state over the loaded weights, so the same command continues the run). `byola.pretrain.pretrain` has no
initialization option yet; this script wraps the encoder factory it uses instead of changing the package. Torch runs
on ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn

import byola.recipe
from byola.checkpoint import load_checkpoint


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: warm_start.py [--init CKPT] [--threads N] -- DATA... --recipe R --out RUN [...]")
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--init", default=None, help="byola checkpoint whose encoder weights start the run (default: none, "
                   "a plain `byola pretrain` on --threads threads)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv[:split])
    torch.set_num_threads(args.threads)

    if args.init:
        source, _ = load_checkpoint(args.init)
        # the recipe builds the encoder (once on the meta device to check, then for real)
        build = byola.recipe.build_encoder

        def build_from_init(name: str, **params: Any) -> nn.Module:
            encoder = build(name, **params)
            if next(encoder.parameters()).is_meta:  # the recipe's dry check: nothing to load
                return encoder
            encoder.load_state_dict(source.state_dict())  # strict: the recipe's model must match the checkpoint's
            print(f"encoder initialized from {args.init}", file=sys.stderr)
            return encoder

        byola.recipe.build_encoder = build_from_init
    from byola.cli import main as cli_main
    sys.argv = ["byola", "pretrain", *argv[split + 1:]]
    cli_main()


if __name__ == "__main__":
    main()
