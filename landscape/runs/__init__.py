"""Run folders: their layout and file names, atomic writers and validated readers, in one place.

Below :mod:`landscape.train` (which writes run folders) and :mod:`landscape.report` (which reads
them), so that neither needs the other. The modules:

* :mod:`~landscape.runs.layout`: every file name (``config.json``, ``metrics.jsonl``,
  ``checkpoints/step-N.pt``, ``final.pt``, ``summary.json``, ``analysis.json``, ``layers.csv``,
  ``density.png``, ``suite.json``, ``surface.json``, ``prune-*.json``) and where it lies;
* :mod:`~landscape.runs.files`: atomic writing (``write_text_atomic``, ``staged_output``), strict
  JSON (``jsonable``, ``dumps_json``) and the one function that creates output folders;
* :mod:`~landscape.runs.write`: one writer per file of a run, suite, analysis or surface folder;
* :mod:`~landscape.runs.read`: readers that return validated dicts and records, with one-line
  ``UserError``\\ s for a missing or malformed file;
* :mod:`~landscape.runs.checkpoints`: step checkpoints and ``final.pt``.
"""

from landscape.runs.checkpoints import (
    load_run_checkpoint,
    model_state,
    rng_state,
    save_final,
    save_run_checkpoint,
    set_rng_state,
)
from landscape.runs.files import (
    create_output_dir,
    dumps_json,
    ensure_writable_dir,
    json_line,
    jsonable,
    staged_output,
    write_atomic,
    write_text_atomic,
)
from landscape.runs.layout import (
    ANALYSIS_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CONFIG_VERSION,
    DENSITY_FILE,
    FINAL_FILE,
    LAYERS_FILE,
    METRICS_FILE,
    REPORT_HTML,
    REPORT_MARKDOWN,
    SUITE_FILE,
    SUMMARY_FILE,
    SURFACE_FILE,
    TIMING_FIELDS,
    checkpoint_path,
    holds_run,
    is_run_folder,
    is_suite_folder,
    latest_checkpoint,
    list_checkpoints,
    run_files,
)
from landscape.runs.read import (
    find_run_dirs,
    read_analysis,
    read_config,
    read_json_object,
    read_metrics,
    read_suite,
    read_summary,
    strip_timing,
)
from landscape.runs.write import (
    append_record,
    check_fresh_folder,
    open_metrics,
    remove_unstarted_run,
    start_run,
    truncate_metrics,
    write_analysis,
    write_prune_results,
    write_suite,
    write_summary,
    write_surface,
)

__all__ = [
    "ANALYSIS_FILE",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "CONFIG_VERSION",
    "DENSITY_FILE",
    "FINAL_FILE",
    "LAYERS_FILE",
    "METRICS_FILE",
    "REPORT_HTML",
    "REPORT_MARKDOWN",
    "SUITE_FILE",
    "SUMMARY_FILE",
    "SURFACE_FILE",
    "TIMING_FIELDS",
    "append_record",
    "check_fresh_folder",
    "checkpoint_path",
    "create_output_dir",
    "dumps_json",
    "ensure_writable_dir",
    "find_run_dirs",
    "holds_run",
    "is_run_folder",
    "is_suite_folder",
    "json_line",
    "jsonable",
    "latest_checkpoint",
    "list_checkpoints",
    "load_run_checkpoint",
    "model_state",
    "open_metrics",
    "read_analysis",
    "read_config",
    "read_json_object",
    "read_metrics",
    "read_suite",
    "read_summary",
    "remove_unstarted_run",
    "rng_state",
    "run_files",
    "save_final",
    "save_run_checkpoint",
    "set_rng_state",
    "staged_output",
    "start_run",
    "strip_timing",
    "truncate_metrics",
    "write_analysis",
    "write_atomic",
    "write_prune_results",
    "write_suite",
    "write_summary",
    "write_surface",
    "write_text_atomic",
]
