"""Rule specs are the one home of a rule's options, label and colour: everything else reads them."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from landscape.errors import UserError
from landscape.optim import RULES, make_rule
from landscape.optim.options import Option, choices, in_interval, non_negative, positive, regex_list
from landscape.optim.rules import run_options

ROOT = Path(__file__).resolve().parents[1]


def constructor_parameters(name: str) -> dict[str, inspect.Parameter]:
    spec = RULES[name]
    module, _, attribute = spec.implementation.partition(":")
    cls = getattr(__import__(module, fromlist=[attribute]), attribute)
    return {
        p.name: p
        for p in inspect.signature(cls).parameters.values()
        if p.name not in spec.fixed and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


@pytest.mark.parametrize("name", list(RULES))
def test_spec_keywords_are_exactly_the_constructor_keywords(name):
    assert sorted(RULES[name].keywords()) == sorted(constructor_parameters(name))


@pytest.mark.parametrize("name", list(RULES))
def test_spec_defaults_are_the_constructor_defaults(name):
    parameters = constructor_parameters(name)
    for option in RULES[name].options:
        if "rule" not in option.targets:
            continue
        default = parameters[option.kwarg].default
        if (name, option.name) == ("fsgld", "beta"):
            # FSGLD(beta=None) reads beta from the SGLD optimizer, whose default the spec writes
            from landscape.optim import SGLD

            assert default is None and option.default == inspect.signature(SGLD).parameters["beta"].default
            continue
        assert default == option.default, (name, option.name)


def test_adapter_defaults_are_add_lora_defaults():
    from landscape.optim import add_lora
    from landscape.optim.options import ADAPTER_OPTIONS

    parameters = inspect.signature(add_lora).parameters
    for option in ADAPTER_OPTIONS:
        assert parameters[option.kwarg].default == option.default


def test_an_option_is_declared_once():
    for option in run_options():
        uses = [spec.option(option.name) for spec in RULES.values() if spec.takes(option.name)]
        assert all(option.same_declaration(use) for use in uses)
    clash = Option("rho", float, "another help")
    bad = dataclasses.replace(RULES["sam"], name="bad", options=(clash,))
    with pytest.raises(ValueError, match="declared twice"):
        run_options([RULES["sam"], bad])


def test_option_checks_name_the_flag():
    cases = [
        (Option("rho", float, "", check=non_negative), -1.0, "--rho must be non-negative, got -1.0"),
        (Option("rho", float, "", check=non_negative), "x", "--rho must be non-negative"),
        (Option("beta", float, "", check=positive), 0.0, "--beta must be positive, got 0.0"),
        (
            Option("w", float, "", check=in_interval(0, 1, open_low=True, note="n")),
            0.0,
            r"--w \(n\) must be in \(0, 1\]",
        ),
        (Option("w", float, "", check=in_interval(0, 1)), True, "--w must be a number, got True"),
        (Option("mode", str, "", check=choices("a", "b")), "c", "unknown --mode 'c' \\(choose from a, b\\)"),
        (Option("pats", str, "", check=regex_list), "(", "invalid --pats pattern"),
    ]
    for option, value, message in cases:
        with pytest.raises(UserError, match=message):
            option.validate(value)
    Option("beta", float, "", check=positive).validate(float("inf"))  # inf allowed
    Option("beta", float, "", check=positive).validate(None)  # not given


def test_make_rule_takes_the_spec_keywords_and_names_them_otherwise():
    assert make_rule("msam", m=4).m == 4
    assert make_rule("efmlora", normalization="global").normalization == "global"
    with pytest.raises(TypeError, match=r"does not take \['phi'\]; it takes \['rho', 'rho_warmup'"):
        make_rule("sam", phi=0.1)


def test_cli_flags_are_the_union_of_the_spec_options():
    from cli.train import train

    names = set(inspect.signature(train).parameters)
    assert {o.name for o in run_options()} <= names
    hand_written = names - {o.name for o in run_options()}
    # none of the hand-written flags is a method option of some rule
    assert not hand_written & {o.name for spec in RULES.values() for o in spec.options}


def test_report_labels_and_colours_are_the_specs():
    from landscape.report.plots import METHOD_COLORS, method_color
    from landscape.report.runs import METHOD_LABELS, method_label

    assert METHOD_LABELS == {n: s.label for n, s in RULES.items()}
    assert METHOD_COLORS == {n: s.color for n, s in RULES.items()}
    assert method_label("func-sam") == "Functional-SAM" and method_color("sam") == "#d62728"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_the_specs_and_the_command_line_load_without_torch():
    result = run_python(
        """
        import sys
        import cli.main
        from landscape.optim import RULES
        from landscape.optim.rules import run_options
        assert RULES["sam"].label == "SAM" and run_options()
        print("torch" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


TOY_RULE = """
    import math, json, sys
    from landscape.optim import RULES, RuleSpec
    from landscape.optim.options import Option, RHO, positive
    from landscape.optim.sam import SAM

    class ToySAM(SAM):
        name = "toy-sam"

        def __init__(self, rho=0.05, *, gamma=2.0, seed=0):
            super().__init__(rho, seed=seed)
            self.gamma = gamma

    # the one edit: a spec with a new option (in a test, registered before anything reads RULES)
    GAMMA = Option("gamma", float, "toy strength", default=2.0, check=positive)
    RULES["toy-sam"] = RuleSpec(
        "toy-sam", "__main__:ToySAM", "Toy-SAM", "#123456", "a toy", "2F+2B", "adamw",
        options=(RHO, GAMMA),
    )
"""


def test_one_edit_adds_an_option_everywhere(tmp_path):
    """A rule spec with a new option, registered in a fresh process: the run config has the field,
    validates it, resolves its default, passes it to the rule; the CLI has the flag (help
    included) and parses it into config.json; the report labels and colours the method."""
    result = run_python(
        TOY_RULE
        + f"""
    from landscape.errors import UserError
    from landscape.train.config import METHOD_OPTIONS, RunConfig, method_takes
    from landscape.optim import make_rule

    assert "gamma" in METHOD_OPTIONS and method_takes("toy-sam", "gamma") and not method_takes("sam", "gamma")
    config = RunConfig(model="mlp", method="toy-sam", gamma=3.0).resolved()
    assert config.to_dict()["gamma"] == 3.0
    assert config.rule_options() == {{"seed": 0, "rho": 0.05, "gamma": 3.0}}
    assert RunConfig(model="mlp", method="toy-sam").resolved().gamma == 2.0
    assert make_rule("toy-sam", **config.rule_options()).gamma == 3.0
    try:
        RunConfig(model="mlp", method="toy-sam", gamma=-1.0).validate()
        raise AssertionError("not validated")
    except UserError as exc:
        assert str(exc) == "--gamma must be positive, got -1.0", exc
    assert RunConfig(model="mlp", method="sam", gamma=1.0).unused_options() == ["gamma"]

    from landscape.report.plots import method_color
    from landscape.report.runs import method_label
    assert method_label("toy-sam") == "Toy-SAM" and method_color("toy-sam") == "#123456"

    from typer.testing import CliRunner
    import cli.main
    runner = CliRunner()
    help_text = runner.invoke(cli.main.app, ["train", "--help"]).output
    assert "--gamma" in help_text and "toy-sam: toy strength [default: 2]" in " ".join(help_text.split()), help_text
    bad = runner.invoke(cli.main.app, ["train", "--model", "mlp", "--method", "toy-sam", "--gamma", "0"])
    assert bad.exit_code == 2 and "--gamma must be positive" in bad.output, bad.output  # a usage error
    out = r"{tmp_path / "run"}"
    ok = runner.invoke(cli.main.app, ["train", "--model", "mlp", "--method", "toy-sam", "--gamma", "0.5",
                                      "--steps", "2", "--checkpoint-every", "0", "--out", out])
    assert ok.exit_code == 0, (ok.output, ok.exception)
    stored = json.load(open(out + "/config.json"))
    assert stored["gamma"] == 0.5 and stored["method"] == "toy-sam"
    print("ok")
    """
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip().endswith("ok")


def test_old_config_json_still_loads(tmp_path):
    """A config.json written before the specs (flat keys rho, micro_batch, ...) loads unchanged."""
    from landscape.train.config import RunConfig

    stored = {
        "model": "mlp",
        "method": "msam",
        "rho": 0.05,
        "rho_warmup": 0,
        "phi": None,
        "micro_batch": 8,
        "temperature": None,
        "sigma": None,
        "beta": None,
        "eta": None,
        "ema_new_weight": None,
        "lora_normalization": None,
        "lora_rank": None,
        "lora_alpha": None,
        "lora_targets": None,
        "steps": 10,
    }
    config = RunConfig.from_dict(json.loads(json.dumps(stored)))
    assert config.micro_batch == 8 and config.rule_options() == {
        "seed": 0,
        "rho": 0.05,
        "rho_warmup": 0,
        "m": 8,
    }
    assert set(stored) - {"temperature"} <= set(config.to_dict())  # a retired option, left unset


def test_a_retired_option_that_is_set_names_its_replacement():
    from landscape.train.config import RunConfig

    with pytest.raises(UserError, match=r"sets temperature = 0.5, .*former RW-SAM.*--lambda"):
        RunConfig.from_dict({"model": "mlp", "method": "rwsam", "temperature": 0.5})
