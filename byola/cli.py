"""The `byola` command line: embed | evaluate | pretrain | plot | models | convert | stats | prepare.

python-fire dispatches the commands (the methods of :class:`Commands`). Before fire runs, :func:`main` checks the
command line against the command's signature, so that nothing runs on settings the user did not give:

- an unknown or misspelt option is refused before any work (fire itself runs the command with the options it
  understood and complains only afterwards), with a "did you mean" suggestion;
- values are checked against the parameter's type (int, float, bool, str) and handed to fire as Python literals:
  fire would otherwise turn ``--out 2024`` into an int, ``--norm_stats 1,2`` into a tuple, and a ``--frames``
  followed by a file name into ``frames="file.wav"``;
- ``--help``/``-h`` prints our own help, rendered from the docstrings (fire's help lists no commands for a class
  and needs the required arguments first), without importing torch.

Errors a user can fix (:class:`byola.errors.UsageError` and its subclasses, missing files) end in one line and exit
status 2; ``--debug`` or ``BYOLA_DEBUG=1`` shows the traceback. Each command imports what it needs when it runs.

Remaining fire behaviour: values are Python literals (``--seeds 3``, ``--device cuda``, ``--optim.lr=1e-4``);
``--flag=false``/``--noflag`` turn a flag off; pretraining overrides (``--train.steps=20``) and ``prepare``'s
dataset options pass through ``**kwargs`` and are checked by the recipe / the dataset's function before any work.
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
import signal
import shlex
import sys
import textwrap
import warnings
from pathlib import Path

from .errors import UsageError
from .runtime import check_device

_DEBUG_ENV = "BYOLA_DEBUG"
_WIDTH = 100


def _parse_stats(norm_stats: str | None) -> tuple[float, float] | None:
    """`MEAN,STD` → (mean, std)."""
    if norm_stats is None:
        return None
    parts = str(norm_stats).split(",")
    try:
        mean, std = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--norm_stats expects MEAN,STD (two numbers), got {norm_stats!r}",
                         "e.g. --norm_stats -4.5,4.2 (`byola stats INPUT...` prints them)") from None
    if not std > 0:
        raise UsageError(f"--norm_stats: std must be positive, got {std}")
    return mean, std


def _model_ref(model: str | None, checkpoint: str | None, accept_license: bool) -> str | None:
    """The model the user named; resolved (downloaded if needed) now, before torch is imported, so that an unknown
    name or a licence to accept is reported at once."""
    from .hub import resolve

    if model is not None and checkpoint is not None:
        raise UsageError("--model and --checkpoint both given", "pass one of them")
    ref = model if model is not None else checkpoint
    resolve(ref, accept_license=accept_license)
    return ref


def _check_precision(precision: str) -> None:
    from .precision import PRECISIONS

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is not a precision", f"use {', '.join(PRECISIONS)}")


def _check_out_folder(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a folder", "give a folder")


def _check_frontend_backend(backend: str | None) -> None:
    from .frontend import BACKENDS

    if backend is not None and backend not in (*BACKENDS, "checkpoint"):
        raise UsageError(f"--frontend_backend {backend!r} is not a log-mel backend",
                         f"use {', '.join(BACKENDS)} or checkpoint")


def _input_files(inputs) -> list:
    """The audio files of ``inputs`` (files, folders, path lists) by the one input listing; a problem with an
    input is a one-line error."""
    from .embed_job import collect_inputs

    try:
        return collect_inputs(inputs)
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None


def _embed_one_process(embedder, files: list, out: str, progress: bool, job: dict):
    """`byola embed` in one process: normalization statistics from the checkpoint, else those recorded in OUT,
    else computed from the inputs (the waveforms that pass decodes are kept for the embedding pass)."""
    from .decoded import DecodedWaves
    from .embed_job import default_num_workers, recorded_norm_stats
    from .norm import NormStats

    with DecodedWaves() as decoded:
        if embedder.norm_stats is None:
            recorded = recorded_norm_stats(out)
            if recorded:
                embedder.set_norm_stats(NormStats(recorded[0], recorded[1], 0), source="recorded in OUT")
                print(f"checkpoint has no normalization statistics: using those recorded in {out} by its first run "
                      f"(mean={recorded[0]:.6f} std={recorded[1]:.6f})", file=sys.stderr)
            else:
                print(f"checkpoint has no normalization statistics: computing them from the {len(files)} inputs "
                      f"(recorded in {out} and reused when resuming)", file=sys.stderr)
                workers = job["num_workers"]  # the statistics pass: as many worker processes as the embedding pass
                if workers is None:
                    workers = default_num_workers(len(files), job["batch_size"], embedder.device.type == "cpu")
                stats = embedder.fit_norm_stats(files, keep=decoded, progress=progress, num_workers=workers)
                print(f"normalization statistics: mean={stats.mean:.6f} std={stats.std:.6f}", file=sys.stderr)
        return embedder.embed_files(files, out, progress=progress, decoded=decoded, **job)


class Commands:
    """byola: BYOL for Audio — embed audio files, pretrain on your corpus, evaluate on downstream tasks."""

    def __init__(self, command_line: str | None = None):
        self._command_line = command_line  # as typed; evaluate records it (provenance.json, results.md)

    def embed(self, *inputs: str, model: str | None = None, checkpoint: str | None = None,
              out: str = "byola_embeddings", frames: bool = False, frame_hop_ms: float | None = None,
              device: str = "cpu", batch_size: int = 64,
              num_workers: int | None = None, norm_stats: str | None = None, frontend_backend: str | None = None,
              compile: bool = False, precision: str = "fp32", progress: bool = True,
              accept_license: bool = False, format: str = "npy", shard: str | None = None,
              merge: str | None = None) -> None:
        """Embed audio files, folders (recursive) and text files listing paths.

        Writes OUT/embeddings.npy (float32, one row per embedded file), OUT/index.csv
        (file,row,status,error,duration_s; one line per input) and, last, OUT/manifest.json: the folder is
        complete when it exists (`byola.embed.read_embeddings` checks it). Rerunning on the same OUT reuses
        finished files and refuses other settings. Exits 1 if any file failed. Under torchrun, each rank embeds
        a part of the sorted inputs on its own device and rank 0 merges the parts into the same OUT one process
        would write; --shard does one part without torchrun, --merge joins the parts (docs/scaling.md).

        Args:
            inputs: files, folders and .txt/.lst path lists.
            model: a model name from `byola models` (default: the model shipped with byola).
            checkpoint: a byola .safetensors checkpoint or an official BYOL-A .pth file (converted in memory).
            out: output folder.
            frames: also write frame-level embeddings with timestamps (OUT/frames/<absolute input path>.npz).
            frame_hop_ms: with --frames, the frames' hop in ms: a multiple of the model's (80 ms for v1, 40 ms
                for v2); each written frame is the mean of that many model frames (default: the model's hop).
            device: torch device, e.g. cpu or cuda (under torchrun, cuda is cuda:LOCAL_RANK).
            batch_size: files per encoder batch.
            num_workers: worker processes decoding audio; 0 runs everything in this process. Default: on CPU,
                one per core (at most one per chunk of min(batch_size, 32) files), each also running the model on
                one thread; with a GPU, 2; none when the inputs fit in one chunk (one batch with a GPU); under
                torchrun on CPU, the node's cores divided among its ranks.
            norm_stats: MEAN,STD pre-normalization statistics; for checkpoints that carry none (official
                weights), they are otherwise computed exactly from the inputs in a first pass (not in a sharded
                job, which needs them given).
            frontend_backend: log-mel backend: torchaudio (default: byola.frontend.DEFAULT_BACKEND, the same log-mel
                as the others, the fastest on CPU), nnaudio, librosa, or "checkpoint" for the one the model was
                trained with.
            compile: torch.compile the encoder (worth it for long jobs of equal-length clips).
            precision: fp32 (exact, default), bf16 (encoder under bf16 autocast; slower on CPUs without native
                bf16, with a warning) or auto (bf16 only on a CUDA GPU or CPU with native bf16).
            progress: show a progress bar.
            accept_license: accept the licence of a downloaded model (asked once, on first download).
            format: npy (embeddings.npy + index.csv) or parquet (OUT/parquet/part-K-of-N.parquet, one file per
                part, read as one dataset by pandas or pyarrow; needs pip install 'byola[parquet]').
            shard: K/N: embed only part K of N (counted from 0) of the sorted inputs into OUT/parts/, for jobs
                started without torchrun (SLURM job arrays, a loop over machines); then merge with --merge OUT.
            merge: OUT: join the complete parts under OUT/parts into OUT (no inputs); a missing or unfinished part
                is named and nothing is written.

        Examples:
            byola embed examples/ --out emb
            byola embed clips/ list.txt --model byol-a-v1-d2048 --out emb --frames --device cuda
            byola embed clips/ --out emb --frames --frame_hop_ms 160
            byola embed clips/ --checkpoint runs/v2/model.safetensors --out emb
            torchrun --nproc_per_node 8 -m byola embed corpus/ --out emb --device cuda --format parquet
            byola embed corpus/ --out /shared/emb --shard $SLURM_ARRAY_TASK_ID/16
            byola embed --merge /shared/emb
        """
        from .embed_job import check_frame_hop, check_options

        if merge is not None:
            if inputs or shard is not None:
                raise UsageError("--merge takes only the output folder", "byola embed --merge OUT")
            from .embed_parts import merge_parts

            summary = merge_parts(merge)
            print(summary.describe(), file=sys.stderr)
            raise SystemExit(1 if summary.failed else 0)
        if not inputs:
            raise UsageError("no inputs", "give at least one audio file, folder or .txt list")
        check_options(batch_size=batch_size, num_workers=num_workers, format=format)
        _check_out_folder(out)
        _check_precision(precision)
        _check_frontend_backend(frontend_backend)
        stats = _parse_stats(norm_stats)
        ref = _model_ref(model, checkpoint, accept_license)
        check_device(device)
        from .embed_parts import parse_shard
        from .engine.distributed import default_device, dist_info

        part, ranks = parse_shard(shard) if shard is not None else None, dist_info()
        if part and ranks.world_size > 1:
            raise UsageError("--shard under torchrun", "torchrun gives each rank its part: drop --shard")
        if ranks.world_size > 1 and device == "cuda":
            try:
                device = str(default_device())
            except RuntimeError as err:  # more ranks on this node than GPUs
                raise UsageError(str(err).split(";")[0], "start at most one rank per GPU, or --device cpu") from None
        from .embed import load
        from .frontend import DEFAULT_BACKEND

        files = _input_files(inputs)
        if not files:
            raise UsageError(f"no audio files found in {', '.join(map(str, inputs))}",
                             "give audio files or folders holding .wav .flac .ogg .mp3 .aiff .aif .opus files")
        embedder = load(ref, device=device, norm_stats=stats,
                        frontend_backend={None: DEFAULT_BACKEND, "checkpoint": None}.get(frontend_backend,
                                                                                         frontend_backend),
                        compile=compile, accept_license=accept_license, precision=precision)
        check_frame_hop(embedder, frames, frame_hop_ms)
        job = dict(batch_size=batch_size, frames=frames, num_workers=num_workers, format=format,
                   frame_hop_ms=frame_hop_ms)
        if ranks.world_size > 1:
            from .embed_parts import embed_distributed

            summary = embed_distributed(embedder, files, out, progress=progress and ranks.is_main, **job)
            if not ranks.is_main:
                return
        elif part:
            from .embed_parts import embed_part

            summary = embed_part(embedder, files, out, *part, progress=progress, **job)
            print(f"{summary.describe()}\npart {part[0]}/{part[1]} complete; once all {part[1]} parts are: "
                  f"byola embed --merge {out}", file=sys.stderr)
            raise SystemExit(1 if summary.failed else 0)
        else:
            summary = _embed_one_process(embedder, files, out, progress, job)
        print(summary.describe(), file=sys.stderr)
        if summary.failed:
            raise SystemExit(1)

    def pretrain(self, *data: str, recipe: str = "byola_v2", out: str = "runs/byola", resume: bool = False,
                 **overrides) -> None:
        """Pretrain an encoder with BYOL-A on your audio (or a BYOL variant on images, with an image recipe).

        Writes RUN/model.safetensors (usable with `byola embed --checkpoint`), periodic checkpoints, RUN/log.csv,
        RUN/config.yaml and RUN/curves.png. Several processes: `torchrun --nproc_per_node N -m byola pretrain ...`.
        Any recipe value can be overridden with a dotted option (--SECTION.KEY=VALUE); the recipe and the
        overrides are checked before any data is read.

        Args:
            data: folders (recursive), audio files and .txt/.lst path lists; for image recipes, an image folder
                (one subfolder per class, or unlabeled) or the CIFAR-10/STL-10 root.
            recipe: a recipe name in recipes/ (byola_v1, byola_v2, tribyola, byol_cifar10, ...) or a YAML file.
            out: the run folder.
            resume: continue a run from its newest checkpoint; with a larger --train.steps, extend a finished one.
            overrides: recipe values, e.g. --optim.lr=1e-4 --train.batch_size=64 --model.d=2048.

        Examples:
            byola pretrain my_corpus/ --recipe byola_v2 --out runs/v2
            byola pretrain my_corpus/ --recipe byola_v1 --out runs/v1 --train.steps=2000 --train.batch_size=64
            byola pretrain my_corpus/ --recipe byola_v2 --out runs/v2 --resume
            torchrun --nproc_per_node 2 -m byola pretrain my_corpus/ --out runs/v2
        """
        if not data:
            raise UsageError("no data", "give at least one data folder, file or list")
        _check_out_folder(out)
        from .engine.distributed import dist_info
        from .pretrain import pretrain

        model = pretrain(list(data), recipe, out, resume=resume, **overrides)  # the recipe is checked first
        if dist_info().is_main:
            print(f"model written to {model}", file=sys.stderr)

    def evaluate(self, *tasks: str, model: str | None = None, checkpoint: str | None = None,
                 out: str = "byola_eval", baselines: bool = False, probe: str = "linear", seeds: int = 3,
                 data_root: str | None = None, unit_sec: float | None = None, device: str = "cpu",
                 batch_size: int = 64, num_workers: int = 1, fold_norm: bool = True, cache_dir: str | None = None,
                 precision: str = "fp32", progress: bool = True, accept_license: bool = False) -> None:
        """Score frozen embeddings on downstream tasks with a linear probe.

        Writes OUT/results.md (a table, then how to reproduce it), OUT/results.csv, OUT/results.json,
        OUT/provenance.json (versions, command, settings, checkpoint and task CSV SHA-256s), OUT/scores.png and
        confusion matrices under OUT/confusion/. Embeddings are cached in OUT/cache and reused on rerun.

        Args:
            tasks: built-in task names (see evaluation/README.md) or metadata CSV paths.
            model: a model name from `byola models` (default: the model shipped with byola).
            checkpoint: a byola .safetensors checkpoint or an official BYOL-A .pth file.
            out: report folder.
            baselines: also score a randomly initialized encoder of the same architecture and log-mel statistics.
            probe: linear, mlp or knn.
            seeds: number of probe seeds (mean ± std reported).
            data_root: folder holding the built-in tasks' prepared data (default $BYOLA_DATA or ./data).
            unit_sec: clip duration in seconds of the task CSVs given by path: each clip is cut or zero-padded
                to it (default: 1.0 s for a task CSV, said on stderr; built-in tasks keep their own).
            device: torch device for the encoder, the probe and the log-mel baseline.
            batch_size: clips per encoder batch.
            num_workers: DataLoader workers decoding audio.
            fold_norm: normalization statistics from each fold's training clips (EVAR's protocol); False keeps the
                checkpoint's own.
            cache_dir: where embeddings are cached (default OUT/cache); share it between reports to reuse them.
            precision: fp32 (exact, default), bf16 or auto (bf16 only where native), as for embed.
            progress: show progress bars.
            accept_license: accept the licence of a downloaded model (asked once, on first download).

        Examples:
            byola evaluate fsdd_digit spcv2_12 --data_root ../shared/data --out eval --baselines
            byola evaluate my_task.csv --unit_sec 2.0 --checkpoint runs/v2/model.safetensors --out eval_mine
        """
        if not tasks:
            raise UsageError("no tasks", "name at least one built-in task or metadata CSV")
        if probe not in ("linear", "mlp", "knn"):
            raise UsageError(f"--probe {probe!r} is not a probe", "use linear, mlp or knn")
        if seeds < 1:
            raise UsageError(f"--seeds {seeds}: at least one seed is needed")
        _check_out_folder(out)
        _check_precision(precision)
        from .engine.distributed import dist_info

        if dist_info().world_size > 1:  # every rank would embed everything and write the same report
            raise UsageError("byola evaluate runs as one process: its embedding phase is not sharded",
                             "run it without torchrun (docs/scaling.md)")
        ref = _model_ref(model, checkpoint, accept_license)
        check_device(device)
        from .embed import load
        from .evaluation.embedders import LogMelStatsEmbedder, ModelEmbedder
        from .evaluation.probe import ProbeConfig
        from .evaluation.run import evaluate
        from .evaluation.tasks import builtin_specs, load_task
        from .precision import precision_name

        specs = builtin_specs()
        builtin = [task for task in tasks if task in specs]
        if unit_sec is not None and len(builtin) == len(tasks):
            raise UsageError(f"--unit_sec applies to CSV tasks given by path: {', '.join(builtin)} "
                             f"{'has its' if len(builtin) == 1 else 'have their'} own", "drop --unit_sec")
        # every task loaded (and checked) before any model; --unit_sec for the CSV tasks only
        loaded = [load_task(task, None if task in builtin else unit_sec, None, data_root) for task in tasks]

        def model_factory(random_init: int | None = None):
            def factory() -> ModelEmbedder:
                embedder = load(ref, device=device, random_init=random_init, accept_license=accept_license,
                                precision=precision)
                if not fold_norm and embedder.norm_stats is None:
                    raise UsageError("--fold_norm False needs a checkpoint with normalization statistics",
                                     "keep --fold_norm True for official weights")
                name = embedder.checkpoint_id if random_init is not None else \
                    f"{embedder.model_name}@{embedder.checkpoint_id[7:19]}"
                if precision_name(embedder.compute_dtype) != "fp32":  # cached embeddings are per precision
                    name += f"+{precision_name(embedder.compute_dtype)}"
                return ModelEmbedder(embedder, name=name, fold_norm=fold_norm, batch_size=batch_size)
            return factory

        extra = {"random-init": model_factory(random_init=0),
                 "logmel-stats": lambda: LogMelStatsEmbedder(device=device)} if baselines else {}
        evaluate(loaded, model_factory(), out, baselines=extra, seeds=tuple(range(seeds)),
                 probe=ProbeConfig(kind=probe, device=device), batch_size=batch_size, num_workers=num_workers,
                 cache_dir=cache_dir, progress=progress, command=self._command_line)
        print((Path(out) / "results.md").read_text())

    def plot(self, folder: str, out: str | None = None) -> None:
        """Draw the figures of a pretraining run or an evaluation report.

        A run folder (with log.csv) gets curves.png: loss, EMA τ, learning rate and the batch statistics before and
        after post-normalization per step. An evaluation folder (with results.json) gets scores.png and its
        confusion matrices redrawn.

        Args:
            folder: a pretraining run folder or an evaluation report folder.
            out: where to write curves.png (runs only; default FOLDER/curves.png).

        Examples:
            byola plot runs/v2
            byola plot eval
        """
        root = Path(folder)
        if out is not None and not (root / "log.csv").is_file() and (root / "results.json").is_file():
            raise UsageError("--out applies to a pretraining run (its curves.png)",
                             "an evaluation folder's figures are redrawn in place: drop --out")
        if (root / "log.csv").is_file():
            from .plots import plot_run

            print(f"wrote {plot_run(root, out)}", file=sys.stderr)
        elif (root / "results.json").is_file():
            from .evaluation.report import redraw

            for path in redraw(root):
                print(f"wrote {path}", file=sys.stderr)
        elif not root.is_dir():
            raise UsageError(f"{folder}: no such folder", "give a pretraining run folder or an evaluation folder")
        else:
            raise UsageError(f"{folder} holds neither log.csv nor results.json",
                             "give the --out folder of `byola pretrain` or `byola evaluate`")

    def models(self) -> None:
        """List the models byola knows: the one shipped with byola and the official BYOL-A weights.

        Official weights are downloaded on first use from their source into $BYOLA_CACHE (default
        ~/.cache/byola), checked against their recorded checksum, and never re-hosted by byola. Their licence
        (NTT, evaluation only) is shown and must be accepted once (--accept_license or BYOLA_ACCEPT_LICENSE=1).
        Add your own models as entries of $BYOLA_CACHE/models.json.

        Examples:
            byola models
            byola embed clips/ --model byol-a-v2-d2048 --accept_license --out emb
        """
        from .hub import models_table

        print(models_table())

    def convert(self, src: str, dst: str, norm_stats: str | None = None, norm_stats_from: str | None = None,
                overwrite: bool = False) -> None:
        """Convert an official BYOL-A .pth (v1 AudioNTT2020 or v2 AudioNTT2022) into a byola checkpoint file.

        Not needed to use official weights: `--checkpoint FILE.pth` and `--model NAME` convert in memory.

        Args:
            src: the official file.
            dst: the .safetensors file to write (an existing file is refused unless --overwrite; never SRC).
            norm_stats: MEAN,STD to store in the checkpoint (official files carry none).
            norm_stats_from: a folder, file or .txt/.lst list of audio: store the exact statistics of its log-mels
                (what `byola stats` prints), so embeddings never depend on the files embedded with them.
            overwrite: replace an existing DST.

        Examples:
            byola convert AudioNTT2020-BYOLA-64x96d2048.pth byola_v1_d2048.safetensors
            byola convert AudioNTT2020-BYOLA-64x96d512.pth v1_d512.safetensors --norm_stats_from my_corpus/
        """
        from .checkpoint import convert_official, default_frontend_config, load_official_state_dict

        if norm_stats is not None and norm_stats_from is not None:
            raise UsageError("--norm_stats and --norm_stats_from both given", "give one of them")
        stats = _parse_stats(norm_stats)
        if norm_stats_from is not None:
            from .frontend import DEFAULT_BACKEND, LogMelSpectrogram
            from .norm import compute_norm_stats

            _, arch = load_official_state_dict(src)  # the log-mel the converted model will be used with
            frontend = LogMelSpectrogram(**default_frontend_config(arch["params"]["n_mels"], DEFAULT_BACKEND))
            computed = compute_norm_stats(_input_files([norm_stats_from]), frontend, skip_errors=True)
            stats = {"mean": computed.mean, "std": computed.std}
            print(f"normalization statistics of {norm_stats_from}: mean={stats['mean']:.6f} "
                  f"std={stats['std']:.6f}", file=sys.stderr)
        elif stats:
            stats = {"mean": stats[0], "std": stats[1]}
        meta = convert_official(src, dst, norm_stats=stats, overwrite=overwrite)
        print(f"wrote {dst}: {meta['encoder']['name']} {meta['encoder']['params']}, "
              f"frontend backend {meta['frontend']['backend']}", file=sys.stderr)

    def stats(self, *inputs: str, model: str | None = None, checkpoint: str | None = None,
              accept_license: bool = False) -> None:
        """Print exact log-mel normalization statistics (MEAN,STD) of audio inputs with a model's frontend.

        Args:
            inputs: files, folders and .txt/.lst path lists.
            model: a model name from `byola models` (default: the model shipped with byola).
            checkpoint: a byola .safetensors checkpoint or an official BYOL-A .pth file.
            accept_license: accept the licence of a downloaded model.

        Examples:
            byola stats my_corpus/
        """
        if not inputs:
            raise UsageError("no inputs", "give at least one audio file, folder or .txt list")
        ref = _model_ref(model, checkpoint, accept_license)
        from .embed import load

        files = _input_files(inputs)
        embedder = load(ref, norm_stats=(0.0, 1.0), accept_license=accept_license)
        stats = embedder.fit_norm_stats(files)
        print(f"{stats.mean!r},{stats.std!r}")

    def prepare(self, task: str, src: str, out: str, num_workers: int = 4, **options) -> None:
        """Turn a dataset's official folder layout into a metadata CSV (and 16 kHz copies where needed).

        Args:
            task: esc50, us8k, spcv2, vc1, voxforge, cremad, gtzan, nsynth or fsd50k.
            src: the dataset as downloaded.
            out: output folder (OUT/<task>.csv).
            num_workers: threads converting audio (0: in the main thread).
            options: dataset-specific options (gtzan: --split_dir; cremad: --seed).

        Examples:
            byola prepare esc50 /datasets/ESC-50-master data/esc50
        """
        from .evaluation.prepare import PREPARERS, prepare

        if task not in PREPARERS:
            raise UsageError(f"unknown dataset {task!r}", f"use one of {', '.join(PREPARERS)}")
        accepted = dict(list(inspect.signature(PREPARERS[task]).parameters.items())[1:])
        for key, value in options.items():
            if key not in accepted:
                raise UsageError(f"{task} has no option --{key}",
                                 f"its options: {', '.join('--' + a for a in accepted) or 'none'}")
            if _kind(accepted[key]) != "str":  # fire passes what does not read as a number as a string
                options[key] = _convert(key, _kind(accepted[key]), str(value), "None" in str(accepted[key].annotation))
        if not Path(src).is_dir():
            raise UsageError(f"{src}: no such folder", f"give the {task} dataset folder as downloaded")
        csv = prepare(task, src, out, num_workers=num_workers, **options)
        print(f"wrote {csv}", file=sys.stderr)


# ------------------------------------------------------------------------------------------- command-line parsing
def _commands() -> dict[str, callable]:
    return {name: fn for name, fn in vars(Commands).items() if not name.startswith("_") and callable(fn)}


def _doc(fn) -> tuple[str, str, dict[str, str], list[str]]:
    """A Google-style docstring → (summary, description, {arg: text}, example lines)."""
    text = inspect.cleandoc(fn.__doc__ or "")
    parts = re.split(r"^(Args|Examples):\s*$", text, flags=re.M)
    head = parts[0].strip().split("\n\n")
    summary, description = head[0].replace("\n", " "), "\n\n".join(head[1:])
    sections = dict(zip(parts[1::2], parts[2::2]))
    args: dict[str, str] = {}
    for match in re.finditer(r"^    (\w+): (.*(?:\n {8}.*)*)", sections.get("Args", ""), flags=re.M):
        args[match.group(1)] = " ".join(line.strip() for line in match.group(2).splitlines())
    examples = [line.strip() for line in sections.get("Examples", "").splitlines() if line.strip()]
    return summary, description, args, examples


def _kind(param: inspect.Parameter) -> str:
    """'bool' | 'int' | 'float' | 'str' from the (string) annotation."""
    ann = str(param.annotation)
    for kind in ("bool", "int", "float"):
        if re.match(rf"^{kind}\b", ann):
            return kind
    return "str"


def _overview() -> str:
    summary = inspect.cleandoc(Commands.__doc__)
    lines = ["usage: byola COMMAND [ARGS] [OPTIONS]", "", summary, "", "commands:"]
    for name, fn in _commands().items():
        lines.append(f"  {name:<10} {_doc(fn)[0]}")
    lines += ["", "Run `byola COMMAND --help` for a command's options and examples.",
              "--debug (or BYOLA_DEBUG=1) shows the Python traceback of an error."]
    return "\n".join(lines)


def _command_help(name: str) -> str:
    fn = _commands()[name]
    summary, description, args, examples = _doc(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]
    usage = ["byola", name]
    positional, options = [], []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            usage.append(f"{p.name.upper()}...")
            positional.append((f"{p.name.upper()}...", args.get(p.name, "")))
        elif p.kind is p.VAR_KEYWORD:
            usage.append("[--KEY=VALUE ...]")
            options.append(("--KEY=VALUE", args.get(p.name, "")))
        elif p.default is p.empty:
            usage.append(p.name.upper())
            positional.append((p.name.upper(), args.get(p.name, "")))
        else:
            kind = _kind(p)
            flag = f"--{p.name}" if kind == "bool" else f"--{p.name} {p.name.upper()}"
            if kind == "bool":
                default = "on" if p.default else "off"
                if p.default:
                    flag = f"--{p.name} / --no{p.name}"
            else:
                default = None if p.default is None else p.default
            text = args.get(p.name, "")
            if default is not None:
                text += f" (default: {default})"
            options.append((flag, text))
    options.append(("--debug", "show the Python traceback of an error"))
    options.append(("--help", "show this help"))
    lines = ["usage: " + " ".join(usage) + " [OPTIONS]", "", summary]
    if description:
        lines += ["", textwrap.fill(" ".join(description.split()), _WIDTH)]
    col = min(max(len(f) for f, _ in positional + options) + 4, 34)
    for title, rows in (("arguments", positional), ("options", options)):
        if rows:
            lines += ["", f"{title}:"]
            for flag, text in rows:
                wrapped = textwrap.wrap(text, _WIDTH - col) or [""]
                first = f"  {flag:<{col - 2}}" if len(flag) < col - 3 else f"  {flag}\n" + " " * col
                lines.append(first + wrapped[0])
                lines += [" " * col + w for w in wrapped[1:]]
    if examples:
        lines += ["", "examples:"] + [f"  {e}" for e in examples]
    return "\n".join(lines)


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _convert(option: str, kind: str, value: str, optional: bool):
    """Check one option value against its type; the Python value fire will receive."""
    if optional and value.lower() == "none":
        return None
    try:
        if kind == "bool":
            if value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        expected = {"bool": "true or false", "int": "an integer", "float": "a number"}[kind]
        raise UsageError(f"--{option} expects {expected}, got {value!r}") from None
    return value


def _unknown(option: str, known: list[str], command: str) -> UsageError:
    close = difflib.get_close_matches(option, known, n=1)
    return UsageError(f"unknown option --{option}" + (f" (did you mean --{close[0]}?)" if close else ""),
                      f"see `byola {command} --help`")


def check_command_line(command: str, args: list[str]) -> list[str]:
    """Check ``args`` of ``command`` against its signature; return them as fire should receive them.

    Raises :class:`UsageError` for an unknown option, a value of the wrong type, a missing value or argument, or
    too many arguments. Every value is passed on as a Python literal, so fire's own parsing cannot change it.
    """
    fn = _commands()[command]
    params = list(inspect.signature(fn).parameters.values())[1:]
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_pos = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    var_kw = next((p for p in params if p.kind is p.VAR_KEYWORD), None)
    given: dict[str, object] = {}
    passthrough: list[str] = []
    positionals: list[str] = []
    i, only_positionals = 0, False
    while i < len(args):
        token = args[i]
        i += 1
        if only_positionals or not token.startswith("-") or re.fullmatch(r"-[\d.]+(e-?\d+)?", token):
            positionals.append(token)
            continue
        if token == "--":
            only_positionals = True
            continue
        if not token.startswith("--"):
            raise UsageError(f"unknown option {token}", f"options are spelt out in full: see `byola {command} --help`")
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        has_value = bool(eq) or (i < len(args) and not args[i].startswith("--"))
        if key in named:
            p = named[key]
            kind = _kind(p)
            if kind == "bool" and not eq:
                if i < len(args) and args[i].lower() in _TRUE | _FALSE:
                    value, i = args[i], i + 1
                else:
                    value = "true"
            elif not eq:
                if not has_value:
                    raise UsageError(f"--{key} needs a value", f"e.g. --{key} {key.upper()}")
                value, i = args[i], i + 1
            if key in given:
                raise UsageError(f"--{key} given twice", "give it once")
            given[key] = _convert(key, kind, value, "None" in str(p.annotation))
        elif key.startswith("no") and key[2:] in named and _kind(named[key[2:]]) == "bool" and not eq:
            given[key[2:]] = False
        elif var_kw is not None and not (difflib.get_close_matches(key, list(named), n=1, cutoff=0.8)
                                         and "." not in key):
            # recipe overrides / dataset options: checked by the command against the recipe or dataset
            if not eq:
                value = "true"
                if has_value:
                    value, i = args[i], i + 1
            if any(p.partition("=")[0] == f"--{name}" for p in passthrough):
                raise UsageError(f"--{name} given twice", "give it once")
            passthrough.append(f"--{name}={value}")
        else:
            raise _unknown(key, list(named), command)
    required = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
                and p.name not in given]
    for p in required:
        if not positionals:
            raise UsageError(f"missing {p.name.upper()}", f"usage: see `byola {command} --help`")
        given[p.name] = positionals.pop(0)
    if positionals and var_pos is None:
        raise UsageError(f"unexpected argument {positionals[0]!r}", f"see `byola {command} --help`")
    ordered = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    out = [repr(given.pop(name)) for name in ordered] + [repr(v) for v in positionals]
    out += [f"--{k}={v!r}" for k, v in given.items()] + passthrough
    return out


def _run(argv: list[str]) -> None:
    if not argv:  # a usage mistake, as in other command lines: the overview on stderr, exit status 2
        print(_overview(), file=sys.stderr)
        raise SystemExit(2)
    if argv[0] in ("-h", "--help", "help"):
        topic = argv[1] if len(argv) > 1 and argv[0] == "help" else None
        print(_command_help(topic) if topic in _commands() else _overview())
        return
    if argv[0] == "--version":
        from . import __version__

        print(f"byola {__version__}")
        return
    command, args = argv[0], argv[1:]
    if command not in _commands():
        close = difflib.get_close_matches(command, list(_commands()), n=1)
        raise UsageError(f"unknown command {command!r}" + (f" (did you mean {close[0]}?)" if close else ""),
                         "`byola --help` lists the commands")
    before_separator = args[:args.index("--")] if "--" in args else args
    if "--help" in before_separator or "-h" in before_separator:
        print(_command_help(command))
        return
    checked = check_command_line(command, args)
    import fire  # after the checks: fire (with asyncio) takes longer to import than the help takes to print

    fire.Fire(Commands(shlex.join(["byola", *argv])), command=[command] + checked, name="byola")


# The exit status of a job that SIGTERM stopped (byola.embed_job raises SystemExit(128 + signum), as a shell reports).
_SIGTERM_STATUS = 128 + signal.SIGTERM
_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Keeps freed memory in the process heap (`byola.runtime.keep_freed_memory`): every
    command here allocates large tensors over and over, which glibc would otherwise map and page-fault anew."""
    from .runtime import keep_freed_memory

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(_DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    prefix = f"byola {argv[0]}" if argv and not argv[0].startswith("-") else "byola"
    keep_freed_memory()
    # A library warning (skipped unreadable files, a second name of one input, emulated bf16) prints as one line, as
    # errors do. Only its text is changed: where warnings go (a caller's warnings.catch_warnings) is left as it is.
    plain_format = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"{prefix}: warning: {message}\n"
    try:
        _run(argv)
    except (UsageError, *_FILE_ERRORS) as err:
        if debug:
            raise
        text = str(err) if isinstance(err, UsageError) or not err.filename else f"{err.filename}: {err.strerror}"
        print(f"{prefix}: error: {text}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prefix}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as stop:
        if stop.code == _SIGTERM_STATUS:  # a job stopped by SIGTERM (byola.embed_job): said, as Ctrl-C is
            print(f"{prefix}: terminated", file=sys.stderr)
        raise
    except BrokenPipeError:  # stdout went to a command that stopped reading (`byola embed -h | head -2`): quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python reports it again at exit
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell reports a command stopped by the closed pipe
    finally:
        warnings.formatwarning = plain_format


if __name__ == "__main__":
    main()
