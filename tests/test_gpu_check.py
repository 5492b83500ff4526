"""The prepared GPU check's plumbing, on the CPU (the GPU steps themselves need a CUDA machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steps_run_log_and_summarise(tmp_path):
    check = load()
    ok = check.run_step("tests", [sys.executable, "-c", "print('3 passed in 0.1s')"], tmp_path, 60, {})
    assert ok["status"] == "passed" and ok["summary"] == "3 passed in 0.1s"
    assert (tmp_path / "tests.log").read_text().startswith("$ ")
    bad = check.run_step("distributed", [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path, 60, {})
    assert bad["status"] == "failed" and bad["summary"] == "exit 3"
    slow = check.run_step("scale", [sys.executable, "-c", "import time; time.sleep(5)"], tmp_path, 0.5, {})
    assert slow["status"] == "timeout"
    payload = {
        "results": [
            {
                "shape": "gpt2-0.1m",
                "device": "cuda:0",
                "rows": [{"product": "H", "route": "reuse", "x_gradient": 2.04}],
                "lambda_max": {"products": 9, "error_bound": 1e-4},
                "pyhessian": {"x_gradient": 2.5},
            },
            {"shape": "gpt2-124m", "failed": "stopped: resident memory above --max-rss 12 GiB"},
        ]
    }
    text = check.scale_summary(payload)
    assert (
        "gpt2-0.1m (cuda:0): H reuse 2.04x, lambda_max 9 products, bound 1.0e-04, PyHessian HVP 2.50x" in text
    )
    assert "gpt2-124m: stopped" in text


def test_the_table_is_printed_and_saved_without_cuda(tmp_path, monkeypatch, capsys):
    check = load()
    monkeypatch.setattr(
        sys, "argv", ["gpu_check.py", "--out", str(tmp_path), "--skip", "tests,distributed,scale"]
    )
    assert check.main() == 0
    printed = capsys.readouterr().out
    assert "| step | status | seconds | summary |" in printed
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["step"] for r in saved["rows"]] == ["tests", "distributed", "scale"]
    assert all(r["status"] == "skipped" for r in saved["rows"])
    assert (tmp_path / "gpu_check.md").read_text().startswith("GPU check on")
