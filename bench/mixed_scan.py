"""The mixed-precision sensitivity scan, estimated vs exact (edgekit/mixed.py ``SCAN_METHOD``), on the built-in
trained LFM2 + LoRA: export wall time (verification off; calibration included), what each selects, and the
quality of the file (the quantisation cost as ``edgekit verify`` measures it: the file's weights vs the float
model on the 2,048 held-out tokens).

    .venv/bin/python bench/mixed_scan.py [--quants q4_k_m q4_0] [--out bench/RESULTS.md]

Run it alone on the machine: the times are compared within one run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import cpu_name, git_commit  # noqa: E402

from edgekit import mixed  # noqa: E402
from edgekit.bundle import read_manifest  # noqa: E402
from edgekit.export import export, make_plan, verify_bundle  # noqa: E402

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def run(quant: str, method: str | None, work: Path) -> dict:
    out = work / f"{quant}-{method or 'plain'}"
    options = {"mixed_precision": method is not None}
    mixed.SCAN_METHOD = method or "estimate"
    t0 = time.perf_counter()
    export(make_plan(SOURCE, "gguf", quant, ADAPTER, options=options), out, verify=False, progress=lambda _m: None)
    seconds = time.perf_counter() - t0
    cost = verify_bundle(out, progress=lambda _m: None).metrics["cost"]
    mix = read_manifest(out)["artifact"].get("mixed_precision") or {}
    return {"seconds": seconds, "top1": cost["top1"], "kl": cost["mean_kl"], "bpw": mix.get("bytes_per_weight"),
            "types": mix.get("tensor_types")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quants", nargs="+", default=["q4_k_m", "q4_0"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = ["| quant | scan | export s | bytes/weight (matrices) | cost top-1 | cost mean KL | same types as exact |",
            "|---|---|---|---|---|---|---|"]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for quant in args.quants:
            res = {m: run(quant, m, Path(tmp)) for m in (None, "estimate", "exact")}
            for m, r in res.items():
                same = "-" if m is None else ("yes" if r["types"] == res["exact"]["types"] else "no")
                rows.append(f"| {quant} | {m or 'none (calibrated only)'} | {r['seconds']:.1f} | {r['bpw'] or '-'} | "
                            f"{r['top1']:.4f} | {r['kl']:.2e} | {same} |")
                print(rows[-1], flush=True)
    head = (f"\n### Sensitivity scan: estimated vs exact ({datetime.date.today()}, {cpu_name()}, commit {git_commit()}, "
            f"load average {load:.1f} at the start)\n\n`.venv/bin/python bench/mixed_scan.py --quants "
            + " ".join(args.quants) + "`\n\n")
    if args.out:
        with args.out.open("a") as fh:
            fh.write(head + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
