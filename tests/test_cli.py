"""The `byola` command line: help for every command, unknown options refused before any work, one-line user
errors with exit status 2 (traceback with --debug)."""
from __future__ import annotations

import json
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


def _evaluate_data(root: Path) -> tuple[Path, Path]:
    """A data root holding the built-in task fsdd_digit (10 digits) and a task CSV of our own (mine.csv, 3 classes),
    both of short generated clips (0.3 s)."""
    import soundfile as sf

    from tests.conftest import make_tone

    def write(folder: Path, name: str, labels: list[str], per_class: int) -> Path:
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        lines = ["file_name,label,split"]
        for k, label in enumerate(labels):
            for i in range(per_class):
                sf.write(folder / "audio" / f"{label}_{i}.wav", make_tone(0.3, freq=200.0 * (k + 1), seed=i), 16000)
                lines.append(f"audio/{label}_{i}.wav,{label},{['train', 'train', 'train', 'valid', 'test'][i % 5]}")
        (folder / name).write_text("\n".join(lines) + "\n")
        return folder / name

    write(root / "fsdd", "fsdd_digit.csv", [str(d) for d in range(10)], 5)
    return root, write(root / "mine", "mine.csv", ["a", "b", "c"], 5)


def _recorded_unit_sec(out: Path) -> dict[str, float]:
    return {r["task"]: r["unit_sec"] for r in json.loads((out / "results.json").read_text())}


def test_evaluate_unit_sec_applies_to_csv_tasks_only(tmp_path, tiny_ckpt, capsys):
    """`--unit_sec` used to crop built-in tasks too (fsdd_digit to 0.5 s here); they keep their own."""
    root, mine = _evaluate_data(tmp_path / "data")
    out = tmp_path / "eval"
    cli.main(["evaluate", "fsdd_digit", str(mine), "--unit_sec", "0.5", "--checkpoint", str(tiny_ckpt),
              "--data_root", str(root), "--out", str(out), "--probe", "knn", "--seeds", "1", "--num_workers", "0",
              "--noprogress"])
    assert _recorded_unit_sec(out) == {"fsdd_digit": 1.0, "mine": 0.5}
    assert "clips cut/padded" not in capsys.readouterr().err  # the CSV task's duration was given
    with pytest.raises(UsageError, match="--unit_sec applies to CSV tasks.*fsdd_digit has its own"):
        cli.Commands().evaluate("fsdd_digit", unit_sec=0.5, data_root=str(root), out=str(tmp_path / "o2"))
    assert not (tmp_path / "o2").exists()


def test_evaluate_says_when_a_csv_task_gets_the_default_unit_sec(tmp_path, tiny_ckpt, capsys):
    from byola.evaluation.tasks import DEFAULT_UNIT_SEC

    root, mine = _evaluate_data(tmp_path / "data")
    out = tmp_path / "eval"
    cli.main(["evaluate", str(mine), "fsdd_digit", "--checkpoint", str(tiny_ckpt), "--data_root", str(root),
              "--out", str(out), "--probe", "knn", "--seeds", "1", "--num_workers", "0", "--noprogress"])
    notes = [line for line in capsys.readouterr().err.splitlines() if "clips cut/padded" in line]
    assert notes == ["mine.csv: clips cut/padded to 1 s, the default for a task CSV (--unit_sec to change)"]
    assert _recorded_unit_sec(out) == {"mine": 1.0, "fsdd_digit": 1.0}
    assert "| mine | tiny" in (out / "results.md").read_text() and "| unit s |" in (out / "results.md").read_text()
    assert f"(default: {DEFAULT_UNIT_SEC} s for a task CSV" in " ".join(cli._command_help("evaluate").split())


def test_evaluate_device_cpu_is_honoured_by_the_probe_and_the_baselines(tmp_path, tiny_ckpt, monkeypatch):
    """With a GPU visible, `--device cpu` used to run the probe and the log-mel baseline on it anyway. Here the
    evaluation code is shown a GPU that is not there (torch's own checks are not fooled), so any such use fails."""
    import torch

    root, mine = _evaluate_data(tmp_path / "data")
    real = torch.cuda.is_available

    def visible_to_evaluation() -> bool:
        return sys._getframe(1).f_globals.get("__name__", "").startswith("byola.evaluation") or real()

    monkeypatch.setattr(torch.cuda, "is_available", visible_to_evaluation)
    cli.main(["evaluate", str(mine), "--unit_sec", "0.3", "--checkpoint", str(tiny_ckpt), "--device", "cpu",
              "--baselines", "--out", str(tmp_path / "eval"), "--seeds", "1", "--num_workers", "0", "--noprogress"])
    records = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["label"] for r in records] == [records[0]["checkpoint"], "random-init", "logmel-stats"]


def test_pretrain_help_overrides_are_valid_for_their_recipes():
    """Every `--SECTION.KEY=VALUE` in `byola pretrain --help` passes the recipe check (`--model.d=512` used to be
    offered, which byola_v2's AudioNTT2022 refuses)."""
    import re

    from byola import recipe

    text = cli._command_help("pretrain")
    options_text = " ".join(text.split("\n  --KEY=VALUE")[1].split("\n  --debug")[0].split())
    checked = 0
    for line in [options_text] + text.split("examples:")[1].splitlines():
        overrides = dict(re.findall(r"--([a-z_]+\.[a-z_]+)=(\S+?)\.?(?=\s|$)", line))
        if overrides:
            name = re.search(r"--recipe (\w+)", line)
            recipe.load(name.group(1) if name else "byola_v2", overrides)
            checked += 1
    assert checked >= 2


def test_embed_help_states_the_worker_chunk():
    from byola.norm import WORKER_CHUNK_FILES

    assert f"min(batch_size, {WORKER_CHUNK_FILES}) files" in " ".join(cli._command_help("embed").split())


# A command option and the library parameter it feeds share one default, except these (why, each):
_DEFAULTS_DIFFER_ON_PURPOSE = {
    ("embed", "frontend_backend"): "None: the library's DEFAULT_BACKEND; the command also takes 'checkpoint'",
    ("evaluate", "seeds"): "a count on the command line, the seeds themselves in the library",
    ("evaluate", "baselines"): "a flag on the command line, label -> embedder factories in the library",
    ("evaluate", "num_workers"): "the command decodes in one worker process; the library decodes in the caller's "
                                 "process, safe in notebooks and under other multiprocessing",
}


def test_command_defaults_are_the_library_defaults():
    import inspect

    from byola import embed, embed_job, norm, pretrain
    from byola.evaluation import prepare, run

    feeds = {"embed": (embed_job.embed_files, embed.load), "evaluate": (run.evaluate,),
             "prepare": (prepare.prepare,), "stats": (norm.compute_norm_stats,), "pretrain": (pretrain.pretrain,)}
    compared, differing = 0, {}
    for command, functions in feeds.items():
        options = inspect.signature(getattr(cli.Commands, command)).parameters
        for function in functions:
            for name, param in inspect.signature(function).parameters.items():
                option = options.get(name)
                if option is None or inspect.Parameter.empty in (option.default, param.default):
                    continue
                compared += 1
                if option.default != param.default and (command, name) not in _DEFAULTS_DIFFER_ON_PURPOSE:
                    differing[f"{command} --{name}"] = (option.default, f"{function.__module__}.{function.__name__}",
                                                        param.default)
    assert compared >= 15 and not differing, differing


@pytest.fixture
def bare_ckpt(tiny_ckpt, tmp_path) -> Path:
    """tiny_ckpt without normalization statistics (as official weights)."""
    from byola.checkpoint import load_checkpoint, save_checkpoint

    encoder, meta = load_checkpoint(tiny_ckpt)
    path = tmp_path / "bare.safetensors"
    save_checkpoint(path, encoder, meta["frontend"], None, {"source": "test"})
    return path


def test_a_very_short_clip_is_skipped_by_the_statistics_pass(tmp_path, bare_ckpt, capsys):
    """One 100-sample file among the inputs used to end `embed` and `stats` in a traceback (the front end's
    reflect padding); it is skipped by the statistics pass, said in its warning, and fails alone in the embedding."""
    import soundfile as sf

    from tests.conftest import make_tone

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        sf.write(clips / f"tone{i}.wav", make_tone(0.5, seed=i), 16000)
    sf.write(clips / "short.wav", make_tone(0.5)[:100], 16000)
    done = byola("embed", clips, "--checkpoint", bare_ckpt, "--out", tmp_path / "emb", "--noprogress",
                 "--num_workers", "0", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stderr
    assert "byola embed: warning: normalization statistics: skipped 1 " in done.stderr
    assert "short.wav" in done.stderr and "Traceback" not in done.stderr
    rows = (tmp_path / "emb" / "index.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[2] for row in rows) == ["error", "ok", "ok"]
    assert [row for row in rows if "short.wav" in row and ",error," in row]
    done = byola("stats", clips, "--checkpoint", bare_ckpt, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    mean, std = map(float, done.stdout.split(","))
    assert std > 0 and "byola stats: warning: normalization statistics: skipped 1 " in done.stderr


def _one_line_error(capsys, args: list[str]) -> str:
    """The one error line `byola ARGS` prints (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"byola {args[0]}: error: "), err
    return lines[0]


def test_more_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """Each of these ended in a Python traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BYOLA_DEBUG", raising=False)
    line = _one_line_error(capsys, ["embed", EXAMPLES, "--out", "m1", "--frontend_backend", "foo"])
    assert "--frontend_backend 'foo' is not a log-mel backend: use nnaudio, torchaudio, librosa or checkpoint" \
        in line and not Path("m1").exists()
    Path("bad.yaml").write_text("train: [1, 2\n  steps: 3\n")
    line = _one_line_error(capsys, ["pretrain", EXAMPLES, "--recipe", "bad.yaml", "--out", "r"])
    assert "bad.yaml: not valid YAML" in line and "line 2" in line
    Path("empty").mkdir()
    line = _one_line_error(capsys, ["pretrain", "empty", "--out", "r"])
    assert "no audio files (.wav, " in line and "found in empty" in line
    Path("src").mkdir()
    line = _one_line_error(capsys, ["prepare", "cremad", "src", "out", "--seed=x"])
    assert line.endswith("error: --seed expects an integer, got 'x'")
    assert not Path("r").exists() and not Path("out").exists()


def test_help_into_a_closed_pipe_exits_quietly():
    """`byola embed -h | head -c 0` ended in a BrokenPipeError traceback."""
    done = subprocess.run(f"{sys.executable} -m byola embed -h | head -c 0", shell=True, capture_output=True,
                          text=True)
    assert done.stderr == ""


def test_messages_name_what_the_user_gave(tmp_path, monkeypatch, capsys, tiny_ckpt):
    """Messages used to name a temporary file beside the target, say 'File exists' for an --out that is a file, or
    show Python's comparison error for a recipe value of the wrong type."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BYOLA_DEBUG", raising=False)
    Path("taken").write_text("a file")
    for args in (["embed", EXAMPLES], ["evaluate", "fsdd_digit"], ["pretrain", EXAMPLES]):
        line = _one_line_error(capsys, [*args, "--out", "taken"])
        assert line.endswith("error: --out taken is a file, not a folder: give a folder"), line
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.csv").write_text("step,loss\n1,0.5\n")
    line = _one_line_error(capsys, ["plot", "run", "--out", "nonexist/dir/c.png"])
    assert line.endswith("error: nonexist/dir/c.png: folder nonexist/dir does not exist"), line
    from tests.test_checkpoint import official_state

    import torch

    torch.save(official_state(1, 64), "v1.pth")
    Path("folder").mkdir()
    line = _one_line_error(capsys, ["convert", "v1.pth", "folder", "--overwrite"])
    assert line.endswith("error: folder: a folder, not a file"), line
    for option in ("--optim.lr=abc", "--lr=abc"):
        line = _one_line_error(capsys, ["pretrain", EXAMPLES, option, "--out", "r"])
        assert line.endswith("error: optim.lr must be a number, got 'abc'"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "run", "taken", "v1.pth"]


def test_a_recipe_key_given_twice_is_refused(capsys):
    """`--train.batch_size=4 --batch_size=8` trained with 8, silently; embed refuses a repeated option."""
    for twice in (["--train.batch_size=4", "--batch_size=8"], ["--train.steps=2", "--train.steps", "3"],
                  ["--optim.lr=1e-3", "--optim__lr=1e-4"]):
        line = _one_line_error(capsys, ["pretrain", EXAMPLES, *twice])
        key = twice[0][2:].split("=")[0]
        assert f"{key} given twice" in line, line


def test_no_command_is_a_usage_error_and_help_is_not():
    done = byola()
    assert done.returncode == 2 and done.stdout == "" and done.stderr.startswith("usage: byola COMMAND")
    assert byola("--help").returncode == 0


def test_plot_refuses_out_for_an_evaluation_folder(tmp_path, capsys):
    """--out (curves.png of a run) was silently ignored for an evaluation folder."""
    (tmp_path / "results.json").write_text("[]")
    line = _one_line_error(capsys, ["plot", tmp_path, "--out", tmp_path / "x.png"])
    assert "--out applies to a pretraining run" in line and not (tmp_path / "x.png").exists()


def test_help_states_flags_and_defaults_plainly():
    text = cli._command_help("embed")
    assert "--progress / --noprogress" in text and "=false" not in text
    assert "(default: on)" in text and "status,error, duration" not in " ".join(text.split())
