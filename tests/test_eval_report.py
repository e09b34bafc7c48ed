"""Evaluation reports: results.md renders as a GitHub table, one seed shows no spread, results.json redraws the
pictures (scores.png, confusion matrices); curves.png of a pretraining log."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from byola.evaluation.report import redraw, write_report
from byola.evaluation.run import TaskResult
from byola.plots import plot_run
from byola.provenance import environment


def _result(task: str, label: str, score: float, seeds: int, n_classes: int = 4) -> TaskResult:
    rng = np.random.default_rng(len(label))
    y_true = rng.integers(0, n_classes, 60).tolist()
    return TaskResult(task=task, metric="accuracy", score=score, std=1.5 if seeds > 1 else 0.0, n_train=40,
                      n_valid=10, n_test=60, checkpoint=label, seed_count=seeds, lr=1e-3, probe="linear",
                      hyper_name="lr", hyper=1e-3, n_folds=1, n_classes=n_classes, unit_sec=1.0,
                      seed_scores=[score] * seeds, valid_score=score, lr_grid=[1e-3], wall_sec=1.0, cache_hits=0,
                      label=label, classes=[f"c{i}" for i in range(n_classes)], y_true=y_true,
                      y_pred=[(y + (i % 3 == 0)) % n_classes for i, y in enumerate(y_true)])


def _table_rows(md: str) -> list[list[str]]:
    """The first table of a markdown text, split into cells the way GitHub does (an escaped \\| is no border)."""
    lines = [l for l in md.split("\n\n")[2].splitlines()]
    return [[c.strip() for c in __import__("re").split(r"(?<!\\)\|", l)[1:-1]] for l in lines]


@pytest.mark.parametrize("seeds", [1, 3])
def test_results_md_is_a_table_and_one_seed_has_no_spread(tmp_path, seeds):
    results = [_result("fsdd_digit", "ckpt|v1@abc", 80.0, seeds), _result("fsdd_digit", "random-init", 50.0, seeds)]
    write_report(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    rows = _table_rows(md)
    assert all(len(r) == 4 for r in rows), rows  # task, metric and two embedders in every row
    assert rows[0][2] == "ckpt\\|v1@abc"
    assert rows[2][2] == ("80.00" if seeds == 1 else "80.00 ± 1.50")
    assert ("±" in md.split("|")[0]) == (seeds > 1)  # the heading names the spread only when there is one


def test_results_md_ends_with_how_to_reproduce_it_and_provenance_json_keeps_the_record(tmp_path):
    env = environment()
    sha = "ab" * 32
    provenance = {"command": "byola evaluate a.csv --checkpoint m.safetensors", "environment": env,
                  "embedders": [{"label": "m|v1", "name": "m|v1", "checkpoint": {"path": "/x/m.safetensors",
                                                                                  "sha256": sha}},
                                {"label": "base", "name": "base"}]}
    results = [_result("a", "m|v1", 70.0, 3), _result("a", "base", 40.0, 3)]
    write_report(results, tmp_path, provenance=provenance)
    md = (tmp_path / "results.md").read_text()
    assert _table_rows(md)[2][2:] == ["70.00 ± 1.50", "40.00 ± 1.50"]  # the score table is unchanged
    section = md[md.index("\n## Reproduce\n") + 1:].splitlines()
    assert section[2:5] == ["```sh", provenance["command"], "```"]
    assert section[6].startswith(f"byola {env['byola_version']}, torch {env['torch_version']}, Python ")
    assert section[-3:] == ["| embedder | checkpoint | SHA-256 |", "|---|---|---|",
                            f"| m\\|v1 | /x/m.safetensors | `{sha}` |"]  # only embedders with a checkpoint
    assert json.loads((tmp_path / "provenance.json").read_text()) == provenance

    write_report(results, tmp_path / "python", provenance={**provenance, "command": None, "embedders": []})
    section = (tmp_path / "python" / "results.md").read_text().split("## Reproduce\n")[1]
    assert "Run from Python" in section and "```" not in section and "SHA-256 |" not in section
    write_report(results, tmp_path / "bare")
    assert "Reproduce" not in (tmp_path / "bare" / "results.md").read_text()
    assert not (tmp_path / "bare" / "provenance.json").exists()


def test_results_json_redraws_scores_and_confusion_matrices(tmp_path):
    results = [_result(t, l, s, 3, n) for t, n in (("a", 4), ("b", 30)) for l, s in (("model", 70.0), ("base", 40.0))]
    write_report(results, tmp_path)
    records = json.loads((tmp_path / "results.json").read_text())
    assert records[0]["classes"] == ["c0", "c1", "c2", "c3"] and len(records[0]["y_pred"]) == 60
    first = {p: p.stat().st_size for p in tmp_path.rglob("*.png")}
    assert tmp_path / "scores.png" in first and len(first) == 5
    for p in first:
        p.unlink()
    written = redraw(tmp_path)
    assert sorted(written) == sorted(first)


def test_curves_png_from_a_pretraining_log(tmp_path):
    columns = ["step", "epoch", "loss", "tau", "lr", "views_mean_before", "views_std_before", "views_mean_after",
               "views_std_after", "lms_mean", "lms_std"]
    with open(tmp_path / "log.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for step in range(1, 101):
            writer.writerow([step, 0, 4 / step ** 0.5, 0.99 + 0.0001 * step, 1e-4, 0.1, 0.9, 0.0, 1.0, 0.0, 1.0])
    path = plot_run(tmp_path)
    assert path == tmp_path / "curves.png" and path.stat().st_size > 10_000


def _plant_links(tmp_path, out, names) -> dict:
    """A link at each output name (relative to ``out``), pointing to a file outside that must stay untouched."""
    victims = {}
    for name in names:
        victim = tmp_path / f"victim_{len(victims)}"
        victim.write_text("precious")
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).symlink_to(victim)
        victims[name] = victim
    return victims


def test_reports_and_pictures_never_write_through_placed_links(tmp_path):
    out = tmp_path / "out"
    results = [_result("a", "model", 70.0, 3), _result("a", "base", 40.0, 3)]
    victims = _plant_links(tmp_path, out, ["results.csv", "results.md", "results.json", "scores.png",
                                           "confusion/model/a.png", "curves.png", "provenance.json"])
    columns = ["step", "epoch", "loss", "tau", "lr"]
    with open(out / "log.csv", "w", newline="") as f:
        csv.writer(f).writerows([columns] + [[s, 0, 1 / s, 0.99, 1e-4] for s in range(1, 11)])
    write_report(results, out, provenance={"command": None, "environment": environment(), "embedders": []})
    plot_run(out)
    for name, victim in victims.items():
        assert victim.read_text() == "precious", name
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())[0]["task"] == "a"


def test_the_confusion_title_states_the_seed_its_counts_come_from():
    """The matrix shows one probe seed's predictions: the title gives that seed's own count and accuracy beside
    the mean over seeds, never the mean alone above counts that do not add up to it."""
    from byola.evaluation.report import confusion_title

    record = {**_result("digits", "random-init", 91.11, 3).row(), "y_true": [0, 1, 2, 3] * 3 + [0, 1, 2],
              "y_pred": [0, 1, 2, 3] * 3 + [0, 1, 3], "classes": ["c0", "c1", "c2", "c3"], "label": "random-init"}
    title = confusion_title(record)
    assert "14 of 15" in title and "93.33%" in title and "91.11%" in title and "3 seeds" in title, title


def test_redraw_of_a_folder_without_results_is_one_clear_error(tmp_path):
    from byola.errors import UsageError

    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(UsageError, match="holds no results yet"):
        redraw(tmp_path)
