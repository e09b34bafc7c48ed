"""The `byola` command line: help for every command, unknown options refused before any work, one-line user
errors with exit status 2 (traceback with --debug)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from byola import cli
from byola.errors import UsageError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def byola(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "byola", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_help_lists_every_command_and_each_command_explains_itself():
    done = byola("--help")
    assert done.returncode == 0
    for name in cli._commands():
        assert f"\n  {name} " in done.stdout
        sub = byola(name, "--help")  # pretrain --help used to fail asking for data
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.startswith(f"usage: byola {name}") and "examples:" in sub.stdout
    embed_help = byola("embed", "-h").stdout
    assert "--checkpoint CHECKPOINT" in embed_help and "--model MODEL" in embed_help and "(default: 64)" in embed_help


def test_help_does_not_import_torch():
    code = "import sys; from byola.cli import main; main(['--help']); main(['embed', '--help']); " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_misspelt_option_is_refused_before_any_work(tmp_path):
    out = tmp_path / "o"
    done = byola("embed", EXAMPLES, "--out", out, "--checkpiont", "my.safetensors")
    assert done.returncode == 2
    assert done.stderr.strip() == ("byola embed: error: unknown option --checkpiont (did you mean --checkpoint?): "
                                   "see `byola embed --help`")
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("embed", EXAMPLES, "--batch_size", "abc"), "--batch_size expects an integer, got 'abc'"),
    (("embed", "nothere.wav"), "input not found: nothere.wav"),
    (("embed", EXAMPLES, "--model", "byol-a-v1-d51"), "unknown model 'byol-a-v1-d51' (did you mean byol-a-v1-d512?)"),
    (("embed", EXAMPLES, "--norm_stats", "1"), "--norm_stats expects MEAN,STD"),
    (("evaluate", "nosuchtask"), "'nosuchtask' is neither a built-in task"),
    (("pretrain", EXAMPLES, "--optim.lrr=1"), "error: unknown key optim.lrr (did you mean optim.lr?): known keys: lr"),
    (("pretrain", EXAMPLES, "--resum"), "unknown option --resum (did you mean --resume?)"),
    (("pretrain", EXAMPLES, "--train.device=cuda:7"), "--train.device cuda:7"),
    (("pretrain", EXAMPLES, "--recipe", "nope"), "recipe 'nope' is neither a file nor one of"),
    (("convert", "a.pth"), "missing DST"),
    (("embedd", "x"), "unknown command 'embedd' (did you mean embed?)"),
    (("plot", "."), "holds neither log.csv nor results.json"),
])
def test_user_errors_are_one_line_with_exit_status_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BYOLA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("byola "), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_debug_shows_the_traceback(tmp_path):
    for done in (byola("convert", "a.pth", "--debug", cwd=tmp_path),
                 byola("convert", "a.pth", cwd=tmp_path, env={"BYOLA_DEBUG": "1"})):
        assert done.returncode == 1 and "Traceback" in done.stderr and "missing DST" in done.stderr


def test_cuda_device_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UsageError, match="PyTorch sees no CUDA GPU.*--device cpu"):
        cli.Commands().embed(str(EXAMPLES), device="cuda", out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_values_reach_the_command_as_given():
    """Fire would parse `--out 2024` as an int, `--norm_stats 1,2` as a tuple and take a file after a flag as the
    flag's value; the checked command line passes every value as a literal of the parameter's type."""
    args = cli.check_command_line("embed", ["a.wav", "--frames", "b.wav", "--out", "2024", "--norm_stats", "1,2",
                                            "--batch_size=8", "--noprogress", "--num_workers", "None"])
    assert args == ["'a.wav'", "'b.wav'", "--frames=True", "--out='2024'", "--norm_stats='1,2'", "--batch_size=8",
                    "--progress=False", "--num_workers=None"]
    assert cli.check_command_line("pretrain", ["d", "--train.steps=20", "--optim.lr", "1e-4"]) == \
        ["'d'", "--train.steps=20", "--optim.lr=1e-4"]
    with pytest.raises(UsageError, match="--out needs a value"):
        cli.check_command_line("embed", ["a.wav", "--out"])
    with pytest.raises(UsageError, match="unexpected argument 'x'"):
        cli.check_command_line("models", ["x"])

