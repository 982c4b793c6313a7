"""Parity of every GGUF quant on the built-in trained LFM2 + LoRA: the table README.md reports.

    .venv/bin/python bench/gguf_quality.py [--out bench/RESULTS.md]

Exports each quant with verification and prints (and appends to RESULTS.md) top-1 agreement, mean KL,
max |Δlogit|, greedy prefix, file size and the tensor types actually in the file.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from edgekit.bundle import read_manifest
from edgekit.export import export, make_plan
from edgekit.families import Family
from edgekit.plan import Format
from edgekit.recipes import RECIPES
from common import cpu_name  # noqa: E402  (bench/ is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, help="markdown file to append the table to")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = [
        "| quant | top-1 | mean KL | max abs Δlogit | greedy | size MB | tensor types | pass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for quant in RECIPES.get(Family.LFM2, Format.GGUF).quants:
            prep = make_plan("builtin:lfm2-tiny", "gguf", quant, "builtin:lfm2-tiny-lora")
            out = export(prep, Path(tmp) / quant, verify=True, progress=lambda _m: None)
            m = read_manifest(out)
            v, mt = m["verification"], m["verification"]["metrics"]
            size = m["files"]["model.gguf"]["size"] / 1e6
            types = ", ".join(f"{k}×{n}" for k, n in m["artifact"]["tensor_types"].items())
            rows.append(
                f"| {quant} | {mt['top1']:.4f} | {mt['mean_kl']:.2e} | {mt['max_abs_logit']:.3f} | "
                f"{mt['greedy_prefix']}/{mt['greedy_tokens']} | {size:.2f} | {types} | {'yes' if v['passed'] else 'NO'} |"
            )
            print(rows[-1], flush=True)
    text = (
        f"\n### GGUF parity, built-in lfm2-tiny + LoRA ({mt['tokens']} held-out tokens)\n\n"
        f"commit {commit}, {cpu_name()}, command: `.venv/bin/python bench/gguf_quality.py`\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
