"""The `byola` command line (python-fire): embed | pretrain | evaluate | convert | prepare | stats.

Each command imports what it needs when it runs, so `byola --help` stays fast. Commands exit non-zero on failure.
"""
from __future__ import annotations

import sys

import fire


def _parse_stats(norm_stats: str | tuple | list | None) -> tuple[float, float] | None:
    """`MEAN,STD` (fire may already have parsed it into a tuple) → (mean, std)."""
    if norm_stats is None:
        return None
    parts = norm_stats.split(",") if isinstance(norm_stats, str) else list(norm_stats)
    if len(parts) != 2:
        raise SystemExit(f"--norm_stats expects MEAN,STD, got {norm_stats!r}")
    mean, std = float(parts[0]), float(parts[1])
    if not std > 0:
        raise SystemExit(f"--norm_stats: std must be positive, got {std}")
    return mean, std


class Commands:
    """byola: BYOL for Audio — embed audio files, pretrain on your corpus, evaluate on downstream tasks."""

    def embed(self, *inputs: str, checkpoint: str | None = None, out: str = "byola_embeddings",
              frames: bool = False, device: str = "cpu", batch_size: int = 64, num_workers: int = 1,
              norm_stats: str | None = None, progress: bool = True) -> None:
        """Embed audio files, folders (recursive) and text files listing paths.

        Writes OUT/embeddings.npy (float32, one row per embedded file) and OUT/index.csv
        (file,row,status,error,duration_s). Rerunning on the same OUT skips finished files. Exits 1 if any failed.

        Args:
            inputs: files, folders and .txt/.lst path lists.
            checkpoint: a byola .safetensors checkpoint; default: the model shipped in pretrained/.
            out: output folder.
            frames: also write frame-level embeddings with timestamps (OUT/frames/*.npz).
            device: torch device, e.g. cpu or cuda.
            batch_size: files per encoder batch.
            num_workers: DataLoader workers decoding audio.
            norm_stats: MEAN,STD pre-normalization statistics; for checkpoints that carry none (converted official
                weights), they are otherwise computed exactly from the inputs in a first pass.
            progress: show a progress bar.
        """
        from .embed import collect_inputs, load

        if not inputs:
            raise SystemExit("byola embed: give at least one input file, folder or list")
        try:
            files = collect_inputs(inputs)
        except FileNotFoundError as err:
            raise SystemExit(f"byola embed: {err}")
        if not files:
            raise SystemExit("byola embed: no audio files found in the inputs")
        embedder = load(checkpoint, device=device, norm_stats=_parse_stats(norm_stats))
        if embedder.norm_stats is None:
            print(f"checkpoint has no normalization statistics: computing them from the {len(files)} inputs",
                  file=sys.stderr)
            stats = embedder.fit_norm_stats(files)
            print(f"normalization statistics: mean={stats.mean:.6f} std={stats.std:.6f}", file=sys.stderr)
        summary = embedder.embed_files(files, out, batch_size=batch_size, frames=frames, num_workers=num_workers,
                                       progress=progress)
        print(f"{summary.ok} embedded, {summary.failed} failed ({summary.skipped} already done) -> {summary.out}",
              file=sys.stderr)
        if summary.failed:
            raise SystemExit(1)

    def convert(self, src: str, dst: str, norm_stats: str | None = None) -> None:
        """Convert an official BYOL-A .pth (v1 AudioNTT2020 or v2 AudioNTT2022) into a byola checkpoint.

        Args:
            src: the official file.
            dst: the .safetensors file to write.
            norm_stats: optional MEAN,STD to store in the checkpoint (official files carry none).
        """
        from .checkpoint import convert_official
        from .norm import NormStats

        stats = _parse_stats(norm_stats)
        meta = convert_official(src, dst, norm_stats=NormStats(stats[0], stats[1], 0) if stats else None)
        print(f"wrote {dst}: {meta['encoder']['name']} {meta['encoder']['params']}, "
              f"frontend backend {meta['frontend']['backend']}", file=sys.stderr)

    def stats(self, *inputs: str, checkpoint: str | None = None) -> None:
        """Print exact log-mel normalization statistics (MEAN,STD) of audio inputs with a checkpoint's frontend."""
        from .embed import collect_inputs, load

        embedder = load(checkpoint, norm_stats=(0.0, 1.0))
        stats = embedder.fit_norm_stats(collect_inputs(inputs))
        print(f"{stats.mean!r},{stats.std!r}")


def main() -> None:
    """Console entry point."""
    fire.Fire(Commands, name="byola")


if __name__ == "__main__":
    main()
