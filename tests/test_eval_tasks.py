"""Tasks as data: CSV loading, validation errors, folds and the stratified validation hold-out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from byola.evaluation.tasks import DEFAULT_UNIT_SEC, TaskError, builtin_specs, load_task, stratified_holdout
from tests.conftest import shared_data


def _write_task(root: Path, rows: list[tuple], header: str = "file_name,label,split", make_audio: bool = True) -> Path:
    (root / "audio").mkdir(parents=True, exist_ok=True)
    lines = [header]
    for row in rows:
        name = row[0]
        if make_audio:
            sf.write(root / name, np.zeros(800, dtype=np.float32), 16000)
        lines.append(",".join(f'"{v}"' if "," in str(v) else str(v) for v in row))
    path = root / "task.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_split_task_loads_targets_and_one_fold(tmp_path):
    rows = [(f"audio/{i}.wav", "ab"[i % 2], ["train", "train", "valid", "test"][i % 4]) for i in range(16)]
    task = load_task(_write_task(tmp_path, rows), unit_sec=0.5)
    assert task.name == "task" and task.metric == "accuracy" and task.unit_sec == 0.5
    assert task.classes == ["a", "b"] and len(task) == 16
    assert task.targets().tolist() == [i % 2 for i in range(16)]
    (fold,) = task.folds()
    assert len(fold.train) == 8 and len(fold.valid) == 4 and len(fold.test) == 4 and not fold.warnings


def test_missing_valid_split_is_carved_from_train_and_reported(tmp_path):
    rows = [(f"audio/{i}.wav", "abc"[i % 3], "test" if i < 6 else "train") for i in range(36)]
    (fold,) = load_task(_write_task(tmp_path, rows)).folds(valid_fraction=0.1)
    assert len(fold.valid) == 3 and len(fold.train) == 27
    assert not set(fold.valid) & set(fold.train) and not set(fold.valid) & set(fold.test)
    assert any("no valid split" in w for w in fold.warnings)


def test_fold_task_is_leave_one_fold_out_with_stratified_validation(tmp_path):
    rows = [(f"audio/{i}.wav", "abcd"[i % 4], 1 + i % 5) for i in range(200)]
    task = load_task(_write_task(tmp_path, rows, "file_name,label,fold"))
    folds = task.folds(valid_fraction=0.1, seed=3)
    assert [f.name for f in folds] == [f"fold{k}" for k in range(1, 6)]
    y = task.targets()
    for k, fold in enumerate(folds, start=1):
        assert set(task.fold[fold.test]) == {k}
        assert sorted(np.concatenate([fold.train, fold.valid]).tolist()) == np.flatnonzero(task.fold != k).tolist()
        assert len(fold.valid) == 16 and np.bincount(y[fold.valid]).tolist() == [4, 4, 4, 4]
    again = task.folds(valid_fraction=0.1, seed=3)
    assert all((a.valid == b.valid).all() for a, b in zip(folds, again))


def test_holdout_handles_single_examples_and_too_many_classes():
    y = np.array([0] * 12 + [1, 2, 3, 4, 5, 6, 7, 8])  # 9 classes, 20 clips: 10% = 2 clips
    classes = [f"c{i}" for i in range(9)]
    train, valid, warnings = stratified_holdout(np.arange(20), y, 0.1, np.random.default_rng(0), classes)
    assert len(valid) == 2 and set(y[valid]) == {0}  # only class 0 can spare examples
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(20))
    assert set(y[train]) == set(range(9))  # every class keeps a training example
    assert any("single training example" in w for w in warnings)
    assert any("validation holds 1 of 9" in w for w in warnings)


def test_multilabel_csv(tmp_path):
    rows = [(f"audio/{i}.wav", ["a,b", "b", "c,a"][i % 3], "train" if i < 6 else ("valid" if i < 8 else "test"))
            for i in range(10)]
    task = load_task(_write_task(tmp_path, rows))
    assert task.metric == "mAP" and task.multilabel and task.classes == ["a", "b", "c"]
    assert task.targets()[0].tolist() == [1, 1, 0] and task.targets()[2].tolist() == [1, 0, 1]
    with pytest.raises(TaskError, match="need metric 'mAP'"):
        load_task(task.csv_path, metric="accuracy")


@pytest.mark.parametrize("header,rows,match", [
    ("file_name,split", [("audio/0.wav", "train")], r"missing column\(s\) \['label'\]"),
    ("file_name,label", [("audio/0.wav", "a")], "split or fold"),
    ("file_name,label,split", [("audio/0.wav", "a", "training"), ("audio/1.wav", "a", "test")],
     r"unknown split value\(s\) 'training'; expected train, valid, test$"),  # was [np.str_('training')]
    ("file_name,label,split", [("audio/0.wav", "a", "train"), ("audio/1.wav", "a", "train")], "no 'test' rows"),
    ("file_name,label,fold", [("audio/0.wav", "a", "x"), ("audio/1.wav", "a", "2")], "must be an integer"),
    ("file_name,label,split", [("audio/0.wav", "", "train"), ("audio/1.wav", "a", "test")], "empty label"),
])
def test_bad_csv_errors(tmp_path, header, rows, match):
    with pytest.raises(TaskError, match=match):
        load_task(_write_task(tmp_path, rows, header))


def test_missing_files_are_listed(tmp_path):
    rows = [(f"audio/{i}.wav", "a", "train" if i else "test") for i in range(3)]
    path = _write_task(tmp_path, rows)
    (tmp_path / "audio" / "1.wav").unlink()
    with pytest.raises(TaskError, match=r"1 of 3 audio files are missing[\s\S]*audio/1.wav"):
        load_task(path)


def test_builtin_specs_and_data_root(tmp_path):
    specs = builtin_specs()
    expected = {"esc50": 5.0, "us8k": 4.0, "spcv2": 1.0, "vc1": 8.2, "cremad": 2.5, "gtzan": 30.0, "nsynth": 4.0,
                "fsdd_digit": 1.0, "fsdd_speaker": 1.0, "spcv2_12": 1.0, "esc50_f4": 5.0}
    assert {k: specs[k].unit_sec for k in expected} == expected
    assert specs["fsd50k"].metric == "mAP" and "voxforge" in specs
    with pytest.raises(TaskError, match=r"set --data_root \(data_root= in Python\) or \$BYOLA_DATA.*"
                                        r"byola prepare esc50"):
        load_task("esc50", data_root=tmp_path)
    with pytest.raises(TaskError, match="neither a built-in task"):
        load_task("no_such_task")
    rows = [(f"audio/{i}.wav", str(i % 3), "train" if i > 2 else "test") for i in range(9)]
    (tmp_path / "fsdd").mkdir()
    _write_task(tmp_path / "fsdd", rows).rename(tmp_path / "fsdd" / "fsdd_digit.csv")
    with pytest.raises(TaskError, match="expects 10 classes, the CSV has 3"):
        load_task("fsdd_digit", data_root=tmp_path)
    rows = [(f"audio/{i}.wav", str(i % 10) if i != 4 else "four", "train" if i > 2 else "test") for i in range(12)]
    _write_task(tmp_path / "fsdd", rows).rename(tmp_path / "fsdd" / "fsdd_digit.csv")
    with pytest.raises(TaskError, match=r"unknown label\(s\) for task 'fsdd_digit': \['four'\]"):
        load_task("fsdd_digit", data_root=tmp_path)


def test_shared_dev_tasks_load():
    root = shared_data()
    for name, n in [("fsdd_digit", 3000), ("fsdd_speaker", 3000), ("spcv2_12", 2706), ("esc50_f4", 392)]:
        if not (root / builtin_specs()[name].csv).exists():
            continue
        task = load_task(name, data_root=root)
        assert len(task) == n and len(task.classes) == builtin_specs()[name].n_classes
    task = load_task("esc50_f4", data_root=root)
    folds = task.folds()
    assert [len(f.test) for f in folds] == [99, 98, 98, 97]
    assert all(len(f.valid) == round(0.1 * (392 - len(f.test))) for f in folds)


def test_a_csv_task_without_unit_sec_says_it_gets_the_default(tmp_path, capsys):
    rows = [(f"audio/{i}.wav", "ab"[i % 2], ["train", "test"][i % 2]) for i in range(4)]
    path = _write_task(tmp_path, rows)
    assert load_task(path).unit_sec == DEFAULT_UNIT_SEC == 1.0
    assert capsys.readouterr().err == "task.csv: clips cut/padded to 1 s, the default for a task CSV " \
                                      "(--unit_sec to change)\n"
    assert load_task(path, unit_sec=0.5).unit_sec == 0.5
    assert capsys.readouterr().err == ""
