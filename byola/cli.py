"""The `byola` command line (python-fire): embed | pretrain | evaluate | prepare | convert | stats.

Each command imports what it needs when it runs, so `byola --help` stays fast. Commands exit non-zero on failure.
"""
from __future__ import annotations

import sys
from pathlib import Path

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
              frames: bool = False, device: str = "cpu", batch_size: int = 64, num_workers: int | None = None,
              norm_stats: str | None = None, frontend_backend: str = "torchaudio", compile: bool = False,
              precision: str = "fp32", progress: bool = True) -> None:
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
            num_workers: worker processes decoding audio (default: one per CPU core on CPU, where they also run
                the model on one thread each, 2 with a GPU); 0 runs everything in this process.
            norm_stats: MEAN,STD pre-normalization statistics; for checkpoints that carry none (converted official
                weights), they are otherwise computed exactly from the inputs in a first pass.
            frontend_backend: log-mel backend: torchaudio (default; equal to the others within 4e-4 nats and the
                fastest on CPU), nnaudio, librosa, or "checkpoint" for the one the model was trained with.
            compile: torch.compile the encoder (worth it for long jobs of equal-length clips).
            precision: fp32 (exact, default), bf16 (encoder under bf16 autocast; slower on CPUs without native
                bf16, with a warning) or auto (bf16 only on a CUDA GPU or CPU with native bf16).
            progress: show a progress bar.
        """
        from .decoded import DecodedWaves
        from .embed import collect_inputs, load

        if not inputs:
            raise SystemExit("byola embed: give at least one input file, folder or list")
        try:
            files = collect_inputs(inputs)
        except FileNotFoundError as err:
            raise SystemExit(f"byola embed: {err}")
        if not files:
            raise SystemExit("byola embed: no audio files found in the inputs")
        embedder = load(checkpoint, device=device, norm_stats=_parse_stats(norm_stats),
                        frontend_backend=None if frontend_backend == "checkpoint" else frontend_backend,
                        compile=compile, precision=precision)
        with DecodedWaves() as decoded:  # the statistics pass keeps what it decodes for the embedding pass
            if embedder.norm_stats is None:
                print(f"checkpoint has no normalization statistics: computing them from the {len(files)} inputs",
                      file=sys.stderr)
                stats = embedder.fit_norm_stats(files, keep=decoded)
                print(f"normalization statistics: mean={stats.mean:.6f} std={stats.std:.6f}", file=sys.stderr)
            summary = embedder.embed_files(files, out, batch_size=batch_size, frames=frames,
                                           num_workers=num_workers, progress=progress, decoded=decoded)
        print(f"{summary.ok} embedded, {summary.failed} failed ({summary.skipped} already done) -> {summary.out}",
              file=sys.stderr)
        if summary.failed:
            raise SystemExit(1)

    def pretrain(self, *data: str, recipe: str = "byola_v2", out: str = "runs/byola", resume: bool = False,
                 **overrides) -> None:
        """Pretrain an encoder with BYOL-A on your audio (or a BYOL variant on images, with an image recipe).

        Writes RUN/model.safetensors (usable with `byola embed --checkpoint`), periodic checkpoints, RUN/log.csv
        and RUN/config.yaml. Several processes: `torchrun --nproc_per_node N -m byola pretrain ...`.

        Args:
            data: folders (recursive), audio files and .txt/.lst path lists; for image recipes, an image folder
                (one subfolder per class, or unlabeled) or the CIFAR-10/STL-10 root.
            recipe: a recipe name in recipes/ (byola_v1, byola_v2, tribyola, byol_cifar10, ...) or a YAML file.
            out: the run folder.
            resume: continue an interrupted run from its newest checkpoint.
            overrides: recipe values, e.g. --optim.lr=1e-4 --train.batch_size=64 --model.d=512.
        """
        from .pretrain import pretrain

        if not data:
            raise SystemExit("byola pretrain: give at least one data folder, file or list")
        model = pretrain(list(data), recipe, out, resume=resume, **overrides)
        print(f"model written to {model}", file=sys.stderr)

    def evaluate(self, *tasks: str, checkpoint: str | None = None, out: str = "byola_eval", baselines: bool = False,
                 probe: str = "linear", seeds: int = 3, data_root: str | None = None, unit_sec: float | None = None,
                 device: str = "cpu", batch_size: int = 64, num_workers: int = 1, fold_norm: bool = True,
                 cache_dir: str | None = None, precision: str = "fp32", progress: bool = True) -> None:
        """Score frozen embeddings on downstream tasks; writes OUT/results.csv, OUT/results.md and confusion plots.

        Args:
            tasks: built-in task names (see evaluation/README.md) or metadata CSV paths.
            checkpoint: the model to evaluate; default: the model shipped in pretrained/.
            out: report folder (embeddings are cached in OUT/cache and reused on rerun).
            baselines: also score a randomly initialized encoder of the same architecture and log-mel statistics.
            probe: linear, mlp or knn.
            seeds: number of probe seeds (mean ± std reported).
            data_root: folder holding the built-in tasks' prepared data (default $BYOLA_DATA or ./data).
            unit_sec: clip duration for CSV tasks without a spec (built-in tasks have their own).
            device: torch device for the encoder.
            batch_size: clips per encoder batch.
            num_workers: DataLoader workers decoding audio.
            fold_norm: normalization statistics from each fold's training clips (EVAR's protocol); False keeps the
                checkpoint's own.
            cache_dir: where embeddings are cached (default OUT/cache); share it between reports to reuse them.
            precision: fp32 (exact, default), bf16 or auto (bf16 only where native), as for embed.
            progress: show progress bars.
        """
        from .embed import load
        from .evaluation.embedders import LogMelStatsEmbedder, ModelEmbedder
        from .evaluation.run import evaluate
        from .precision import precision_name

        if not tasks:
            raise SystemExit("byola evaluate: name at least one task or metadata CSV")

        def model_factory(random_init: int | None = None):
            def factory() -> ModelEmbedder:
                model = load(checkpoint, device=device, random_init=random_init, precision=precision)
                if not fold_norm and model.norm_stats is None:
                    raise SystemExit("byola evaluate: --fold_norm False needs a checkpoint with statistics")
                name = model.checkpoint_id if random_init is not None else \
                    f"{Path(model.checkpoint_path).stem}@{model.checkpoint_id[7:19]}"
                if precision_name(model.compute_dtype) != "fp32":  # cached embeddings are per precision
                    name += f"+{precision_name(model.compute_dtype)}"
                return ModelEmbedder(model, name=name, fold_norm=fold_norm, batch_size=batch_size)
            return factory

        extra = {"random-init": model_factory(random_init=0), "logmel-stats": LogMelStatsEmbedder} if baselines else {}
        evaluate(list(tasks), model_factory(), out, baselines=extra, data_root=data_root, unit_sec=unit_sec,
                           seeds=tuple(range(seeds)), probe=probe, batch_size=batch_size, num_workers=num_workers,
                           cache_dir=cache_dir, progress=progress)
        print((Path(out) / "results.md").read_text())

    def prepare(self, task: str, src: str, out: str, num_workers: int = 2, **options) -> None:
        """Turn a dataset's official folder layout into a metadata CSV (and 16 kHz copies where needed).

        Args:
            task: esc50, us8k, spcv2, vc1, voxforge, cremad, gtzan, nsynth or fsd50k.
            src: the dataset as downloaded.
            out: output folder (OUT/<task>.csv).
            num_workers: processes converting audio.
            options: dataset-specific options (gtzan: --split_dir; cremad: --seed).
        """
        from .evaluation.prepare import prepare

        csv = prepare(task, src, out, num_workers=num_workers, **options)
        print(f"wrote {csv}", file=sys.stderr)

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
    """Console entry point. Keeps freed memory in the process heap (`byola.runtime.keep_freed_memory`): every
    command here allocates large tensors over and over, which glibc would otherwise map and page-fault anew."""
    from .runtime import keep_freed_memory

    keep_freed_memory()
    fire.Fire(Commands, name="byola")


if __name__ == "__main__":
    main()
