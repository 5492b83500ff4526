"""The ``landscape`` command line: parse, call the library, print. No math here."""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.console import (
    LOSS_HELP,
    LogFormat,
    Output,
    Quiet,
    err_console,
    holds_output,
    leader_process,
    note,
    out_console,
    print_line,
    print_paths,
    print_table,
    set_threads,
    stage_progress,
    summary_event,
)
from cli.options import Device, MaxMemory, announcing, bounded
from cli.report import demo, report
from cli.train import prune_eval, train
from landscape.bounds import (
    BATCH_SIZE,
    DENSITY_PROBES,
    DENSITY_STEPS,
    LAYER_MAX_ITER,
    LAYER_SAMPLES,
    MAX_ITER,
    SAMPLES,
    SEED,
    SEQ_LEN,
    SLICE_DISTANCE,
    SLICE_GRID,
    SLICE_STEPS,
    THREADS,
    TOL,
    TOP_K,
    TRACE_SAMPLES,
)
from landscape.errors import UserError, one_line, write_error
from landscape.metrics import names as metric_names  # the declarations only: no torch here
from landscape.metrics import option_defaults as metric_options

app = typer.Typer(
    name="landscape",
    help="Loss-landscape diagnostics for PyTorch checkpoints: Hessian, GGN and functional-Hessian spectra, "
    "traces, densities and the Functional-SAM sharpness split.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


def summary_table(result: Any) -> Table:
    """The rich table printed after ``analyze``: the loss and gradient, each metric's rows (from the
    registry) and the cost."""
    from landscape.metrics import format_number, summary_rows

    table = Table(title="curvature summary", show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("note")
    r = result
    table.add_row(
        "loss", format_number(r.loss), f"{r.num_samples} samples, {r.num_targets} targets, {r.mode}"
    )
    grad = format_number(r.grad_norm)
    if grad != "-":
        table.add_row("||grad L||", grad, f"{r.num_params} parameters, {r.dtype}")
    for row in summary_rows(r.to_dict()):
        table.add_row(*row)
    table.add_row(
        "products",
        f"{r.hvp_count} H, {r.ggn_count} G",
        f"{r.hvp_method} HVPs; {r.seconds:.1f} s"
        + (f" on {r.processes} processes" if r.processes > 1 else ""),
    )
    return table


@app.command()
@holds_output(lambda args: args["out"])
def analyze(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="state_dict .pt/.pth/.ckpt, .safetensors, a landscape run's final.pt or run folder, "
            "or a Hugging Face save_pretrained / peft adapter folder (needs --data)"
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="built-in (mlp, cnn, transformer) or package.module:factory")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="built-in (digits, text), a .pt/.npz file with x and y, or module:function"),
    ] = None,
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    samples: Annotated[int | None, bounded(SAMPLES, "use the first N samples (default: all)")] = None,
    batch_size: Annotated[int | None, bounded(BATCH_SIZE, "chunk size for products (memory only)")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    seed: Annotated[int, bounded(SEED, "seeds model init and every random probe")] = 0,
    metrics: Annotated[str, typer.Option(help=f"comma list of {','.join(metric_names())}, or all")] = "all",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="a metric's own option NAME=VALUE, repeatable (defaults: "
            + ", ".join(
                f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                for k, v in metric_options().items()
            )
            + ")",
        ),
    ] = None,
    top_k: Annotated[int, bounded(TOP_K, "number of top eigenvalues")] = 5,
    trace_method: Annotated[str, typer.Option(help="xtrace, hutchpp or hutchinson")] = "xtrace",
    trace_samples: Annotated[int, bounded(TRACE_SAMPLES, "operator products per trace estimate")] = 96,
    tol: Annotated[float, bounded(TOL, "relative accuracy of Lanczos eigenvalues")] = 1e-3,
    max_iter: Annotated[int, bounded(MAX_ITER, "Lanczos steps at most (lambda_min needs the most)")] = 300,
    layer_samples: Annotated[
        int, bounded(LAYER_SAMPLES, "products of H and of G shared by the per-layer traces")
    ] = 48,
    layer_max_iter: Annotated[
        int, bounded(LAYER_MAX_ITER, "Lanczos steps per parameter tensor (per-layer lambda_max)")
    ] = 10,
    density_probes: Annotated[int, bounded(DENSITY_PROBES, "SLQ probes per spectral density")] = 2,
    density_steps: Annotated[int, bounded(DENSITY_STEPS, "Lanczos steps per SLQ probe")] = 40,
    params: Annotated[
        str | None, typer.Option(help="only parameters whose names match (comma-separated regexes)")
    ] = None,
    hvp_method: Annotated[
        str, typer.Option(help="auto, reuse, forward-over-reverse or double-backward")
    ] = "auto",
    exact: Annotated[
        bool, typer.Option(help="assemble the dense matrices and diagonalise (small models)")
    ] = False,
    seq_len: Annotated[int | None, bounded(SEQ_LEN, "sequence length of the text data")] = None,
    threads: Annotated[int | None, bounded(THREADS, "torch threads (default: torch's choice)")] = None,
    device: Device = "auto",
    max_memory: MaxMemory = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("analysis"),
    json_output: Annotated[
        bool, typer.Option("--json", help="print analysis.json to stdout instead of a table")
    ] = False,
    quiet: Quiet = False,
    log_format: LogFormat = "text",
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            help="allow full unpickling of a checkpoint that is not plain tensors, and the code "
            "(import paths) its config names; trusted files only"
        ),
    ] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Measure the curvature of a checkpoint with the chosen metrics (default: all: eigenvalues,
    traces, gradient-noise trace tr(V), m-sharpness S_m, GGN / functional-Hessian split, tau,
    spectral densities and per-layer values). Writes OUT/analysis.json, layers.csv, density.png."""
    del debug  # read by main(): it decides whether tracebacks are shown

    from landscape.analysis import analyze as run_analysis
    from landscape.dtypes import parse_dtype
    from landscape.metrics import parse_metrics, parse_options
    from landscape.resolve import resolve_inputs
    from landscape.runs import dumps_json, ensure_writable_dir, write_analysis

    leader = leader_process()  # under torchrun: every rank analyses its shard, rank 0 writes
    torch_dtype = parse_dtype(dtype)
    chosen = parse_metrics(metrics)
    options = parse_options(option)
    if samples is not None and samples < 1:
        raise UserError(f"--samples must be positive, got {samples}")
    output = Output.parse(quiet, log_format, leader, json_output)
    set_threads(threads)
    ensure_writable_dir(out)
    with stage_progress(output, "analyze") as spinner:
        report = announcing(spinner, leader)
        report("loading model and data")
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
        )
        result = run_analysis(
            inputs.model,
            inputs.data,
            inputs.loss,
            chosen,
            params=params,
            batch_size=batch_size,
            dtype=torch_dtype,
            top_k=top_k,
            trace_method=trace_method,
            trace_samples=trace_samples,
            tol=tol,
            max_iter=max_iter,
            layer_samples=layer_samples,
            layer_max_iter=layer_max_iter,
            density_probes=density_probes,
            density_steps=density_steps,
            exact=exact,
            hvp_method=hvp_method,
            seed=seed,
            device=device,
            max_memory=max_memory,
            progress=report,
            **options,
        )
        context = inputs.context() | {"seed": seed, "params": params, "max_memory": max_memory}
        if not leader:
            return
        report("writing files")
        written = write_analysis(result, out, context)
    if json_output:
        out_console.file.write(dumps_json(result.to_dict() | {"context": context}))
        return
    for line in [inputs.note, *result.notes] if inputs.note else result.notes:
        note(line, output)
    if output.json_lines:
        from landscape.metrics import record_keys

        values = {k: v for k, v in result.to_dict().items() if k not in record_keys()}  # no densities
        summary_event("analyze", output, values=values, context=context, files=[str(p) for p in written])
    elif quiet:
        print_paths(written)
    else:
        print_table(summary_table(result))
        print_line("wrote " + ", ".join(str(p) for p in written))


@app.command()
@holds_output(lambda args: args["out"])
def surface(
    checkpoint: Annotated[Path | None, typer.Argument(help="checkpoint at the centre of the slices")] = None,
    model: Annotated[str | None, typer.Option(help="built-in or package.module:factory")] = None,
    data: Annotated[str | None, typer.Option(help="built-in, .pt/.npz file or module:function")] = None,
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    samples: Annotated[int | None, bounded(SAMPLES, "use the first N samples")] = None,
    kind: Annotated[str, typer.Option(help="1d, 2d or both")] = "both",
    other: Annotated[
        Path | None, typer.Option(help="a second checkpoint: also the 1D path between the two")
    ] = None,
    distance: Annotated[float, bounded(SLICE_DISTANCE, "slice half-width in filter norms")] = 1.0,
    steps: Annotated[int, bounded(SLICE_STEPS, "points along the 1D slice")] = 41,
    grid: Annotated[int, bounded(SLICE_GRID, "points per axis of the 2D slice")] = 21,
    include_1d_params: Annotated[
        bool, typer.Option(help="also move biases and norm parameters (default: fixed, as Li et al.)")
    ] = False,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    seed: Annotated[int, bounded(SEED, "seeds the random directions")] = 0,
    device: Device = "auto",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("surface"),
    trust_checkpoint: Annotated[
        bool,
        typer.Option(help="allow full unpickling and the code its config names (trusted files only)"),
    ] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Loss-landscape slices around a checkpoint: 1D and 2D filter-normalised random directions
    (Li et al. 2018) and, with --other, the linear path between two checkpoints."""
    del debug
    from landscape.checkpoints import load_state_dict
    from landscape.dtypes import parse_dtype
    from landscape.problem import Problem
    from landscape.resolve import resolve_inputs
    from landscape.runs import ensure_writable_dir, write_surface
    from landscape.surface import compute_surface

    if kind not in ("1d", "2d", "both"):
        raise UserError(f"--kind must be 1d, 2d or both, got '{kind}'")
    leader = leader_process()  # under torchrun: every rank evaluates on its shard, rank 0 writes
    torch_dtype = parse_dtype(dtype)
    ensure_writable_dir(out)
    with stage_progress(leader, "surface") as spinner:
        report = announcing(spinner, leader)
        report("loading model and data")
        inputs = resolve_inputs(
            checkpoint,
            model,
            data,
            loss,
            samples=samples,
            seed=seed,
            dtype=torch_dtype,
            trust_checkpoint=trust_checkpoint,
        )
        problem = Problem(inputs.model, inputs.data, inputs.loss, dtype=torch_dtype, device=device)
        other_params = None
        if other is not None:
            other_params = load_state_dict(other, trust_checkpoint=trust_checkpoint)
        result = compute_surface(
            problem,
            line=kind in ("1d", "both"),
            plane=kind in ("2d", "both"),
            other=other_params,
            distance=distance,
            line_steps=steps,
            plane_steps=grid,
            ignore_1d=not include_1d_params,
            seed=seed,
            progress=report,
        )
        if not leader:
            return
        report("writing files")
        context = inputs.context() | {"other": str(other) if other else None, "device": str(problem.device)}
        written = write_surface(result, out, context)
    print_line(f"loss at the checkpoint {result.center_loss:.6g}")
    print_line("wrote " + ", ".join(str(p) for p in written))


@app.command(name="models")
def list_builtin_models() -> None:
    """List the built-in models and data sets."""
    from landscape.data import list_data
    from landscape.models import list_models

    table = Table(show_header=True, header_style="bold")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("description")
    for name, desc in list_models().items():
        table.add_row("model", name, desc)
    for name, desc in list_data().items():
        table.add_row("data", name, desc)
    print_table(table)


def _print_version(value: bool) -> None:
    if value:
        from landscape.provenance import version_line

        out_console.print(version_line(), markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="print the version of landscape and torch",
        ),
    ] = False,
) -> None:
    """Loss-landscape diagnostics for PyTorch checkpoints."""


app.command(name="train")(train)
app.command(name="prune-eval")(prune_eval)
app.command(name="report")(report)
app.command(name="demo")(demo)


def _error_line(message: str) -> None:
    """One line on stderr, never wrapped (scripts grep it)."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()


def _environment_error(exc: BaseException) -> UserError | None:
    """A full disk (``ENOSPC``/``EDQUOT``, or torch.save's short write) as one line, else ``None``."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return write_error(exc, exc.filename or Path.cwd())
    if isinstance(exc, RuntimeError) and "unexpected pos" in str(exc):
        return write_error(exc, Path.cwd())
    return None


def _warning_lines(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning of a command that succeeded as one line on stderr."""
    seen: set[str] = set()
    for w in caught:
        line = f"warning: {one_line(w.message)} ({w.category.__name__})"
        if line not in seen:
            seen.add(line)
            sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors and a non-zero exit for bad input; tracebacks with --debug.

    Python warnings raised during a command (torch's, transformers') are held back: a command that
    fails prints its ``error:`` line alone, one that succeeds prints each distinct warning as one
    ``warning:`` line; with ``--debug`` they show as Python shows them, as they happen."""
    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args:
        return _main(args, debug=True)
    with warnings.catch_warnings(record=True) as caught:
        code = _main(args, debug=False)
    if code == 0:
        _warning_lines(caught)
    return code


def _main(args: list[str], debug: bool) -> int:
    try:
        code = app(args=args, standalone_mode=False, prog_name="landscape")
    except UserError as exc:
        _error_line(str(exc))
        if debug:
            raise
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        return 130
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click/typer usage errors
            _error_line(exc.format_message())
            return int(exc.exit_code)
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            return int(exc.exit_code)
        if type(exc).__name__ == "Abort":
            err_console.print("aborted", markup=False)
            return 130
        environment = _environment_error(exc)
        if environment is not None:  # a full disk a writer did not name
            _error_line(str(environment))
            if debug:
                raise
            return 1
        # a bug or an error from user code: one line unless --debug
        if debug:
            raise
        _error_line(f"{type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)")
        return 1
    # standalone_mode=False: click returns the exit code (130 after Ctrl-C) instead of raising
    return code if isinstance(code, int) else 0


def entry_point() -> None:
    """``landscape`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
