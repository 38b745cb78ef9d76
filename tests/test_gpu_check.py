"""docs/gpu_check.sh at tiny size on the CPU (Gloo process group): the script itself is known to work."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_at_tiny_size_on_the_cpu_and_writes_one_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(ROOT / "docs" / "gpu_check.sh"), "--device", "cpu", "--preset", "tiny",
                           "--steps", "2", "--batch-size", "2", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["train"]["steps"] == 2 and report["train"]["finite"]
    parity = report["benchmark"]["token_agreement_vs_cpu"]["eager FP32 cpu"]
    assert parity == [1.0] * 6  # the CPU against itself: the parity code compares like with like
    assert "torch eager FP32 (cpu)" in report["benchmark"]["seconds_per_image"]


def test_gpu_check_refuses_a_bad_device_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "docs" / "gpu_check.sh"), "--device", "tpu", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "cpu or cuda" in proc.stderr
