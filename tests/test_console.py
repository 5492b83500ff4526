"""What the commands print without a terminal (SLURM, nohup, CI, ``| cat``): plain progress lines at
a steady pace, summary tables whole, ``--quiet`` and ``--log-format json``.

Under pytest's capture stdout and stderr are not terminals, exactly the case of a log. The pacing
itself is checked with a fake clock (no timed tests).
"""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from rich.table import Table

import cli.console as console
from cli.console import ProgressLog, StageLines, format_seconds, plain_table, print_table
from cli.main import main
from cli.train import TrainLines
from landscape.train import TrainProgress

FAST = ["--model", "mlp", "--batch-size", "16", "--log-every", "5", "--threads", "1"]
PROGRESS = re.compile(
    r"^(?P<run>[\w.-]+): step (?P<step>\d+)/(?P<steps>\d+) \((?P<pct>\d+)%\)  loss \d+\.\d{4}.*"
    r"  elapsed [\dhms.]+  eta [\dhms.]+$"
)


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log(json_lines: bool = False) -> tuple[ProgressLog, Clock, io.StringIO]:
    clock, stream = Clock(), io.StringIO()
    return ProgressLog("test", json_lines, clock=clock, heartbeat=False, stream=stream), clock, stream


# ----------------------------------------------------------------------------------------------
# Pacing (fake clock)


def test_stage_lines_print_each_new_kind_and_every_tenth_of_a_count():
    log, clock, stream = _log()
    stages = StageLines(log)
    stages("loading model and data")
    assert stream.getvalue() == ""  # held back until the work is under way
    clock.now += 2.0
    stages("eigenvalues (Lanczos)")
    for layer in ("net.0.weight", "net.2.weight", "net.4.weight"):  # one kind: numbers aside
        stages(f"per-layer lambda_max: {layer}")
    for row in range(1, 41):
        stages(f"2D slice, row {row}/40")
    log.close(True)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "loading model and data  elapsed 0.0s"
    assert lines[1] == "eigenvalues (Lanczos)  elapsed 2.0s"
    assert lines[2] == "per-layer lambda_max: net.0.weight  elapsed 2.0s"
    rows = [line for line in lines if "2D slice" in line]
    # the first row (a new kind), then each tenth of the 40 rows
    assert [re.search(r"row (\d+)/40", line).group(1) for line in rows] == [
        "1",
        *(str(4 * k) for k in range(1, 11)),
    ]
    assert all("%)" in line and "eta" in line for line in rows)
    assert len(lines) == 3 + len(rows)


def test_a_repeated_stage_prints_again_after_thirty_seconds_and_the_heartbeat_fills_gaps():
    log, clock, stream = _log()
    stages = StageLines(log, hold_first=False)
    stages("curvature diagnostics at step 10")
    stages("curvature diagnostics at step 20")  # same kind, too soon
    clock.now += console.PACE_SECONDS
    stages("curvature diagnostics at step 30")
    assert [line.split("  ")[0] for line in stream.getvalue().splitlines()] == [
        "curvature diagnostics at step 10",
        "curvature diagnostics at step 30",
    ]
    log.tick()  # nothing is due yet
    clock.now += console.PACE_SECONDS + 5
    log.tick()
    assert stream.getvalue().splitlines()[-1] == "still: curvature diagnostics at step 30  elapsed 1m05s"


def test_a_failure_in_the_first_stage_prints_no_progress():
    log, _, stream = _log()
    StageLines(log)("loading model and data")
    log.close(False)
    assert stream.getvalue() == ""


def test_training_lines_every_tenth_and_every_thirty_seconds():
    log, clock, stream = _log()
    lines = TrainLines(log)
    diag = {"eval_loss": 2.51, "lambda_max": 14.3, "trace": 120.0}
    for step in range(0, 301):
        clock.now += 0.1
        lines(TrainProgress("sam", step, 300, "train", 2.4312, diag if step >= 10 else None))
        if step == 150:
            lines(TrainProgress("sam", step, 300, "diagnose", 2.4312, diag))
            clock.now += console.PACE_SECONDS  # a slow diagnostic: the next step is due
    lines(TrainProgress("sam", 300, 300, "analysis", 2.0, None, "eigenvalues (Lanczos)"))
    lines(TrainProgress("sam", 300, 300, "done", 2.0, diag))
    log.close(True)
    out = stream.getvalue().splitlines()
    steps = [int(m.group("step")) for line in out if (m := PROGRESS.match(line))]
    assert steps == [30, 60, 90, 120, 150, 151, 180, 210, 240, 270, 300]
    first = out[0]
    assert first.startswith(
        "sam: step 30/300 (10%)  loss 2.4312  eval 2.51  lmax 14.3  trH 120  elapsed 3.1s  eta "
    )
    assert out[-2] == "sam: final analysis: eigenvalues (Lanczos)  elapsed 1m00s"
    assert out[-1].startswith("sam: done, 300 steps")


def test_json_lines_parse_and_carry_the_numbers():
    log, clock, stream = _log(json_lines=True)
    lines = TrainLines(log)
    for step in range(0, 11):
        clock.now += 1.0
        lines(TrainProgress("adamw", step, 10, "train", 1.5, {"eval_loss": 1.6, "lambda_max": 3.0}))
    log.close(True)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(events) == 10 and all(e["event"] == "progress" and e["command"] == "test" for e in events)
    assert events[-1]["step"] == 10 and events[-1]["percent"] == 100.0 and events[-1]["eta_s"] == 0.0
    assert events[3]["diagnostics"]["lambda_max"] == 3.0 and events[3]["elapsed_s"] == pytest.approx(5.0)


def test_format_seconds():
    assert [format_seconds(s) for s in (0.04, 9.96, 12.4, 59.7, 65, 3 * 3600 + 120)] == [
        "0.0s",
        "10s",
        "12s",
        "1m00s",
        "1m05s",
        "3h02m",
    ]


# ----------------------------------------------------------------------------------------------
# Tables printed whole


def _table() -> Table:
    table = Table(title="training summary")
    for column in ("run", "steps", "train", "unigram", "lmax(H)", "tr(H)", "tau_logit"):
        table.add_column(column, justify="left" if column == "run" else "right")
    table.add_row("precond-func-sam-rho0.001", "300", "0.1934", "2.3026", "14.31", "120.4", "0.823")
    return table


def test_a_table_is_whole_in_a_log_and_in_a_narrow_terminal():
    text = plain_table(_table())
    assert text.splitlines() == [
        "training summary",
        "run                        steps   train  unigram  lmax(H)  tr(H)  tau_logit",
        "precond-func-sam-rho0.001    300  0.1934   2.3026    14.31  120.4      0.823",
    ]
    narrow = Console(file=io.StringIO(), force_terminal=True, width=40)
    print_table(_table(), narrow)
    assert "…" not in narrow.file.getvalue() and "0.1934" in narrow.file.getvalue()
    wide = Console(file=io.StringIO(), force_terminal=True, width=200)
    print_table(_table(), wide)
    assert "┃" in wide.file.getvalue() or "│" in wide.file.getvalue()  # boxed where it fits


# ----------------------------------------------------------------------------------------------
# The commands, their output captured (not a terminal)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """``landscape train`` with diagnostics and a final analysis, its output captured as in a log
    (by hand: ``capsys`` is per test)."""
    import contextlib

    out = tmp_path_factory.mktemp("log") / "run"
    args = [
        "train",
        *FAST,
        "--method",
        "sam",
        "--steps",
        "40",
        "--diagnose-every",
        "20",
        "--diagnose-samples",
        "32",
        "--final-samples",
        "64",
        "--out",
        out,
    ]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return {"code": code, "out": stdout.getvalue(), "err": stderr.getvalue(), "dir": out}


def test_train_in_a_log_prints_progress_lines_and_a_whole_summary(trained):
    assert trained["code"] == 0, trained["err"]
    lines = trained["err"].splitlines()
    progress = [m for line in lines if (m := PROGRESS.match(line))]
    assert [int(m.group("pct")) for m in progress] == list(range(10, 101, 10))
    assert all(m.group("run") == "sam" for m in progress)
    assert "  eval " in progress[-1].group(0) and "  lmax " in progress[-1].group(0)  # the last diagnostics
    assert any(line.startswith("sam: final analysis: ") for line in lines)
    table = trained["out"]
    assert "…" not in table and "..." not in table
    header = table.splitlines()[1].split()
    assert header[:6] == ["run", "steps", "train", "eval", "acc", "unigram"] and header[-1] == "s"
    row = table.splitlines()[2].split()
    summary = json.loads((trained["dir"] / "summary.json").read_text())
    expected = [
        summary["train_loss"],
        summary["eval_loss"],
        summary["eval_accuracy"],
        summary["unigram_eval_loss"],
    ]
    assert row[2:6] == [f"{v:.4g}" if i != 2 else f"{v:.3g}" for i, v in enumerate(expected)]
    assert row[6] == f"{summary['lambda_max']:.4g}" and row[7] == f"{summary['trace']:.4g}"
    assert table.splitlines()[-1] == f"wrote {trained['dir']}"


def test_train_quiet_and_json_lines(tmp_path, capsys):
    out = tmp_path / "q"
    code, stdout, err = run(["train", *FAST, "--steps", "10", "--out", out, "--quiet"], capsys)
    assert code == 0 and stdout == f"{out}\n" and err == ""
    out = tmp_path / "j"
    code, stdout, err = run(["train", *FAST, "--steps", "10", "--out", out, "--log-format", "json"], capsys)
    assert code == 0 and err == ""
    events = [json.loads(line) for line in stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("progress") == 10 and kinds[-2:] == ["done", "summary"]
    final = events[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert final["command"] == "train" and final["folder"] == str(out)
    assert final["runs"][0]["eval_loss"] == summary["eval_loss"]
    # --quiet with JSON lines: the summary alone
    code, stdout, err = run(
        ["train", *FAST, "--steps", "10", "--out", tmp_path / "qj", "--log-format", "json", "-q"], capsys
    )
    assert code == 0 and [json.loads(line)["event"] for line in stdout.splitlines()] == ["summary"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--log-format", "xml"], "--log-format must be text or json, got 'xml'"),
        (["--log-format", "json", "--json"], "give one of them"),
    ],
)
def test_bad_log_options_are_one_line_errors(args, fragment, tmp_path, capsys):
    for command in (["train", *FAST, "--steps", "5"], ["analyze", "--model", "mlp"]):
        code, stdout, err = run([*command, "--out", tmp_path / "x", *args], capsys)
        assert code == 1 and stdout == "" and err.count("\n") == 1 and fragment in err


ANALYZE = ["analyze", "--model", "mlp", "--samples", "64", "--trace-samples", "8", "--max-iter", "20"]


def test_analyze_in_a_log_quiet_and_json(tmp_path, capsys):
    code, stdout, err = run([*ANALYZE, "--metrics", "eigen,trace", "--out", tmp_path / "a"], capsys)
    assert code == 0
    stages = err.splitlines()
    labels = [s.split("  elapsed ")[0] for s in stages]
    assert labels[0] == "loading model and data" and labels[1].startswith("plan: eigen, trace on 64 samples")
    assert labels[2] == "building operators"  # the size of the job is stated before the work
    assert all(re.search(r"  elapsed [\dhms.]+$", s) for s in stages)
    assert "…" not in stdout and "lambda_max(H)" in stdout

    code, stdout, err = run([*ANALYZE, "--metrics", "eigen", "--out", tmp_path / "q", "--quiet"], capsys)
    assert code == 0 and err == ""
    assert stdout.splitlines() == [str(path) for path in sorted((tmp_path / "q").iterdir())]

    code, stdout, err = run(
        [*ANALYZE, "--metrics", "eigen", "--out", tmp_path / "j", "--log-format", "json"], capsys
    )
    assert code == 0 and err == ""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[0] == {
        **events[0],
        "event": "stage",
        "command": "analyze",
        "stage": "loading model and data",
    }
    assert events[-1]["event"] == "summary" and events[-1]["values"]["lambda_max"] > 0
    assert "density" not in events[-1]["values"]


def test_bad_input_in_the_first_stage_prints_only_the_error(tmp_path, capsys):
    code, stdout, err = run(["analyze", "--model", "nope", "--out", tmp_path / "x"], capsys)
    assert code == 1 and stdout == "" and err.startswith("error: unknown model") and err.count("\n") == 1


def test_report_quiet_and_json(trained, tmp_path, capsys):
    run_dir = trained["dir"]
    args = ["report", run_dir, "--no-slices", "--no-pruning"]
    code, stdout, err = run([*args, "--out", tmp_path / "r", "--quiet"], capsys)
    assert code == 0 and err == ""
    assert stdout.splitlines() == [str(tmp_path / "r" / "index.html"), str(tmp_path / "r" / "report.md")]
    code, stdout, err = run([*args, "--out", tmp_path / "j", "--log-format", "json"], capsys)
    assert code == 0 and err == ""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert {e["event"] for e in events[:-1]} == {"stage"} and events[-1]["event"] == "summary"
    assert events[-1]["index"] == str(tmp_path / "j" / "index.html") and events[-1]["summary"]
    code, stdout, err = run([*args, "--out", tmp_path / "t"], capsys)
    assert code == 0 and any(line.startswith("reading run folders  elapsed ") for line in err.splitlines())
    assert stdout.splitlines()[-1].startswith("report: ")


def test_a_terminal_gets_the_live_display_and_a_log_does_not(monkeypatch):
    terminal = Console(file=io.StringIO(), force_terminal=True)
    log = Console(file=io.StringIO(), force_terminal=False)
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert console.Output().progress_kind(terminal) == "live"
    assert console.Output().progress_kind(log) == "lines"
    assert console.Output(json_lines=True).progress_kind(terminal) == "json"
    assert console.Output(quiet=True).progress_kind(log) == "off"
    assert console.Output(document=True).progress_kind(log) == "off"
    assert console.Output(leader=False).progress_kind(log) == "off"
    monkeypatch.setenv("TTY_INTERACTIVE", "0")
    assert console.Output().progress_kind(terminal) == "lines"
