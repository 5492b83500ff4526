"""Reliability: one writer per output folder, escaped Markdown, no debris or stale outputs, a full
disk in one line, checked resume steps, and one-line errors for malformed run folders.

Each finding of a hostile test of the commands has a test here: two real processes for the locks
(and two ranks of a gloo group under one lock), a real ``kill -9`` for debris, a real tiny file
system (a 2 MB tmpfs, where this machine lets root mount one) and an injected ``ENOSPC`` for the
full disk, tampered checkpoints and files for the rest.
"""

from __future__ import annotations

import datetime
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cli.main import main
from landscape import runs
from landscape.checkpoints import save_atomic
from landscape.errors import UserError
from landscape.report.build import build_report
from landscape.report.document import (
    Bullets,
    FigureBlock,
    Paragraph,
    Report,
    Section,
    TableBlock,
    external_references,
    render_html,
    render_markdown,
    write_report,
)
from landscape.report.tables import Table
from landscape.runs.layout import surface_figure_name
from landscape.train import RunConfig, train_run

PYTHON = sys.executable
TINY = {"model": "mlp", "steps": 6, "batch_size": 32, "log_every": 2, "checkpoint_every": 3}


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


PROGRESS_LINE = re.compile(r"  elapsed [\dhms.]+(  eta [\dhms.]+)?$")


def one_line_error(code: int, err: str) -> str:
    """The single ``error:`` line of a failed command: no traceback, and on stderr nothing else
    but the progress lines a command logs without a terminal before it stops."""
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]  # a spinner may leave a blank line
    *progress, last = lines or [""]
    assert all(PROGRESS_LINE.search(line) for line in progress), err
    assert last.startswith("error: ") and "Traceback" not in err, err
    return last + "\n"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished six-step MLP run with checkpoints at steps 3 and 6."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_run(RunConfig(**TINY), run_dir)
    return run_dir


@pytest.fixture
def unfinished_run(finished_run, tmp_path) -> Path:
    """A copy of the run as it stood after step 3 (the last checkpoint step-3.pt)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    for name in (runs.FINAL_FILE, runs.SUMMARY_FILE, f"{runs.CHECKPOINT_DIR}/step-6.pt"):
        (run_dir / name).unlink()
    return run_dir


@contextmanager
def held_by_another_process(folder: Path) -> Iterator[int]:
    """A second real process holds ``folder`` (``locked_output_dir``) until the block ends; yields its pid."""
    code = (
        "import sys\n"
        "from landscape.runs import locked_output_dir\n"
        "with locked_output_dir(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [PYTHON, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=120)


# ----------------------------------------------------------------------------------------------
# One writer per folder


def test_every_writing_command_refuses_a_folder_another_process_holds(tmp_path, capsys):
    held = tmp_path / "held"
    held.mkdir()
    (held / "notes.txt").write_text("mine")
    (held / runs.SUITE_FILE).write_text('{"version": 1, "runs": [{"name": "a", "config": {}}]}')
    (tmp_path / "x.pt").write_bytes(b"")
    commands = [
        ["train", "--model", "mlp", "--steps", "2", "--out", held],
        ["train", "--model", "mlp", "--steps", "2", "--method", "adamw", "--method", "sam", "--out", held],
        ["train", "--resume", held],  # a suite folder (suite.json)
        ["analyze", "--model", "mlp", "--data", "digits", "--out", held],
        ["surface", "--model", "mlp", "--data", "digits", "--out", held],
        ["prune-eval", tmp_path / "x.pt", "--out", held],
        ["report", tmp_path / "runs", "--out", held],
        ["demo", "--quick", "--out", held],
    ]
    with held_by_another_process(held) as pid:
        before = snapshot(held)  # the holder's lock file included
        for args in commands:
            err = one_line_error(*cli(args, capsys)[::2])
            assert err == f"error: {held} is in use by process {pid}\n", (args, err)
            assert snapshot(held) == before, args
        (held / runs.SUITE_FILE).unlink()  # now a plain run folder: train --resume of a run
        before = snapshot(held)
        err = one_line_error(*cli(["train", "--resume", held], capsys)[::2])
        assert err == f"error: {held} is in use by process {pid}\n"
        assert snapshot(held) == before
    assert not (held / runs.LOCK_FILE).exists()  # the holder let go and removed its lock file


def test_a_second_training_into_a_running_folder_is_refused_and_a_killed_holder_frees_it(tmp_path, capsys):
    """Two real `landscape train` processes: the second one stops at once; kill -9 of the first
    leaves its last checkpoint valid and the folder free for the next writer."""
    out = tmp_path / "run"
    train = [PYTHON, "-m", "cli.main", "train", "--model", "mlp", "--threads", "1", "--log-every", "5"]
    first = subprocess.Popen(
        [*train, "--steps", "1000000", "--checkpoint-every", "50", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not runs.list_checkpoints(out):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first run wrote no checkpoint"
            time.sleep(0.2)
        assert (out / runs.LOCK_FILE).read_text().strip() == str(first.pid)
        second = subprocess.run([*train, "--steps", "2", "--out", str(out)], capture_output=True, text=True)
        assert second.returncode == 1
        assert second.stderr == f"error: {out} is in use by process {first.pid}\n"
        code = main(["train", "--resume", str(out)])  # this process, a third writer
        assert code == 1 and one_line_error(code, capsys.readouterr().err) == second.stderr
        assert json.loads((out / runs.CONFIG_FILE).read_text())["steps"] == 1000000  # not overwritten
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    step, last = runs.latest_checkpoint(out)
    state = runs.load_run_checkpoint(last)
    assert runs.check_checkpoint_step(last, state, 1000000) == step
    with runs.locked_output_dir(out):  # the kernel released the dead holder's lock
        assert (out / runs.LOCK_FILE).read_text().strip() == str(os.getpid())
        assert not [p for p in out.rglob("*") if runs.is_debris(p.name)]


def test_the_lock_is_reentrant_and_a_failed_first_write_leaves_no_folder(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError, match="boom"), runs.locked_output_dir(out):
        assert (out / runs.LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with runs.locked_output_dir(out):  # the same process again: nested, no conflict
            pass
        assert (out / runs.LOCK_FILE).exists()
        raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()  # created for the write, nothing written: gone
    with runs.locked_output_dir(out):
        (out / "kept.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with runs.locked_output_dir(existing):
        pass
    assert existing.is_dir()  # not ours to remove


def test_a_suite_whose_first_run_fails_before_it_began_leaves_no_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "once_models.py").write_text(
        "import torch\n"
        "from landscape.errors import UserError\n"
        "class Once(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.linear = torch.nn.Linear(64, 10)\n"
        "        self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if self.calls > 1:\n"
        "            raise UserError('this model only runs once')\n"
        "        return self.linear(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "a" / "suite"
    args = [
        "train",
        "--model",
        "once_models:Once",
        "--data",
        "digits",
        "--method",
        "adamw",
        "--method",
        "sam",
    ]
    err = one_line_error(*cli([*args, "--out", out], capsys)[::2])
    assert err == "error: this model only runs once\n"
    assert not (tmp_path / "a").exists()


def _locked_worker(rank: int, store: str, folder: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        try:
            with runs.locked_output_dir(folder):
                message = "entered"
        except UserError as exc:
            message = str(exc)
        dist.barrier()  # both ranks got here: nobody waits for the other
        (Path(store).parent / f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_under_torchrun_rank_0_takes_the_folder_and_every_rank_learns_it_failed(tmp_path):
    folder = tmp_path / "out"
    with runs.locked_output_dir(folder):  # this process holds it; the two ranks are other processes
        mp.spawn(_locked_worker, args=(str(tmp_path / "store"), str(folder)), nprocs=2, join=True)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert messages[0] == f"{folder} is in use by process {os.getpid()}"
    assert messages[1].startswith("the leading process could not take")
    # (ranks that take a free folder: tests/test_distributed.py trains and analyses under the lock)


# ----------------------------------------------------------------------------------------------
# report.md escaped; the external-reference check reads what the page loads


HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click me](https://evil.example/x)",
    "![pixel](https://evil.example/p.png)",
    "*bold* _under_ `code` ~~gone~~ a|b",
    "www.evil.example url(x) @import 'y'",
    "- a list item",
    "# a heading",
    "1. a numbered item",
    "back\\slash &amp; &lt;b&gt;",
]


def _hostile_report() -> Report:
    table = Table(headers=["run", HOSTILE[0]], rows=[[text, "1.0"] for text in HOSTILE])
    return Report(
        title=" ".join(HOSTILE[:3]),
        intro=[Paragraph(text) for text in HOSTILE] + [Bullets(HOSTILE)],
        sections=[Section(HOSTILE[4], [TableBlock(table)])],
    )


def _rendered_markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)


def test_markdown_shows_hostile_text_as_text(tmp_path):
    report = _hostile_report()
    markdown = render_markdown(report)
    rendered = _rendered_markdown(markdown)
    forbidden = (
        "<script",
        "<img",
        "<a ",
        "<em>",
        "<strong>",
        "<code>",
        "<s>",
        "<h2>a heading",
        "<ol",
        "<li>a list",
    )
    for tag in forbidden:
        assert tag not in rendered, (tag, rendered)
    assert rendered.count("<h1>") == 1 and "<ul>" in rendered  # the document's own list, nothing else
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []

        def handle_data(self, data):
            self.parts.append(data)

    parser = Text()
    parser.feed(rendered)
    shown = "".join(parser.parts)
    for text in HOSTILE:  # every text is shown exactly as it was given
        assert text in shown, (text, shown)
    page = render_html(report)
    assert external_references(page) == []
    assert "<script" not in page and "<img src=x" not in page


def test_the_reference_check_reads_what_the_page_would_load():
    assert external_references("<p>url(x) @import https://e.example/x src='y'</p>") == []
    leaks = external_references(
        '<img src="https://e.example/a.png"><a href="//e.example">x</a><link rel=stylesheet href=s.css>'
        '<p style="background: url(x.png)">x</p><style>@import "y.css";</style><b onclick="x()">b</b>'
        '<meta http-equiv="refresh" content="0; url=https://e.example"><iframe></iframe>'
        '<img src="data:image/png;base64,AAAA"><a href="#top">top</a>'
    )
    assert len(leaks) == 9, leaks


def test_a_report_on_runs_with_hostile_names_is_written_escaped(finished_run, tmp_path):
    suite = tmp_path / "suite url(x) @import <script>alert(1)<\\script> [l](javascript:alert)"
    suite.mkdir()
    shutil.copytree(finished_run, suite / "run")
    config = json.loads((suite / "run" / runs.CONFIG_FILE).read_text())
    (suite / runs.SUITE_FILE).write_text(
        json.dumps({"version": 1, "runs": [{"name": "run", "config": config}]})
    )
    out = tmp_path / "report"
    title = "<img src=x onerror=alert(1)> *T* url(y) @import"
    result = build_report([suite], out, title=title, slices=False, sparsities=(0.5,), prune_targets=64)
    markdown = (out / runs.REPORT_MARKDOWN).read_text(encoding="utf-8")
    page = (out / runs.REPORT_HTML).read_text(encoding="utf-8")
    rendered = _rendered_markdown(markdown)
    assert "<script" not in rendered and "<img src=x" not in rendered and "<a href" not in rendered
    assert "<script" not in page and "<img src=x" not in page and external_references(page) == []
    assert "url(y) @import" in page  # shown as text
    assert all(runs.report_output(p.name) for p in result.files), result.files


# ----------------------------------------------------------------------------------------------
# Debris and stale files


def test_debris_of_a_writer_killed_mid_write_goes_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from landscape.runs import staged_output, write_atomic\n"
        "out = Path(sys.argv[1])\n"
        "with staged_output(out) as tmp:\n"
        "    (tmp / 'analysis.json').write_text('{}')\n"
        "    def render(path):\n"
        "        path.write_text('half')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    write_atomic(out / 'checkpoints' / 'step-5.pt', render)\n"
    )
    killed = subprocess.run([PYTHON, "-c", code, str(out)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    debris = [p for p in out.rglob("*") if runs.is_debris(p.name)]
    assert any(p.is_dir() and p.name.startswith(runs.STAGING_PREFIX) for p in debris), debris
    assert any(p.parent.name == runs.CHECKPOINT_DIR and p.name.endswith(".tmp") for p in debris), debris
    (out / ".hidden-notes").write_text("mine")
    with runs.locked_output_dir(out):
        pass
    assert not [p for p in out.rglob("*") if runs.is_debris(p.name)]
    assert (out / ".hidden-notes").read_text() == "mine"


def test_a_writer_in_a_held_folder_keeps_its_temporary_files(tmp_path):
    """prune-eval writes beside a checkpoint by default: holding a run's checkpoints/ while the
    run trains must not remove the checkpoint the trainer is writing."""
    checkpoints = tmp_path / "run" / runs.CHECKPOINT_DIR
    checkpoints.mkdir(parents=True)
    partial = checkpoints / ".step-5.pt.abcd1234.tmp"
    assert runs.is_debris(partial.name)
    with held_by_another_process(tmp_path / "run"):
        partial.write_text("being written")  # by the run's writer, the holder
        with runs.locked_output_dir(checkpoints):
            pass
        assert partial.exists()
    with runs.locked_output_dir(checkpoints):  # nobody writes the run now: it is debris
        pass
    assert not partial.exists()


def test_a_new_analysis_replaces_the_previous_set(tmp_path):
    from helpers import tiny_case
    from landscape.analysis import analyze

    model, data, loss = tiny_case("mlp")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("notes.txt", "screenshot.png"):
        (out / name).write_text("mine")
    full = analyze(model, data, loss, "eigen,layers,density", top_k=1, max_iter=20, seed=0)
    written = runs.write_analysis(full, out)
    assert {p.name for p in written} == set(runs.ANALYSIS_OUTPUTS)
    fewer = analyze(model, data, loss, "eigen", top_k=1, max_iter=20, seed=0)
    runs.write_analysis(fewer, out)
    assert sorted(p.name for p in out.iterdir()) == [runs.ANALYSIS_FILE, "notes.txt", "screenshot.png"]
    assert not json.loads((out / runs.ANALYSIS_FILE).read_text()).get("layers")


def test_a_new_report_replaces_the_previous_set_and_leaves_other_files(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    def figure(name: str) -> FigureBlock:
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1])
        return FigureBlock.from_figure(name, fig, name)

    out = tmp_path / "rep"
    out.mkdir()
    for name in ("screenshot.png", "mine.csv", surface_figure_name("path")):
        (out / name).write_text("mine")
    big = Report("r", sections=[Section("s", [figure("g-loss.png"), figure("g-density.png")])])
    big.csvs = {"comparison.csv": pd.DataFrame({"a": [1]}), "pruning.csv": pd.DataFrame({"a": [1]})}
    write_report(big, out)
    small = Report("r", sections=[Section("s", [figure("g-loss.png")])])
    small.csvs = {"comparison.csv": pd.DataFrame({"a": [2]})}
    write_report(small, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "comparison.csv",
            "g-loss.png",
            "mine.csv",
            "screenshot.png",
            surface_figure_name("path"),
            runs.REPORT_HTML,
            runs.REPORT_MARKDOWN,
        ]
    )


def test_the_committed_demo_report_is_exactly_the_reports_own_files():
    """Every file `landscape demo` wrote into reports/demo (rho sweep and vision/language contrast
    included) is one the report owns; the screenshot beside it is not."""
    demo = Path(__file__).resolve().parents[1] / "reports" / "demo"
    names = sorted(p.name for p in demo.iterdir() if p.is_file())
    assert {runs.REPORT_HTML, runs.REPORT_MARKDOWN, "tau-vision-vs-language.png"} <= set(names)
    assert [n for n in names if not runs.report_output(n)] == ["screenshot.png"]


@pytest.mark.parametrize(
    ("owned", "ours", "theirs"),
    [
        (runs.surface_output, ["surface.json", "surface-line.png", "surface-plane.png"], ["analysis.json"]),
        (runs.prune_output("final"), ["prune-final.json", "prune-final.csv"], ["prune-step-3.json"]),
        (runs.analysis_output, ["analysis.json", "layers.csv", "density.png"], ["surface.json", "x.png"]),
    ],
)
def test_each_command_replaces_exactly_the_names_it_owns(tmp_path, owned, ours, theirs):
    for name in ours + theirs:
        (tmp_path / name).write_text("old")
    with runs.staged_output(tmp_path, owned) as tmp:
        (tmp / ours[0]).write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours[0], *theirs])
    assert (tmp_path / ours[0]).read_text() == "new"


# ----------------------------------------------------------------------------------------------
# A full disk


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_and_leaves_files_as_they_were(tmp_path, monkeypatch):
    target = tmp_path / "out" / "ckpt.pt"
    save_atomic({"w": torch.ones(2)}, target)
    before = target.read_bytes()

    def torch_short_write(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4304")

    monkeypatch.setattr(torch, "save", torch_short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(2 << 20, 2 << 20, 0))
    with pytest.raises(
        UserError, match=r"^the disk is full: cannot write .*ckpt\.pt \(0 bytes free there\)$"
    ):
        save_atomic({"w": torch.zeros(2)}, target)
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["ckpt.pt"]
    monkeypatch.undo()

    with pytest.raises(UserError, match=r"^the disk is full: cannot write .*config\.json"):
        runs.write_atomic(tmp_path / "out" / "config.json", _enospc)
    fresh = tmp_path / "fresh" / "analysis"
    with pytest.raises(UserError, match=r"^the disk is full: cannot write .*analysis"):
        with runs.staged_output(fresh, runs.analysis_output) as tmp:
            _enospc(tmp)
    assert not fresh.exists()  # no empty folder left by a failed first write

    class FullLog(io.StringIO):
        name = str(tmp_path / "metrics.jsonl")
        write = _enospc

    with pytest.raises(UserError, match=r"^the disk is full: cannot write .*metrics\.jsonl"):
        runs.append_record(FullLog(), {"step": 1})


def test_a_full_disk_mid_training_keeps_the_last_good_checkpoint(unfinished_run, monkeypatch, capsys):
    """Injected: the checkpoint after the last good one cannot be written."""
    original = torch.save
    calls = []

    def save_once_then_fail(obj, f, *args, **kwargs):
        calls.append(1)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    good = (unfinished_run / "checkpoints" / "step-3.pt").read_bytes()
    monkeypatch.setattr(torch, "save", save_once_then_fail)
    code, _, err = cli(["train", "--resume", unfinished_run], capsys)
    monkeypatch.setattr(torch, "save", original)
    assert calls and "the disk is full: cannot write" in one_line_error(code, err) and "step-6.pt" in err
    assert (unfinished_run / "checkpoints" / "step-3.pt").read_bytes() == good
    assert [p.name for p in (unfinished_run / "checkpoints").iterdir()] == ["step-3.pt"]
    assert not (unfinished_run / runs.LOCK_FILE).exists()
    summary = train_run(None, unfinished_run, resume=True)  # room again: it continues
    assert summary.completed and summary.steps == 6


def test_the_command_line_names_a_full_disk_a_writer_did_not(monkeypatch, capsys, tmp_path):
    import landscape.report.build

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "somewhere"))

    monkeypatch.setattr(landscape.report.build, "_read", full)
    code, _, err = cli(["report", tmp_path, "--out", tmp_path / "rep"], capsys)
    assert one_line_error(code, err).startswith(
        f"error: the disk is full: cannot write {tmp_path / 'somewhere'}"
    )
    assert not (tmp_path / "rep").exists()


@contextmanager
def tiny_file_system(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only); skips the test where mounting fails."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_disk_mid_training_and_for_an_analysis(tmp_path, capsys):
    """A 2 MB file system: the run stops at the checkpoint that does not fit, with one line; the
    last good checkpoint resumes; an analysis into the full disk leaves no folder behind."""
    with tiny_file_system(tmp_path / "disk", "2M") as disk:
        run_dir = disk / "run"
        args = ["train", "--model", "mlp", "--steps", "400", "--checkpoint-every", "10", "--out", run_dir]
        code, _, err = cli(args, capsys)
        assert one_line_error(code, err).startswith(f"error: the disk is full: cannot write {run_dir}/")
        step, last = runs.latest_checkpoint(run_dir)
        assert (
            0 < step < 400 and runs.check_checkpoint_step(last, runs.load_run_checkpoint(last), 400) == step
        )
        assert not [p for p in run_dir.rglob("*") if runs.is_debris(p.name)]
        assert not (run_dir / runs.LOCK_FILE).exists()
        code, _, err = cli(
            ["analyze", "--model", "mlp", "--data", "digits", "--samples", "64", "--out", disk / "an"], capsys
        )
        assert one_line_error(code, err).startswith("error: the disk is full: cannot write")
        assert not (disk / "an").exists()


# ----------------------------------------------------------------------------------------------
# Resume checks the stored step


@pytest.mark.parametrize(
    ("name", "stored", "message"),
    [
        ("step-3.pt", 10**9, "holds step 1000000000, but its file name says step 3"),
        ("step-3.pt", -3, "holds step -3, but its file name says step 3"),
        ("step-3.pt", 4, "holds step 4, but its file name says step 3"),
        ("step-3.pt", "3", "holds step '3', not a whole number"),
        ("step-1000000000.pt", 10**9, "holds step 1000000000, outside the run's 0 to 6 steps"),
    ],
)
def test_resume_checks_a_checkpoints_step(unfinished_run, capsys, name, stored, message):
    path = unfinished_run / runs.CHECKPOINT_DIR / "step-3.pt"
    state = torch.load(path, weights_only=True)
    state["step"] = stored
    path.unlink()
    torch.save(state, unfinished_run / runs.CHECKPOINT_DIR / name)
    before = snapshot(unfinished_run)
    err = one_line_error(*cli(["train", "--resume", unfinished_run], capsys)[::2])
    assert f"{unfinished_run / runs.CHECKPOINT_DIR / name} {message}" in err
    assert snapshot(unfinished_run) == before


def test_a_pickled_run_checkpoint_is_refused_with_true_advice(unfinished_run, capsys):
    path = unfinished_run / runs.CHECKPOINT_DIR / "step-3.pt"
    state = torch.load(path, weights_only=True)
    state["rule"] = {"payload": datetime.date(2020, 1, 1)}  # an object weights-only loading refuses
    torch.save(state, path)
    for extra in ([], ["--trust-checkpoint"]):
        err = one_line_error(*cli(["train", "--resume", unfinished_run, *extra], capsys)[::2])
        assert "datetime.date" in err and "always read weights-only" in err
        assert "pass --trust-checkpoint" not in err


# ----------------------------------------------------------------------------------------------
# Malformed run folders and inputs: one line naming the file and the problem


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: ['{"lr": 0.1}', *lines[1:]], "line 1 has no integer step"),
        (lambda lines: [*lines, "[1, 2]"], "is a JSON list, not an object"),
        (lambda lines: [*lines, '"text"'], "is a JSON str, not an object"),
        (lambda lines: [lines[0], "{torn", *lines[1:]], "line 2 is not JSON"),
    ],
)
def test_report_on_malformed_metrics_is_one_line(finished_run, tmp_path, capsys, edit, message):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    path = run_dir / runs.METRICS_FILE
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    err = one_line_error(
        *cli(["report", run_dir, "--out", tmp_path / "rep", "--no-slices", "--no-pruning"], capsys)[::2]
    )
    assert f"{path} " in err and message in err
    assert not (tmp_path / "rep").exists()


def test_report_and_resume_on_a_non_integer_steps_are_one_line(
    finished_run, unfinished_run, tmp_path, capsys
):
    for run_dir in (unfinished_run, tmp_path / "finished"):
        if not run_dir.exists():
            shutil.copytree(finished_run, run_dir)
        path = run_dir / runs.CONFIG_FILE
        path.write_text(path.read_text().replace('"steps": 6', '"steps": "six"'))
        for args in (["report", run_dir, "--out", tmp_path / "rep"], ["train", "--resume", run_dir]):
            err = one_line_error(*cli(args, capsys)[::2])
            assert f"{path}: steps must be a non-negative integer, got 'six'" in err


def test_binary_bytes_in_metrics_on_resume_are_one_line(unfinished_run, capsys):
    path = unfinished_run / runs.METRICS_FILE
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], b"\xff\xfe\x00binary", *lines[1:]]) + b"\n")
    before = snapshot(unfinished_run)
    err = one_line_error(*cli(["train", "--resume", unfinished_run], capsys)[::2])
    assert f"{path} line 2 holds bytes that are not UTF-8 text" in err
    assert snapshot(unfinished_run) == before
    path.write_bytes(b"\n".join([*lines, b'{"step": 9, "tr']))  # a torn last line is dropped
    assert train_run(None, unfinished_run, resume=True).completed


def test_a_model_that_ignores_its_parameters_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "constant_models.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class Constant(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = nn.Linear(64, 10)\n"
        "        self.register_buffer('w', torch.randn(64, 10))\n"
        "    def forward(self, x):\n"
        "        return x.flatten(1) @ self.w\n"
        "class Partly(Constant):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.unused = nn.Linear(2, 2)\n"
        "    def forward(self, x):\n"
        "        return self.lin(x.flatten(1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["analyze", "--data", "digits", "--samples", "32", "--out", tmp_path / "an"]
    err = one_line_error(*cli([*base, "--model", "constant_models:Constant"], capsys)[::2])
    assert "outputs do not depend on its parameters" in err and "nothing to measure" in err
    assert not (tmp_path / "an").exists()
    import constant_models

    from landscape.problem import Problem

    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    partly = Problem(constant_models.Partly(), (x, y), "cross_entropy")  # loss values, slices: fine
    assert partly.unused_params == ["unused.weight", "unused.bias"]
    code, _, err = cli(
        [*base, "--model", "constant_models:Partly", "--params", "lin", "--metrics", "eigen"], capsys
    )
    assert code == 0, err  # the parameters that matter, selected


def test_a_dangling_symlink_as_out_and_a_folder_named_like_a_checkpoint(finished_run, tmp_path, capsys):
    dangling = tmp_path / "out"
    dangling.symlink_to(tmp_path / "nowhere")
    for command in (
        ["analyze", "--model", "mlp", "--data", "digits"],
        ["train", "--model", "mlp"],
        ["report", finished_run],
    ):
        err = one_line_error(*cli([*command, "--out", dangling], capsys)[::2])
        assert (
            f"output folder {dangling}: it is a symbolic link to {tmp_path / 'nowhere'}, which does not exist"
            in err
        )
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    folder = tmp_path / "x.pt"
    folder.mkdir()
    for command in (
        ["analyze", folder, "--out", tmp_path / "an"],
        ["prune-eval", folder, "--out", tmp_path / "pr"],
        ["surface", "--model", "mlp", "--data", "digits", "--other", folder, "--out", tmp_path / "su"],
        ["train", "--model", "mlp", "--init", folder, "--steps", "2", "--out", tmp_path / "tr"],
    ):
        err = one_line_error(*cli(command, capsys)[::2])
        assert f"checkpoint path is not a file: {folder}" in err, (command, err)
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / runs.FINAL_FILE).unlink()
    (run_dir / runs.FINAL_FILE).mkdir()
    err = one_line_error(*cli(["report", run_dir, "--out", tmp_path / "rep"], capsys)[::2])
    assert f"{run_dir / runs.FINAL_FILE} is not a file" in err
    assert not any((tmp_path / name).exists() for name in ("an", "pr", "su", "tr", "rep"))
