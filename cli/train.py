"""``landscape train`` and ``landscape prune-eval``: parse, call ``landscape.train``, print. No math here.

Registered in ``cli/main.py``; this module does not import it (``python -m cli.main`` runs that
file as ``__main__``, and importing it again from here would build a second app).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cli.console import (
    LOSS_HELP,
    LogFormat,
    Output,
    ProgressLog,
    Quiet,
    StageLines,
    err_console,
    eta_seconds,
    holds_output,
    leader_process,
    out_console,
    print_line,
    print_paths,
    print_table,
    set_threads,
    summary_event,
    tenth,
)
from cli.options import Device, MaxMemory, bounded, device_option, parsed, sparsities, usage_errors
from landscape.bounds import SAMPLES, SEED, SEQ_LEN, THREADS
from landscape.errors import UserError
from landscape.optim.options import Option, option_flag
from landscape.optim.rules import RULES, run_options  # the specs only: no torch here

if TYPE_CHECKING:
    from landscape.train import RunConfig, RunSummary, TrainProgress


# Options that make up a run's configuration (with --resume they come from config.json instead),
# besides the method options, whose one home is the rule specs (landscape.optim.RULES).
_RUN_OPTIONS = (
    "model",
    "data",
    "eval_data",
    "eval_fraction",
    "loss",
    "seq_len",
    "method",
    "base",
    "lr",
    "momentum",
    "weight_decay",
    "steps",
    "batch_size",
    "schedule",
    "warmup",
    "seed",
    "dtype",
    "device",
    "max_memory",
    "init",
    "checkpoint_every",
    "log_every",
    "diagnose_every",
    "diagnose_samples",
    "final_analysis",
    "final_metrics",
    "final_samples",
    "out",
)


# Options that name code to run: with --resume they may repeat the stored values (see landscape.trust).
_SPEC_OPTIONS = ("model", "data", "eval_data", "loss")


def _config_options() -> set[str]:
    return {*_RUN_OPTIONS, *(option.name for option in run_options())}


def _format_default(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def option_help(option: Option) -> str:
    """The ``--help`` text of a method option, from its declaration and the specs that take it:
    the methods (when at most three take it), the help, the default (or "the method's")."""
    uses = [(spec.name, use) for spec in RULES.values() if (use := spec.option(option.name)) is not None]
    text = option.help
    if 0 < len(uses) <= 3:
        text = f"{'/'.join(name for name, _ in uses)}: {text}"
    if option.sweep:
        text += ", or a comma list for a sweep"
    defaults = {repr(use.default) for _, use in uses}
    if "[default:" not in text:
        if len(defaults) > 1:
            text += " [default: the method's]"
        elif uses and uses[0][1].default is not None:
            text += f" [default: {_format_default(uses[0][1].default)}]"
    return text


def method_option_flags(after: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare one Typer option per method option of the rule specs on a command, after its
    parameter ``after``; the command receives them in its ``**method_options``. A sweep option
    (``--rho``) is text: a number or a comma-separated list."""

    def declare(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        generated = [
            inspect.Parameter(
                option.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=Annotated[
                    (str if option.sweep else option.type) | None,
                    typer.Option(option.flag, help=option_help(option)),
                ],
            )
            for option in run_options()
        ]
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD:
                parameters.append(parameter)
            if parameter.name == after:
                parameters.extend(generated)
        command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return command

    return declare


def _short(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _status(event: TrainProgress) -> str:
    """The live text after the bar: loss, then the last diagnostics."""
    parts = []
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f}")
    diag = event.diagnostics
    if diag:
        from landscape.metrics import status_items

        shown = " ".join(f"{s.label} {_short(diag.get(s.key), s.digits)}" for s in status_items())
        parts.append(f"eval {_short(diag.get('eval_loss'))} | {shown}")
        if "cond_A_max" in diag:  # LoRA methods
            parts.append(f"cond(A) {_short(diag.get('cond_A_max'), 3)}")
    if event.phase == "diagnose":
        parts.append("diagnosing...")
    elif event.phase == "analysis":
        parts.append(f"final analysis: {event.label}")
    return "  ".join(parts)


def _plain_numbers(event: TrainProgress) -> str:
    """The numbers of a plain progress line: the batch loss, then the last diagnostics (eval loss
    and the metrics' status items)."""
    parts = []
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f}")
    diag = event.diagnostics
    if diag:
        from landscape.metrics import status_items

        parts.append(f"eval {_short(diag.get('eval_loss'))}")
        parts += [f"{s.label} {_short(diag.get(s.key), s.digits)}" for s in status_items() if s.key in diag]
        if "cond_A_max" in diag:  # LoRA methods
            parts.append(f"cond(A) {_short(diag.get('cond_A_max'), 3)}")
    return "  ".join(parts)


class TrainLines:
    """Training progress as paced plain lines (:class:`cli.console.ProgressLog`): one line per run
    at every tenth of its steps or after ``PACE_SECONDS`` without a line, e.g.
    ``sam: step 120/300 (40%)  loss 2.4312  eval 2.51  lmax 14.3  elapsed 12s  eta 18s``; the
    stages of the final analysis; ``done`` at the end of each run."""

    def __init__(self, log: ProgressLog) -> None:
        self.log = log
        self.stages = StageLines(log, hold_first=False)
        self._start: dict[str, tuple[float, int]] = {}  # run -> (elapsed, step) of its first event
        self._tenth: dict[str, int] = {}

    def __call__(self, event: TrainProgress) -> None:
        log = self.log
        if event.phase == "analysis":
            self.stages(f"{event.run}: final analysis: {event.label}")
            return
        if event.phase == "done":
            log.current = ""
            log.line(
                f"{event.run}: done, {event.steps} steps",
                {"event": "done", "run": event.run, "steps": event.steps, "loss": event.loss},
            )
            return
        started, first = self._start.setdefault(event.run, (log.elapsed(), event.step))
        reached = tenth(event.step, event.steps)
        where = f"{event.run}: step {event.step}/{event.steps}"
        log.current = where + (", curvature diagnostics" if event.phase == "diagnose" else "")
        if event.run not in self._tenth:
            self._tenth[event.run] = reached  # no line at the start (or the resumed step)
            return
        if event.phase != "train" or not (reached > self._tenth[event.run] or log.due()):
            return
        self._tenth[event.run] = reached
        percent = 100.0 * event.step / event.steps if event.steps else 100.0
        eta = eta_seconds(log.elapsed() - started, event.step - first, event.steps - first)
        numbers = _plain_numbers(event)
        log.line(
            f"{where} ({percent:.0f}%)" + (f"  {numbers}" if numbers else ""),
            {
                "event": "progress",
                "run": event.run,
                "step": event.step,
                "steps": event.steps,
                "percent": round(percent, 1),
                "loss": event.loss,
                "diagnostics": event.diagnostics,
            },
            eta=eta,
        )


@contextmanager
def training_progress(output: Output | bool) -> Iterator[Callable[[TrainProgress], None]]:
    """The progress of ``landscape train``: a transient bar per run on an interactive stderr, with
    the live loss and the last diagnostics; paced plain lines elsewhere (:class:`TrainLines`); JSON
    lines with ``--log-format json``; nothing when quiet (``output``: an :class:`Output`, or a bool:
    True as a plain command prints, False nothing)."""
    if isinstance(output, bool):
        output = Output(leader=output)
    kind = output.progress_kind(err_console)
    if kind == "off":
        yield lambda _event: None
        return
    if kind != "live":
        log = ProgressLog("train", kind == "json", stream=None if kind == "json" else err_console.file)
        ok = False
        try:
            yield TrainLines(log)
            ok = True
        finally:
            log.close(ok)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(event: TrainProgress) -> None:
            if event.run not in tasks:
                tasks[event.run] = bar.add_task(event.run, total=event.steps, status="")
            bar.update(tasks[event.run], completed=event.step, status=_status(event))

        yield update


def summary_table(summaries: list[RunSummary]) -> Table:
    """One row per run: last training loss, eval loss and accuracy, the unigram baseline's eval
    loss, the final analysis's headline numbers (the metrics' ``Headline`` columns, when it ran)
    and the training seconds."""
    from landscape.metrics import headlines

    shown = [h for h in headlines() if h.column]
    table = Table(title="training summary", show_header=True, header_style="bold")
    for column in ("run", "steps", "train", "eval", "acc", "unigram", *(h.column for h in shown), "s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for s in summaries:
        table.add_row(
            s.name,
            str(s.steps),
            _short(s.train_loss),
            _short(s.eval_loss),
            _short(s.eval_accuracy, 3),
            _short(s.unigram_eval_loss),
            *(_short(s.curvature.get(h.key), h.digits) for h in shown),
            f"{s.train_seconds:.1f}",
        )
    return table


def _stopped(message: str) -> None:
    """Print one line and exit with status 130 (the shell's code for Ctrl-C).

    SystemExit rather than KeyboardInterrupt: typer turns the latter into a return value that
    ``main()`` does not pass on, and this way the message is the only line.
    """
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(130)


def _check_values(config: RunConfig, methods: list[str], rhos: list[float]) -> None:
    """Every value of a new run's options in range, by the run configuration's own validation (the
    method options by their rule specs), for each method and rho of the suite: a ``UserError``
    names the first bad one."""
    import dataclasses

    for method in methods or [config.method]:
        for rho in rhos or [config.rho]:
            dataclasses.replace(config, method=method, rho=rho).validate()


@method_option_flags(after="weight_decay")
def train(
    model: Annotated[
        str | None, typer.Option(help="built-in (mlp, cnn, transformer) or package.module:factory")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="training data: built-in (digits, text, text-train), .pt/.npz file or module:function"
        ),
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option(help="separate evaluation data (then all of --data trains)")
    ] = None,
    eval_fraction: Annotated[
        float | None, typer.Option(help="held-out random part of --data [default: 0.1]")
    ] = None,
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    seq_len: Annotated[
        int | None, typer.Option(help="sequence length of the text data [default: 64]")
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            help="gradient rule (adamw, sgd, sam, func-sam, precond-func-sam, fsgld, ...); repeat for a suite"
        ),
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="base optimizer adamw or sgd [default: the method's]")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="learning rate [default: adamw 1e-3, sgd/sgld 0.1]")
    ] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum [default: 0.9]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="decoupled weight decay [default: 0]")] = None,
    steps: Annotated[int | None, typer.Option(help="optimizer updates [default: 500]")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="samples per step [default: 64; 32 sequences for text]")
    ] = None,
    schedule: Annotated[str | None, typer.Option(help="constant or cosine [default: constant]")] = None,
    warmup: Annotated[
        int | None, typer.Option(help="linear learning-rate warm-up steps [default: 0]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="seeds init, data order and every random draw")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 or float64 [default: float32]")] = None,
    device: Annotated[str | None, device_option()] = None,
    max_memory: MaxMemory = None,
    init: Annotated[Path | None, typer.Option(help="start from the weights in this checkpoint")] = None,
    no_shuffle: Annotated[bool, typer.Option("--no-shuffle", help="batches in data order")] = False,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="checkpoint every K steps (0: only at the end) [default: 100]")
    ] = None,
    log_every: Annotated[
        int | None, typer.Option(help="log the training loss every K steps [default: 10]")
    ] = None,
    diagnose_every: Annotated[
        int | None, typer.Option(help="curvature diagnostics every K steps (0: off) [default: 0]")
    ] = None,
    diagnose_samples: Annotated[
        int | None, typer.Option(help="size of the fixed diagnostic subset [default: ~1024 targets]")
    ] = None,
    final_analysis: Annotated[
        bool | None,
        typer.Option(
            "--final-analysis/--no-final-analysis",
            help="analyze final.pt at the end [default: when diagnosing]",
        ),
    ] = None,
    final_metrics: Annotated[
        str | None,
        typer.Option(
            help="metrics of the final analysis [default: lambda_max,eigen,lambda_min,trace,ggn,tau]"
        ),
    ] = None,
    final_samples: Annotated[
        int | None, typer.Option(help="training items for the final analysis [default: ~2048 targets]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="run folder (a suite: one folder per run in it) [default: runs/NAME]")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue the run (or suite) in this folder from its last checkpoint")
    ] = None,
    threads: Annotated[int | None, bounded(THREADS, "torch threads (default: torch's choice)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the summaries as JSON")] = False,
    quiet: Quiet = False,
    log_format: LogFormat = "text",
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            help="let --init's checkpoint or --resume's config.json name code (import paths) to run; "
            "trusted files only"
        ),
    ] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
    **method_options: Any,
) -> None:
    """Train a model with one or more optimizers and record the curvature along the way.

    Writes a run folder: config.json, metrics.jsonl, checkpoints/step-N.pt, final.pt, summary.json
    (and analysis.json when diagnosing). Several --method values or a --rho list run a suite: one
    folder per run under --out, same initial weights and data order, and suite.json. The LoRA
    methods (lora, fmlora, efmlora) add adapters to the model (after --init's weights are loaded)
    and train only them; see docs/lora.md.
    """
    del debug  # read by main()

    from landscape.runs import is_suite_folder
    from landscape.train import (
        RunConfig,
        TrainingInterrupted,
        expand_suite,
        parse_float_list,
        train_run,
        train_suite,
    )

    config_options = _config_options()
    given = {name: value for name, value in locals().items() if name in config_options and value is not None}
    given.update({name: value for name, value in method_options.items() if value is not None})
    if no_shuffle:
        given["no_shuffle"] = True
    set_threads(threads)
    leader = leader_process()  # under torchrun: every rank trains on its part of each batch, rank 0 writes
    output = Output.parse(quiet, log_format, leader, json_output)
    try:
        with training_progress(output) as report:
            if resume is not None:
                # the specs of code to run may be named again, to allow the stored import paths
                named = {k: v for k, v in given.items() if k in _SPEC_OPTIONS}
                others = [name for name in given if name not in named]
                if others:
                    flags = ", ".join(option_flag(name) for name in others)
                    raise UserError(f"--resume continues with the run's config.json; drop {flags}")
                trust = {"trust_checkpoint": trust_checkpoint, "named_specs": named}
                if is_suite_folder(resume):
                    summaries = train_suite(None, resume, report, resume=True, **trust)
                else:
                    summaries = [train_run(None, resume, report, resume=True, **trust)]
                where = resume
            else:
                options: dict[str, Any] = {
                    "model": model,
                    "data": data,
                    "eval_data": eval_data,
                    "loss": loss,
                    "base": base,
                    "lr": lr,
                    "momentum": momentum,
                    "batch_size": batch_size,
                    "init": str(init) if init is not None else None,
                    "diagnose_samples": diagnose_samples,
                    "final_analysis": final_analysis,
                    "final_samples": final_samples,
                }
                for key, value in (
                    ("eval_fraction", eval_fraction),
                    ("seq_len", seq_len),
                    ("weight_decay", weight_decay),
                    ("steps", steps),
                    ("schedule", schedule),
                    ("warmup_steps", warmup),
                    ("seed", seed),
                    ("dtype", dtype),
                    ("device", device),
                    ("max_memory", max_memory),
                    ("checkpoint_every", checkpoint_every),
                    ("log_every", log_every),
                    ("diagnose_every", diagnose_every),
                    ("final_metrics", final_metrics),
                ):
                    if value is not None:
                        options[key] = value
                options["shuffle"] = not no_shuffle
                # the method options (from the rule specs); the sweep option (--rho) runs a suite
                options.update({o.name: method_options.get(o.name) for o in run_options() if not o.sweep})
                with usage_errors():  # the values of the options, before any work: exit status 2
                    if eval_data is not None and eval_fraction is not None:
                        raise UserError("give --eval-data or --eval-fraction, not both")
                    rhos = parse_float_list(method_options.get("rho"), "--rho")
                    _check_values(RunConfig(**options), method or [], rhos)
                runs = expand_suite(
                    RunConfig(**options), method or [], rhos, trust_checkpoint=trust_checkpoint
                )
                if len(runs) == 1:
                    where = out or Path("runs") / (runs[0].name or "run")
                    summaries = [train_run(runs[0], where, report, trust_checkpoint=trust_checkpoint)]
                else:
                    where = out or Path("runs") / "suite"
                    summaries = train_suite(runs, where, report, trust_checkpoint=trust_checkpoint)
    except TrainingInterrupted as exc:
        if not leader:  # rank 0 says it once
            raise SystemExit(130) from None
        _stopped(
            f"stopped at step {exc.step} (checkpoint written); continue with: "
            f"landscape train --resume {exc.resume_dir}"
        )
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        _stopped("interrupted; a run folder with checkpoints continues with: landscape train --resume DIR")
    if not leader:
        return
    if json_output:
        payload = [s.to_dict() for s in summaries]
        out_console.file.write(json.dumps(payload if len(payload) > 1 else payload[0], indent=2) + "\n")
        return
    if output.json_lines:
        summary_event("train", output, runs=[s.to_dict() for s in summaries], folder=str(where))
    elif quiet:
        print_paths([where])
    else:
        print_table(summary_table(summaries))
        print_line(f"wrote {where}")


@holds_output(lambda args: args["out"] or args["checkpoint"].parent)
def prune_eval(
    checkpoint: Annotated[Path, typer.Argument(help="a run's final.pt / step checkpoint, or any state dict")],
    sparsity: Annotated[
        str, parsed(sparsities, "comma list of fractions of weights to zero, e.g. 0.1,0.2,0.5")
    ] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    model: Annotated[
        str | None, typer.Option(help="built-in or package.module:factory (default: from the checkpoint)")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="evaluation data (default: the run's held-out data)")
    ] = None,
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    samples: Annotated[int | None, bounded(SAMPLES, "evaluate on the first N items")] = None,
    include_all: Annotated[
        bool, typer.Option(help="rank every parameter, biases and norm gains too (default: weights only)")
    ] = False,
    seq_len: Annotated[int | None, bounded(SEQ_LEN, "sequence length of the text data")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    seed: Annotated[
        int, bounded(SEED, "seeds the model construction (weights come from the checkpoint)")
    ] = 0,
    out: Annotated[Path | None, typer.Option(help="output folder [default: the checkpoint's folder]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            help="allow full unpickling of the checkpoint and the code (import paths) its config names; "
            "trusted files only"
        ),
    ] = False,
    threads: Annotated[int | None, bounded(THREADS, "torch threads (default: torch's choice)")] = None,
    device: Device = "auto",
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """One-shot global magnitude pruning: eval loss of CHECKPOINT with the smallest weights zeroed.

    Writes OUT/prune-<checkpoint name>.json and .csv (Functional-SAM Fig. 5).
    """
    del debug
    import pandas as pd

    from landscape.distributed import resolve_device
    from landscape.dtypes import parse_dtype
    from landscape.prune import parse_sparsities
    from landscape.prune import prune_eval as run_prune_eval
    from landscape.resolve import eval_split_from_config, resolve_inputs
    from landscape.runs import dumps_json, ensure_writable_dir, write_prune_results

    torch_dtype = parse_dtype(dtype)
    levels = parse_sparsities(sparsity)
    set_threads(threads)
    out_dir = out or checkpoint.parent
    ensure_writable_dir(out_dir)
    inputs = resolve_inputs(
        checkpoint,
        model,
        data,
        loss,
        samples=samples,
        seed=seed,
        dtype=torch_dtype,
        trust_checkpoint=trust_checkpoint,
        seq_len=seq_len,
        use_eval_data=data is None,
    )
    evaluation_data = inputs.data
    data_label = inputs.data_spec
    if data is None:
        held_out = eval_split_from_config(inputs.config, torch_dtype)
        if held_out is not None:
            evaluation_data = held_out.subset(slice(0, samples)) if samples else held_out
            data_label = f"held-out data of the run ({inputs.config.get('eval_data') or inputs.data_spec})"
        else:
            data_label = f"{inputs.data_spec} (the checkpoint names no held-out data)"
    results = run_prune_eval(
        inputs.model, evaluation_data, inputs.loss, levels, include_all=include_all, device=device
    )
    payload = {
        "checkpoint": str(checkpoint),
        "model": inputs.model_spec,
        "data": data_label,
        "num_items": len(evaluation_data),
        "include_all": include_all,
        "device": str(resolve_device(device)),
        "results": [r.to_dict() for r in results],
    }
    written = write_prune_results(
        out_dir, checkpoint.stem, payload, pd.DataFrame([r.to_dict() for r in results])
    )
    if json_output:
        out_console.file.write(dumps_json(payload))
        return
    table = Table(title=f"one-shot global magnitude pruning on {data_label}", header_style="bold")
    for column in ("sparsity", "pruned", "threshold |w|", "eval loss", "eval acc"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            f"{r.sparsity:.3g}",
            f"{r.num_pruned}/{r.num_prunable}",
            _short(r.threshold),
            _short(r.eval_loss),
            _short(r.eval_accuracy, 3),
        )
    print_table(table)
    print_line("wrote " + ", ".join(str(p) for p in written))
