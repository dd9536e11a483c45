"""What glibc's malloc settings do to a UNet step, for sumie and for diffusers (full SD 1.5 architecture).

    python benchmarks/allocator.py [--calls 5] [--write]

Four processes take turns (A B C D A B ...), each timing a guided 256² UNet step and counting the minor
page faults it takes: sumie as it comes (`sumie.speed.allocator` keeps freed memory), sumie with
SUMIE_KEEP_FREED_MEMORY=0 (glibc's defaults), diffusers as it comes (glibc's defaults), and diffusers with
sumie's settings (GLIBC_TUNABLES). `--write` refreshes the "Allocator" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

STEP = "UNet step, batch 2, 256²"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5, help="timed steps per process")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    from compare import TUNABLES, lockstep
    from load import write_model
    folder, _ = write_model()
    procs = {"sumie (keeps freed memory)": ("sumie", dict(os.environ)),
             "sumie, glibc's defaults": ("sumie", dict(os.environ, SUMIE_KEEP_FREED_MEMORY="0")),
             "diffusers, sumie's settings": ("diffusers", dict(os.environ, GLIBC_TUNABLES=TUNABLES)),
             "diffusers (glibc's defaults)": ("diffusers", dict(os.environ))}
    step = lockstep(procs, folder, args.calls, only=[STEP])[STEP]
    import torch
    lines = [f"- Command: `python benchmarks/allocator.py --calls {args.calls}` (torch {torch.__version__}, float32, "
             f"2 threads; the four processes take turns, median of {args.calls} steps each)", "",
             "| process | 256² UNet step | minor page faults per step |", "| --- | --- | --- |"]
    lines += [f"| {label} | {seconds:.2f} s | {faults:,.0f} |" for label, (seconds, faults) in step.items()]
    from doc import report
    report("## Allocator (issue 7)", lines, args.write)


if __name__ == "__main__":
    main()
