"""Sharded embedding (issue 13): shard assignment, parts merged into the exact output of one process (torchrun ranks
on gloo, `--shard K/N` + `--merge`), refusals naming the parts, a killed part resuming, and Parquet output read as
one dataset. Generated audio, a tiny model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import byola
from byola.embed_job import EmbedJobError, read_embeddings, shard_block
from byola.embed_parts import embed_part, merge_parts, parse_shard, shard_bounds
from byola.files import FolderLock
from tests.conftest import make_tone

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
RUN = dict(num_workers=0, progress=False, batch_size=2)


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt) -> Path:
    return tiny_ckpt


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """11 clips of three lengths, in pairs of equal length (batched together when read in the same chunk), and one
    unreadable file."""
    folder = tmp_path_factory.mktemp("in")
    for k in range(11):
        sf.write(folder / f"{k:02d}.wav", make_tone(0.5 + 0.1 * (k // 2 % 3), freq=200 + 70 * k, seed=k), 16000)
    (folder / "05_bad.wav").write_bytes(b"not audio")
    return sorted(str(p) for p in folder.iterdir())


def _outputs(out: Path) -> dict[str, bytes]:
    """Every file of an OUTDIR that a reader uses (not the resume state or the parts), by relative name."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not {".byola_embed", "parts"} & set(p.relative_to(out).parts)}


@pytest.fixture(scope="module")
def single(ckpt, clips, tmp_path_factory) -> Path:
    """The reference: one process, frames on, one thread like the parts (the thread count may change the float
    rounding of a batch: byte equality holds for equal thread counts)."""
    out = tmp_path_factory.mktemp("single") / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        byola.load(ckpt).embed_files(clips, out, frames=True, **RUN)
    finally:
        torch.set_num_threads(before)
    return out


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "byola", *args], capture_output=True, text=True, env=_env(),
                          timeout=300)


# -- shard assignment -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [1, 2, 32, 64])
def test_shards_are_deterministic_contiguous_complete_and_block_aligned(block):
    for total in (0, 1, 5, 63, 64, 65, 1000, 1001):
        for count in (1, 2, 3, 7, 16):
            bounds = [shard_bounds(total, k, count, block) for k in range(count)]
            assert bounds == [shard_bounds(total, k, count, block) for k in range(count)]
            assert [i for lo, hi in bounds for i in range(lo, hi)] == list(range(total))
            assert all(lo % block == 0 or lo == total for lo, _ in bounds)
            sizes = [hi - lo for lo, hi in bounds[:-1]]  # the last one takes the remainder of a block
            assert not sizes or max(sizes) - min(sizes) <= block


def test_shard_block_is_a_whole_number_of_read_chunks():
    for batch_size in (1, 2, 16, 32, 48, 64, 100):
        block = shard_block(batch_size)
        assert block % batch_size == 0 and block % min(batch_size, 32) == 0


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "1/0"):
        with pytest.raises(EmbedJobError, match="--shard expects K/N"):
            parse_shard(bad)


# -- parts merged: exactly one process's output ---------------------------------------------------------------------
def test_parts_merged_equal_one_process_byte_for_byte(ckpt, clips, single, tmp_path):
    model = byola.load(ckpt)
    out = tmp_path / "out"
    summaries = [embed_part(model, clips, out, k, 5, frames=True, **RUN) for k in range(5)]
    assert sum(s.ok + s.failed for s in summaries) == len(clips)
    assert all(s.ok + s.failed for s in summaries), "every part has files with this many inputs"
    merged = merge_parts(out)
    assert (merged.ok, merged.failed, merged.merged_parts) == (11, 1, 5)
    reference = _outputs(single)
    assert any(name.startswith("frames/") for name in reference)
    assert _outputs(out) == reference  # same files, same bytes: embeddings.npy, index.csv, manifest, frames
    assert read_embeddings(out).index == read_embeddings(single).index


def test_parts_left_empty_by_block_cuts_say_so_and_still_merge_exactly(ckpt, clips, single, tmp_path):
    """12 inputs make 6 blocks of 2 files (batch_size 2): of 8 parts, 2 get none. Each part says so in one line,
    and the merge still equals one process's output byte for byte."""
    model = byola.load(ckpt)
    out = tmp_path / "out"
    summaries = [embed_part(model, clips, out, k, 8, frames=True, **RUN) for k in range(8)]
    empty = [k for k, s in enumerate(summaries) if s.ok + s.failed == 0]
    assert len(empty) == 2
    for k, summary in enumerate(summaries):
        said = [line for line in summary.describe().splitlines() if "parts get inputs" in line]
        assert len(said) == 1, summary.describe()
        assert "only 6 of the 8 parts get inputs: the 12 inputs make 6 blocks of 2 files" in said[0]
        files = summary.ok + summary.failed
        assert said[0].endswith("this part is empty" if k in empty else f"this part embeds {files}")
    assert "parts get inputs" not in embed_part(model, clips, tmp_path / "out6", 0, 6, **RUN).describe()
    merge_parts(out)
    assert _outputs(out) == _outputs(single)


def test_shard_and_merge_on_the_command_line(ckpt, clips, single, tmp_path):
    out = tmp_path / "out"
    common = [os.path.dirname(clips[0]), "--checkpoint", str(ckpt), "--out", str(out), "--frames",
              "--num_workers", "0", "--batch_size", "2", "--progress", "false"]
    first = _cli("embed", *common, "--shard", "0/2")
    assert first.returncode == 0, first.stderr
    assert "byola embed --merge" in first.stderr
    early = _cli("embed", "--merge", str(out))
    assert early.returncode == 2 and "part 1/2" in early.stderr and "missing" in early.stderr, early.stderr
    assert len(early.stderr.strip().splitlines()) == 1 and not (out / "manifest.json").exists()
    second = _cli("embed", *common, "--shard", "1/2")
    assert second.returncode == 1, second.stderr  # its part holds the unreadable file
    merged = _cli("embed", "--merge", str(out))
    assert merged.returncode == 1 and "merged from 2 parts" in merged.stderr, merged.stderr
    assert _outputs(out) == _outputs(single)


def test_torchrun_two_ranks_equal_one_process(ckpt, clips, single, tmp_path):
    """2 gloo ranks on the CPU: each embeds its part, rank 0 merges. A rank that fails (here: its part folder is
    locked by another writer) is named by rank 0 and nothing is merged; the rerun finishes the job."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "byola",
           "embed", os.path.dirname(clips[0]), "--checkpoint", str(ckpt), "--out", str(out), "--frames",
           "--num_workers", "0", "--batch_size", "2", "--progress", "false"]
    blocked = out / "parts" / "00001-of-00002" / ".byola_embed"
    blocked.mkdir(parents=True)
    with FolderLock(blocked, "lock"):
        failed = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert failed.returncode != 0
    assert "not merged, 1 of 2 parts failed: part 1/2:" in failed.stderr, failed.stderr[-3000:]
    assert not (out / "manifest.json").exists()
    assert (out / "parts" / "00000-of-00002" / "manifest.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]  # exit 1: one input is unreadable, as with one process
    assert done.stderr.count("merged from 2 parts") == 1
    assert _outputs(out) == _outputs(single)


# -- refusals ---------------------------------------------------------------------------------------------------------
def test_merge_names_every_missing_or_incomplete_part_and_writes_nothing(ckpt, clips, tmp_path):
    model = byola.load(ckpt)
    out = tmp_path / "out"
    embed_part(model, clips, out, 0, 4, **RUN)
    embed_part(model, clips, out, 2, 4, **RUN)
    (out / "parts" / "00002-of-00004" / "manifest.json").unlink()  # as left by a killed run
    with pytest.raises(EmbedJobError) as err:
        merge_parts(out)
    message = str(err.value)
    assert "part 1/4" in message and "part 3/4" in message and "missing" in message
    assert "part 2/4" in message and "incomplete" in message and "part 0/4" not in message
    assert "\n" not in message
    assert not (out / "manifest.json").exists() and not (out / "embeddings.npy").exists()


def test_merge_refuses_parts_with_other_settings_or_inputs(ckpt, clips, tmp_path):
    out = tmp_path / "out"
    embed_part(byola.load(ckpt), clips, out, 0, 2, **RUN)
    embed_part(byola.load(ckpt, norm_stats=(-7.0, 4.0)), clips, out, 1, 2, **RUN)
    with pytest.raises(EmbedJobError, match=r"part 1/2 was made with other settings.*norm_stats"):
        merge_parts(out)
    other = tmp_path / "other"
    embed_part(byola.load(ckpt), clips, other, 0, 2, **RUN)
    embed_part(byola.load(ckpt), clips[:-1], other, 1, 2, **RUN)
    with pytest.raises(EmbedJobError, match=r"part 1/2 was made from other inputs"):
        merge_parts(other)
    assert not (out / "manifest.json").exists() and not (other / "manifest.json").exists()


def test_sharded_job_needs_fixed_normalization_statistics(ckpt, clips, tmp_path):
    model = byola.load(ckpt)
    model.prenorm = None
    with pytest.raises(EmbedJobError, match="normalization statistics"):
        embed_part(model, clips, tmp_path / "out", 0, 2, **RUN)


# -- resumable per part -----------------------------------------------------------------------------------------------
_KILLED_PART = """
import sys, time
from pathlib import Path
import byola
from byola.embed import Embedder
from byola.embed_parts import embed_part
original = Embedder.embed_batch
def slow(self, waves):
    time.sleep(0.5)
    return original(self, waves)
Embedder.embed_batch = slow
files = sorted(str(p) for p in Path(sys.argv[2]).iterdir())
embed_part(byola.load(sys.argv[1]), files, sys.argv[3], 1, 2, batch_size=1, num_workers=0, progress=False,
           flush_every=1)
"""


def test_a_killed_part_loses_only_unfinished_files(ckpt, clips, tmp_path):
    out = tmp_path / "out"
    state = out / "parts" / "00001-of-00002" / ".byola_embed"
    run = dict(batch_size=1, num_workers=0, progress=False)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PART, str(ckpt), os.path.dirname(clips[0]), str(out)],
                            env=_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while len(list(state.glob("shard_*.npz"))) < 3:  # the unreadable file, then two embedded ones
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (state.parent / "manifest.json").exists()
    model = byola.load(ckpt)
    embed_part(model, clips, out, 0, 2, **run)
    with pytest.raises(EmbedJobError, match=r"part 1/2 .* incomplete"):
        merge_parts(out)
    resumed = embed_part(model, clips, out, 1, 2, **run)
    assert resumed.reused >= 2 and resumed.ok + resumed.failed == len(clips) - len(clips) // 2
    merge_parts(out)
    reference = tmp_path / "single"
    model.embed_files(clips, reference, **run)
    assert _outputs(out) == _outputs(reference)


# -- Parquet ----------------------------------------------------------------------------------------------------------
def test_parquet_parts_read_as_one_dataset(ckpt, clips, single, tmp_path):
    import pandas as pd

    model = byola.load(ckpt)
    out = tmp_path / "out"
    for k in range(2):
        embed_part(model, clips, out, k, 2, format="parquet", frames=True, **RUN)
    merge_parts(out)
    names = sorted(p.name for p in (out / "parquet").iterdir())
    assert names == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    assert not (out / "embeddings.npy").exists()
    frame = pd.read_parquet(out / "parquet")  # the folder, as one dataset
    assert list(frame.columns) == ["file", "status", "error", "duration_s", "embedding", "frames"]
    reference = read_embeddings(single)
    assert frame["file"].tolist() == [row["file"] for row in reference.index]
    assert frame["status"].tolist() == [row["status"] for row in reference.index]
    ok = frame[frame["status"] == "ok"]
    np.testing.assert_array_equal(np.stack(ok["embedding"].to_numpy()).astype(np.float32), reference.embeddings)
    bad = frame[frame["status"] == "error"].iloc[0]
    assert bad["embedding"] is None and np.isnan(bad["duration_s"]) and "05_bad.wav" in bad["error"]
    for name in ok["frames"]:  # frame embeddings stay in their npz files, named relative to OUT
        assert (out / name).read_bytes() == (single / name).read_bytes()
    assert read_embeddings(out).index == reference.index  # the reader takes both formats
    # One process writes the same layout: one part of one.
    alone = tmp_path / "alone"
    model.embed_files(clips, alone, format="parquet", **RUN)
    assert sorted(p.name for p in (alone / "parquet").iterdir()) == ["part-00000-of-00001.parquet"]
    np.testing.assert_array_equal(read_embeddings(alone).embeddings, reference.embeddings)
    manifest = json.loads((alone / "manifest.json").read_text())
    assert list(manifest["contents"]) == ["parquet/part-00000-of-00001.parquet"]


def test_parquet_without_pyarrow_is_refused_naming_the_extra(tmp_path, tone_wav):
    code = ("import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
            "from byola.cli import main\n"
            f"main(['embed', {str(tone_wav)!r}, '--out', {str(tmp_path / 'out')!r}, '--format', 'parquet'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 2
    assert "pip install 'byola[parquet]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_evaluate_under_torchrun_is_refused(tmp_path):
    """evaluate's embedding phase is not sharded: under torchrun it stops before any work instead of running the
    whole evaluation once per rank into the same report."""
    env = dict(_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    done = subprocess.run([sys.executable, "-m", "byola", "evaluate", "fsdd_digit", "--out", str(tmp_path / "eval")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "not sharded" in done.stderr, done.stderr
    assert not (tmp_path / "eval").exists()
