"""The GPU benchmark script keeps running on CPU with the tiny model, so it never rots (no timings asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_runs_on_cpu_with_tiny_model():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--steps", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith(("| sumie", "| diffusers"))]
    assert [row.split("|")[1].strip() for row in rows] == ["sumie eager", "diffusers eager (SDPA)", "sumie compile()"]
