"""benchmarks/gpu_check.py (the one-table GPU check) runs end to end: its CPU smoke run (`--device cpu --tiny`)."""
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train_mn", "label_passt", "label_ast", "frontend_mel", "frontend_fbank", "frontend_resampler")


def test_gpu_check_tiny_cpu_run_reports_every_stage(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["key"]: row for row in report["stages"]}
    assert set(rows) == set(STAGES), sorted(rows)
    for key, row in rows.items():
        assert math.isfinite(row["clips_per_s"]) and row["clips_per_s"] > 0, (key, row)
        assert isinstance(row["bound"], str) and row["bound"], (key, row)
        assert row["peak_memory"] == "n/a (cpu)", (key, row)
    assert report["device"] == "cpu" and report["precision"] == "32" and report["torch"]
    assert "| stage" in done.stdout and "peak memory" in done.stdout  # the printed table
