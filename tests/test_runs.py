"""The run-folder module (``landscape.runs``): names spelled once, readers that fail in one line,
writers that leave nothing half-written, and the one final analysis shared by training and the demo."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

import landscape.evaluation
import landscape.prune
from landscape import runs
from landscape.errors import UserError
from landscape.train import RunConfig, analyse_final, evaluate, prune_eval, read_run_config, train_run

ROOT = Path(__file__).resolve().parents[1]
RUN_FILE_NAMES = {
    runs.CONFIG_FILE,
    runs.METRICS_FILE,
    runs.CHECKPOINT_DIR,
    runs.FINAL_FILE,
    runs.SUMMARY_FILE,
    runs.ANALYSIS_FILE,
    runs.LAYERS_FILE,
    runs.DENSITY_FILE,
    runs.SUITE_FILE,
    runs.SURFACE_FILE,
    runs.REPORT_HTML,
    runs.REPORT_MARKDOWN,
}


def test_file_names_are_spelled_only_in_the_layout_module():
    spelled = []
    for path in sorted([*(ROOT / "landscape").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        if path == ROOT / "landscape" / "runs" / "layout.py":
            continue
        tree = ast.parse(path.read_text())
        # another format's own layout constant (a Hugging Face folder's config.json) is not ours
        foreign = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id.startswith("HF_") for t in node.targets)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in RUN_FILE_NAMES and id(node) not in foreign:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not spelled, spelled


def test_evaluate_and_prune_eval_have_one_home_re_exported_by_train():
    assert evaluate is landscape.evaluation.evaluate
    assert prune_eval is landscape.prune.prune_eval


# ----------------------------------------------------------------------------------------------
# Layout


def test_checkpoints_are_listed_in_step_order_ignoring_temporary_files(tmp_path):
    folder = tmp_path / runs.CHECKPOINT_DIR
    folder.mkdir()
    for name in ("step-10.pt", "step-2.pt", ".step-30.pt.tmp", "step-x.pt", "notes.txt"):
        (folder / name).write_text("")
    (folder / "step-40.pt").mkdir()  # a folder is no checkpoint
    assert runs.list_checkpoints(tmp_path) == [(2, folder / "step-2.pt"), (10, folder / "step-10.pt")]
    assert runs.latest_checkpoint(tmp_path) == (10, folder / "step-10.pt")
    assert runs.latest_checkpoint(tmp_path / "none") is None
    assert runs.checkpoint_path(tmp_path, 7) == folder / "step-7.pt"


# ----------------------------------------------------------------------------------------------
# Readers


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"is not a run folder \(no config.json\)"),
        ("{not json", "cannot read"),
        ("[1, 2]", "does not hold a JSON object"),
        ('{"version": 99}', "has version 99"),
    ],
)
def test_read_config_fails_in_one_line(tmp_path, text, message):
    if text is not None:
        (tmp_path / runs.CONFIG_FILE).write_text(text)
    with pytest.raises(UserError, match=message) as info:
        runs.read_config(tmp_path)
    assert "\n" not in str(info.value)


def test_read_config_of_a_run_and_the_optional_files(tmp_path):
    (tmp_path / runs.CONFIG_FILE).write_text('{"method": "sam", "version": 1}')
    assert runs.read_config(tmp_path) == {"method": "sam", "version": 1}
    assert runs.read_summary(tmp_path) is None and runs.read_analysis(tmp_path) is None
    (tmp_path / runs.SUMMARY_FILE).write_text('{"eval_loss": 0.5}')
    assert runs.read_summary(tmp_path) == {"eval_loss": 0.5}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"runs": []}, "lists no runs"),
        ({"runs": "sam"}, "lists no runs"),
        ({"runs": [{"method": "sam"}]}, "has a run entry without a folder"),
        ({"runs": [{"folder": "sam", "config": [1]}]}, "the config of run sam is not a JSON object"),
    ],
)
def test_read_suite_fails_in_one_line(tmp_path, payload, message):
    (tmp_path / runs.SUITE_FILE).write_text(json.dumps(payload))
    with pytest.raises(UserError, match=message):
        runs.read_suite(tmp_path)
    with pytest.raises(UserError, match="is not a suite folder"):
        runs.read_suite(tmp_path / "other")


def test_find_run_dirs_of_a_suite_a_run_in_it_and_a_loose_run(tmp_path):
    suite = tmp_path / "suite"
    runs.write_suite(suite, [{"name": "b", "folder": "b"}, {"name": "a", "folder": "a"}])
    for name in ("a", "b"):
        runs.start_run(suite / name, {"name": name})
    runs.start_run(tmp_path / "loose", {"name": "loose"})
    assert runs.find_run_dirs(suite) == [(suite / "b", "suite"), (suite / "a", "suite")]
    assert runs.find_run_dirs(suite / "a") == [(suite / "a", "suite")]
    assert runs.find_run_dirs(tmp_path / "loose") == [(tmp_path / "loose", None)]
    with pytest.raises(UserError, match="neither a run folder"):
        runs.find_run_dirs(tmp_path)
    with pytest.raises(UserError, match="run folder not found"):
        runs.find_run_dirs(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# Writers


def test_truncate_metrics_keeps_whole_records_up_to_the_step(tmp_path):
    records = [{"step": s, "train_loss": 1.0 / (s + 1)} for s in (0, 10, 20, 30)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / runs.METRICS_FILE).write_text(text + '{"step": 40, "tra')  # killed mid-line
    runs.truncate_metrics(tmp_path, 20)
    assert runs.read_metrics(tmp_path) == records[:3]
    (tmp_path / "fresh").mkdir()
    runs.truncate_metrics(tmp_path / "fresh", 0)  # a run killed before its log existed
    assert runs.read_metrics(tmp_path / "fresh") == []


def test_metrics_records_are_strict_json_lines(tmp_path):
    runs.start_run(tmp_path / "run", {"name": "run"})
    with runs.open_metrics(tmp_path / "run") as log:
        runs.append_record(log, {"step": 1, "lambda_max": float("nan"), "time_s": 0.5})
    assert runs.read_metrics(tmp_path / "run") == [{"step": 1, "lambda_max": None, "time_s": 0.5}]
    assert runs.strip_timing({"step": 1, "time_s": 0.5, "diag_time_s": 0.1}) == {"step": 1}


def test_a_fresh_run_refuses_a_folder_that_holds_one_and_an_unstarted_run_is_undone(tmp_path):
    run_dir = tmp_path / "a" / "run"
    runs.check_fresh_folder(run_dir)  # creates nothing
    assert not (tmp_path / "a").exists()
    assert runs.start_run(run_dir, {"name": "run"}) is True
    assert runs.is_run_folder(run_dir) and runs.holds_run(run_dir)
    with pytest.raises(UserError, match="already holds a run; resume it with --resume"):
        runs.check_fresh_folder(run_dir)
    assert runs.start_run(run_dir, {"name": "run"}) is False  # it exists now
    runs.remove_unstarted_run(run_dir, remove_folder=True)
    assert not run_dir.exists() and (tmp_path / "a").is_dir()


def test_output_folders_are_created_in_one_place_with_one_line_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="is not a folder"):
        runs.ensure_writable_dir(blocker / "out")
    with pytest.raises(UserError, match="cannot create output folder"):
        runs.create_output_dir(blocker / "out")
    assert runs.create_output_dir(tmp_path / "x" / "y") is True
    assert runs.create_output_dir(tmp_path / "x" / "y") is False


def test_staged_output_leaves_the_folder_as_it_was_on_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), runs.staged_output(out) as tmp:
        (tmp / "keep.txt").write_text("new")
        (tmp / "extra.txt").write_text("new")
        raise RuntimeError("stop")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "old"


def test_prune_results_are_written_under_their_spelled_names(tmp_path):
    written = runs.write_prune_results(tmp_path, "final", {"results": []}, pd.DataFrame({"sparsity": [0.5]}))
    assert [p.name for p in written] == ["prune-final.json", "prune-final.csv"]
    assert json.loads(written[0].read_text()) == {"results": []}


# ----------------------------------------------------------------------------------------------
# The final analysis, one function for training and the demo


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "adamw"
    train_run(RunConfig(model="mlp", steps=4, batch_size=32, log_every=2, checkpoint_every=0), out)
    return out


def test_a_run_folder_holds_the_layout_files_and_reads_back(run_dir):
    summary = runs.read_summary(run_dir)
    assert summary is not None and summary["completed"]
    expected = [str(p) for p in [*runs.run_files(run_dir), run_dir / runs.SUMMARY_FILE]]
    assert summary["files"] == expected
    assert all(Path(p).exists() for p in expected)
    stored = runs.read_config(run_dir)
    assert stored.pop("provenance")["landscape_version"]  # what made the run: not part of the config
    assert read_run_config(run_dir).to_dict() == stored
    assert runs.read_analysis(run_dir) is None  # no diagnostics: no final analysis by default


def test_analyse_final_writes_the_analysis_with_its_context(run_dir, tmp_path):
    seen = []
    result, written = analyse_final(
        run_dir,
        run="adamw",
        metrics="eigen,density",
        seed=3,
        samples=64,
        options={"max_iter": 10, "density_steps": 8},
        step=4,
        context={"eval_loss": 0.5},
        figures=False,
        progress=seen.append,
    )
    assert [p.name for p in written] == [runs.ANALYSIS_FILE]  # no density.png without figures
    payload = runs.read_analysis(run_dir)
    context = payload["context"]
    assert (context["run"], context["step"], context["seed"], context["samples"]) == ("adamw", 4, 3, 64)
    assert context["eval_loss"] == 0.5 and context["checkpoint"] == str(run_dir / runs.FINAL_FILE)
    assert payload["lambda_max"] == pytest.approx(result.lambda_max) and payload["density"]
    assert seen  # the stages were reported
    # the same call with figures draws density.png, and the numbers repeat with the seed
    again, written = analyse_final(
        run_dir,
        run="adamw",
        metrics="eigen,density",
        seed=3,
        samples=64,
        options={"max_iter": 10, "density_steps": 8},
    )
    assert [p.name for p in written] == [runs.ANALYSIS_FILE, runs.DENSITY_FILE]
    assert again.lambda_max == result.lambda_max
    assert "step" not in runs.read_analysis(run_dir)["context"]
