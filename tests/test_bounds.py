"""Bounds and numbers that mislead: every numeric option is checked before any work (exit status 2,
one line naming the option, nothing written), long jobs state their size first, tau is undefined
below the gradient's rounding floor, a random forward pass is refused, parameters the outputs do
not depend on are left out of an analysis, and warnings never precede an ``error:`` line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cli.main import main
from landscape import analyze, bounds
from landscape.curvature.checks import forward_variation, require_deterministic
from landscape.curvature.decomposition import gradient_norm_floor, sharpness_decomposition
from landscape.errors import UserError
from landscape.optim.options import option_flag
from landscape.problem import Problem
from landscape.surface import compute_surface
from landscape.train import RunConfig, train_run
from tests.helpers import tiny_case

TRAIN = ["train", "--model", "mlp"]

# (command line, the option it gets wrong): every numeric option of every command, each end of its
# range and the values the hostile test used (inf, nan, 1e20, 100000).
BAD_VALUES: list[tuple[list[str], str]] = [
    *[
        (["analyze", option, value], option)
        for option, values in {
            "--samples": ["0", str(2**63)],
            "--batch-size": ["0", "-4"],
            "--seed": ["-1", str(10**20), "1e20"],
            "--top-k": ["0", "100000"],
            "--trace-samples": ["1", "100000"],
            "--tol": ["0", "1", "nan", "-1e-3"],
            "--max-iter": ["1", "100000"],
            "--layer-samples": ["0", "100000"],
            "--layer-max-iter": ["0", "100000"],
            "--density-probes": ["0", "100000"],
            "--density-steps": ["1", "100000"],
            "--seq-len": ["0", "100000"],
            "--threads": ["0", "100000"],
        }.items()
        for value in values
    ],
    *[
        (["surface", option, value], option)
        for option, values in {
            "--samples": ["0"],
            "--distance": ["inf", "nan", "0", "-1", "1e9"],
            "--steps": ["1", "1e9", "1000000000"],
            "--grid": ["1", "100000"],
            "--seed": ["-1", str(10**20)],
        }.items()
        for value in values
    ],
    *[
        ([*TRAIN, *extra, option, value], option)
        for option, extra, values in (
            ("--eval-fraction", [], ["0", "1.5", "nan"]),
            ("--seq-len", [], ["0", "100000"]),
            ("--lr", [], ["nan", "0", "-1", "inf"]),
            ("--momentum", ["--method", "sgd"], ["-0.1", "1", "nan"]),
            ("--weight-decay", [], ["-1", "nan", "inf"]),
            ("--rho", ["--method", "sam"], ["-1", "nan", "0.1,-1", ","]),
            ("--rho-warmup", ["--method", "sam"], ["-1"]),
            ("--eta", ["--method", "asam"], ["0", "-1"]),
            ("--micro-batch", ["--method", "msam"], ["0"]),
            ("--phi", ["--method", "angle-sam"], ["nan", "inf", "4"]),
            ("--lambda", ["--method", "rwsam"], ["-1", "nan", "inf"]),
            ("--delta", ["--method", "rwsam"], ["0", "-1", "nan"]),
            ("--lora-rank", ["--method", "lora"], ["0"]),
            ("--lora-alpha", ["--method", "lora"], ["0", "inf"]),
            ("--ema-new-weight", ["--method", "efmlora"], ["0", "1.5"]),
            ("--beta", ["--method", "sgld"], ["0", "-1"]),
            ("--sigma", ["--method", "fsgld"], ["-1", "nan"]),
            ("--steps", [], ["0", "2000000000"]),
            ("--batch-size", [], ["0"]),
            ("--warmup", [], ["-1", "900"]),
            ("--seed", [], ["-1", str(10**20)]),
            ("--checkpoint-every", [], ["-1"]),
            ("--log-every", [], ["0"]),
            ("--diagnose-every", [], ["-1"]),
            ("--diagnose-samples", [], ["0", str(2**63)]),
            ("--final-samples", [], ["0"]),
            ("--threads", [], ["0"]),
        )
        for value in values
    ],
    *[
        (["prune-eval", "missing.pt", option, value], option)
        for option, values in {
            "--sparsity": ["1.5", "nan", "-0.1", ",", "x"],
            "--samples": ["0"],
            "--seq-len": ["0"],
            "--seed": ["-1"],
            "--threads": ["0"],
        }.items()
        for value in values
    ],
    *[
        (["report", "nothing", option, value], option)
        for option, values in {
            "--sparsity": ["1.5", "nan"],
            "--slice-steps": ["1", "100000"],
            "--slice-grid": ["1", "100000"],
            "--slice-distance": ["inf", "0", "nan"],
            "--seed": ["-1", str(10**20)],
            "--threads": ["0"],
        }.items()
        for value in values
    ],
    *[
        (["demo", option, value], option)
        for option, values in {"--seed": ["-1", str(10**20)], "--threads": ["0"]}.items()
        for value in values
    ],
]

TEXT_NUMBERS = {"train": {"--rho"}, "prune-eval": {"--sparsity"}, "report": {"--sparsity"}}
"""Options that are text on the command line but hold numbers (comma lists)."""


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def numeric_options(command: str) -> set[str]:
    """The numeric options of ``command``: its parameters typed ``int`` or ``float`` (optional or
    not), as flags, and the comma lists of numbers."""
    import inspect
    import types
    import typing

    import cli.main
    import cli.report
    import cli.train

    function = {
        "analyze": cli.main.analyze,
        "surface": cli.main.surface,
        "train": cli.train.train,
        "prune-eval": cli.train.prune_eval,
        "report": cli.report.report,
        "demo": cli.report.demo,
    }[command]
    numeric = set()
    for name, parameter in inspect.signature(function, eval_str=True).parameters.items():
        annotation = parameter.annotation
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        if isinstance(annotation, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        if annotation in (int, float) and parameter.kind is not parameter.VAR_KEYWORD:
            numeric.add(option_flag(name))
    return numeric | TEXT_NUMBERS.get(command, set())


@pytest.mark.parametrize("command", ["analyze", "surface", "train", "prune-eval", "report", "demo"])
def test_the_table_covers_every_numeric_option(command):
    covered = {option for args, option in BAD_VALUES if args[0] == command}
    assert numeric_options(command) == covered


@pytest.mark.parametrize("args, option", BAD_VALUES, ids=[" ".join(a[-2:]) for a, _ in BAD_VALUES])
def test_a_bad_numeric_value_is_a_usage_error_before_any_work(args, option, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli([*args, "--out", "out"], capsys)
    line = one_line_error(err)
    assert code == 2, err
    assert option in line, line
    assert stdout == ""
    assert list(tmp_path.iterdir()) == []  # no output folder, no runs/ folder


def test_the_ranges_are_in_the_help_and_the_library_checks_the_same_bounds(capsys):
    assert main(["surface", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "[an integer in [2, 201]]" in help_text and "[a finite number in (0, 100]]" in help_text
    model, data, loss = tiny_case("mlp")
    problem = Problem(model, data, loss)
    for kwargs, fragment in (
        ({"plane_steps": 100_000}, "plane_steps must be an integer in [2, 201]"),
        ({"line_steps": 10**9}, "line_steps must be an integer in [2, 2001]"),
        ({"distance": math.inf}, "distance must be a finite number in (0, 100]"),
        ({"seed": 10**20}, "seed must be an integer in [0, 2**63-1]"),
    ):
        with pytest.raises(UserError) as caught:
            compute_surface(problem, **kwargs)
        assert fragment in str(caught.value)
    for kwargs, fragment in (
        ({"top_k": 100_000}, "top_k must be"),
        ({"tol": math.nan}, "tol must be"),
        ({"trace_samples": 1}, "trace_samples must be"),
        ({"seed": -1}, "seed must be"),
    ):
        with pytest.raises(UserError, match=fragment):
            analyze(model, data, loss, metrics="eigen", **kwargs)


def test_top_k_is_checked_against_the_parameters_and_the_lanczos_steps():
    model, data, loss = tiny_case("mlp")  # a few hundred parameters
    n = sum(p.numel() for p in model.parameters())
    with pytest.raises(UserError, match=r"--top-k 40 needs 40 Ritz values.*raise --max-iter"):
        analyze(model, data, loss, metrics="eigen", top_k=40, max_iter=30)
    with pytest.raises(UserError, match=rf"--top-k {n + 1} exceeds the {n} analysed parameters"):
        analyze(model, data, loss, metrics="eigen", top_k=n + 1, exact=True, dtype=torch.float64)


def test_the_largest_seed_works_end_to_end(tmp_path, capsys):
    biggest = str(bounds.SEED.high)
    common = ["--model", "mlp", "--data", "digits", "--samples", "64"]
    code, _, err = cli(
        ["analyze", *common, "--metrics", "eigen,trace", "--seed", biggest, "--out", tmp_path / "a"], capsys
    )
    assert code == 0, err
    code, _, err = cli(
        ["surface", *common, "--steps", "3", "--grid", "2", "--seed", biggest, "--out", tmp_path / "s"],
        capsys,
    )
    assert code == 0, err
    run = train_run(RunConfig(model="mlp", steps=2, batch_size=16, seed=int(biggest)), tmp_path / "run")
    assert run.completed


# ----------------------------------------------------------------------------------------------
# Long jobs state their size first


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal: the plan lines are printed where a person watches."""
    from cli.console import err_console

    monkeypatch.setattr(err_console, "_force_terminal", True)
    monkeypatch.setattr(err_console, "_width", 500)


def test_surface_and_analyze_state_their_size_before_the_work(tmp_path, capsys, terminal):
    common = ["--model", "mlp", "--data", "digits", "--samples", "100"]
    code, _, err = cli(["surface", *common, "--steps", "5", "--grid", "4", "--out", tmp_path / "s"], capsys)
    assert code == 0, err
    assert (
        "plan: slices: line 5 + plane 4x4 + centre 1 = 22 loss evaluations on 100 samples (22 forward passes)"
        in err
    )
    code, _, err = cli(
        ["analyze", *common, "--metrics", "eigen", "--batch-size", "25", "--out", tmp_path / "a"], capsys
    )
    assert code == 0, err
    plan = next(line for line in err.splitlines() if "plan: " in line)
    assert "eigen on 100 samples (100 targets, 4 chunk(s))" in plan and "up to 300 Lanczos steps" in plan


def test_the_report_states_the_size_of_its_slices(finished_run, tmp_path, capsys, terminal):
    code, _, err = cli(
        [
            "report",
            finished_run,
            "--out",
            tmp_path / "r",
            "--slice-steps",
            "3",
            "--slice-grid",
            "2",
            "--no-pruning",
        ],
        capsys,
    )
    assert code == 0, err
    assert (
        "plan: slices: 1 run(s) x (line 3 + plane 2x2 + centre 1) + up to 0 path(s) x 32 = 8 loss evaluations"
        in err
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("bounds") / "run"
    train_run(RunConfig(model="mlp", steps=4, batch_size=32, log_every=2, checkpoint_every=2), run_dir)
    return run_dir


# ----------------------------------------------------------------------------------------------
# tau below the gradient's rounding floor


def stationary_mlp(dtype: torch.dtype) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """An MLP at a stationary point of the cross-entropy: every weight zero and the last bias at
    the log class frequencies, in ``dtype`` (its computed gradient is rounding noise alone)."""
    torch.manual_seed(1)  # (seed 0 happens to round the float32 gradient to exactly 0)
    x = torch.randn(96, 8, dtype=dtype)
    y = torch.randint(0, 3, (96,))
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[2].bias.copy_((torch.bincount(y, minlength=3).double() / len(y)).log().to(dtype))
    return model, (x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tau_is_undefined_below_the_rounding_floor_of_the_gradient(dtype):
    model, data = stationary_mlp(dtype)
    problem = Problem(model, data, "cross_entropy", dtype=dtype)
    gnorm = float(problem.gradient().double().norm())
    floor = gradient_norm_floor(problem.loss_value(), problem.num_params, dtype)
    assert 0 < gnorm < floor < 1e-3  # rounding noise, and a floor far below a real gradient
    result = analyze(model, data, metrics="tau,layers", dtype=dtype)
    values = result.to_dict()
    assert values["tau_logit"] is None and values["tau_func"] is None and values["tau_cross"] is None
    assert values["tau_note"].startswith(f"||grad L|| = {gnorm:.2g} is below the rounding floor")
    assert all(layer.tau_logit is None for layer in result.layers)
    json.dumps(values)  # null in analysis.json


def test_the_floor_leaves_a_resolvable_gradient_alone_and_a_zero_one_undefined():
    model, data, loss = tiny_case("mlp")
    result = analyze(model, data, loss, metrics="tau", dtype=torch.float64)
    assert result.tau_note is None and abs(result.tau_logit + result.tau_func + result.tau_cross - 1) < 1e-8
    from landscape.curvature.linear_operator import DenseOperator

    eye = DenseOperator(torch.eye(3, dtype=torch.float64))
    split = sharpness_decomposition(eye, eye, torch.zeros(3, dtype=torch.float64), [("w", slice(0, 3))])
    assert (
        math.isnan(split.tau_logit)
        and split.note.startswith("the gradient is zero")
        and split.num_products == 0
    )
    tiny = sharpness_decomposition(
        eye, eye, torch.full((3,), 1e-20, dtype=torch.float64), min_grad_norm=1e-10
    )
    assert math.isnan(tiny.tau_func) and "below the rounding floor 1e-10 of float64" in tiny.note


def test_an_undefined_tau_reaches_the_summary_the_diagnostics_and_the_report(tmp_path, capsys, monkeypatch):
    (tmp_path / "flat_models.py").write_text(
        "import torch\n"
        "class Flat(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        return self.lin(x.flatten(1)) * 1e-12\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--model", "flat_models:Flat", "--data", "digits"]
    code, out, err = cli(
        ["analyze", *common, "--samples", "64", "--metrics", "tau", "--out", tmp_path / "a"], capsys
    )
    assert code == 0, err
    assert "undefined" in out and "||grad L||" in out
    run = tmp_path / "run"
    code, _, err = cli(
        ["train", *common, "--method", "sgd", "--lr", "1e-9", "--steps", "4", "--batch-size", "32",
         "--diagnose-every", "2", "--diagnose-samples", "64", "--final-samples", "64", "--out", run],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    diagnosed = [r for r in records if "tau_note" in r]
    assert diagnosed and all(r["tau_logit"] is None and "rounding floor" in r["tau_note"] for r in diagnosed)
    assert json.loads((run / "analysis.json").read_text())["tau_logit"] is None
    code, _, err = cli(
        ["report", run, "--out", tmp_path / "r", "--no-slices", "--no-pruning", "--trust-checkpoint"], capsys
    )
    assert code == 0, err
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "the τ split is undefined at the final weights" in markdown and "diagnostic(s)" in markdown


# ----------------------------------------------------------------------------------------------
# A forward pass that is random in eval mode

DROPOUT_MODEL = (
    "import torch\n"
    "import torch.nn.functional as F\n"
    "class AlwaysDropout(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.a = torch.nn.Linear(64, 32)\n"
    "        self.b = torch.nn.Linear(32, 10)\n"
    "    def forward(self, x):\n"
    "        return self.b(F.dropout(torch.tanh(self.a(x.flatten(1))), 0.5, training=True))\n"
)


def test_a_model_with_dropout_on_in_eval_mode_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "dropout_models.py").write_text(DROPOUT_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import dropout_models

    torch.manual_seed(0)
    model = dropout_models.AlwaysDropout()
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    problem = Problem(model, (x, y), "cross_entropy")
    state = torch.get_rng_state()
    assert forward_variation(problem) > 0.1  # an O(1) difference
    assert torch.equal(torch.get_rng_state(), state)  # the probe's dropout draws are undone
    with pytest.raises(UserError, match=r"not deterministic in eval mode: .* differ by"):
        require_deterministic(problem)
    deterministic, data, loss = tiny_case("mlp")
    assert forward_variation(Problem(deterministic, data, loss)) == 0.0
    code, _, err = cli(
        ["analyze", "--model", "dropout_models:AlwaysDropout", "--data", "digits", "--samples", "64",
         "--out", tmp_path / "a"],
        capsys,
    )  # fmt: skip
    assert code == 1 and "F.dropout(..., training=True)" in one_line_error(err)
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------------------------
# Parameters the outputs do not depend on

DEAD_MODEL = (
    "import torch\n"
    "class DeadLayer(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.lin = torch.nn.Linear(64, 10)\n"
    "        self.dead = torch.nn.Linear(4, 4)\n"
    "    def forward(self, x):\n"
    "        return self.lin(x.flatten(1))\n"
)


def test_parameters_the_outputs_ignore_are_left_out_with_a_note(tmp_path, capsys, monkeypatch):
    (tmp_path / "dead_models.py").write_text(DEAD_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import dead_models

    torch.manual_seed(0)
    model = dead_models.DeadLayer().train()
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    result = analyze(model, (x, y), metrics="eigen,tau,layers", top_k=2)
    assert result.num_params == 650 and [layer.name for layer in result.layers] == ["lin.weight", "lin.bias"]
    assert result.notes and "dead.weight, dead.bias" in result.notes[0]
    assert model.training  # the caller's mode is left as found
    with pytest.raises(UserError, match=r"do not depend on parameter\(s\) dead.weight, dead.bias"):
        analyze(Problem(model, (x, y), "cross_entropy"), metrics="eigen")

    common = ["--model", "dead_models:DeadLayer", "--data", "digits"]
    code, _, err = cli(
        ["analyze", *common, "--samples", "64", "--metrics", "eigen", "--out", tmp_path / "a"], capsys
    )
    assert code == 0, err
    assert "note: left out 2 parameter tensor(s)" in err
    assert "dead.weight" in json.loads((tmp_path / "a" / "analysis.json").read_text())["notes"][0]
    run = tmp_path / "run"
    code, _, err = cli(
        ["train", *common, "--steps", "4", "--batch-size", "32", "--diagnose-every", "2", "--diagnose-samples",
         "64", "--final-samples", "64", "--out", run],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        [
            "report",
            run,
            "--out",
            tmp_path / "r",
            "--slice-steps",
            "3",
            "--slice-grid",
            "2",
            "--trust-checkpoint",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "r" / "index.html").is_file()


# ----------------------------------------------------------------------------------------------
# Complex checkpoints and warnings


def test_a_complex_checkpoint_is_refused_by_every_command_that_loads_one(tmp_path, capsys):
    from landscape.models import build_model

    torch.manual_seed(0)
    state = {k: v.to(torch.complex64) for k, v in build_model("mlp").state_dict().items()}
    checkpoint = tmp_path / "complex.pt"
    torch.save(state, checkpoint)
    common = ["--model", "mlp", "--data", "digits", "--samples", "32"]
    for command in (
        ["analyze", checkpoint, *common, "--out", tmp_path / "a"],
        ["surface", checkpoint, *common, "--out", tmp_path / "s"],
        ["prune-eval", checkpoint, *common, "--out", tmp_path / "p"],
    ):
        code, _, err = cli(command, capsys)
        assert code == 1 and "is complex (torch.complex64) but the model's is real" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["complex.pt"]


WARNING_MODEL = (
    "import torch\n"
    "class Warns(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.lin = torch.nn.Linear(64, 10)\n"
    "    def forward(self, x):\n"
    "        x = torch.tensor(x)  # torch: UserWarning 'To copy construct from a tensor ...'\n"
    "        return self.lin(x.flatten(1)) * FACTOR\n"
)


def test_warnings_never_precede_an_error_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "warning_models.py").write_text(WARNING_MODEL.replace("FACTOR", "float('nan')"))
    (tmp_path / "quiet_models.py").write_text(WARNING_MODEL.replace("FACTOR", "1.0"))
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--data", "digits", "--samples", "32", "--metrics", "eigen", "--top-k", "1"]
    failing = ["analyze", "--model", "warning_models:Warns", *common, "--out", tmp_path / "a"]
    code, _, err = cli(failing, capsys)
    assert code == 1 and "NaN or infinite outputs" in one_line_error(err)  # the torch warning is held back
    with pytest.warns(UserWarning, match="To copy construct from a tensor"), pytest.raises(UserError):
        main([str(a) for a in [*failing, "--debug"]])  # --debug shows it, and the traceback
    capsys.readouterr()
    code, _, err = cli(["analyze", "--model", "quiet_models:Warns", *common, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert (
        len(warned) == 1
        and "To copy construct from a tensor" in warned[0]
        and warned[0].endswith("(UserWarning)")
    )
    assert not any("warnings.warn" in line or "x = torch.tensor" in line for line in err.splitlines())


def test_the_command_line_still_loads_without_torch():
    import subprocess

    code = "import sys, cli.main, cli.options, landscape.bounds; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
