"""Round-to-nearest vs calibrated (or data-free search) 4-bit quantisation, every format, on the built-in trained
LFM2 + LoRA: the table in bench/RESULTS.md ("Calibrated 4-bit quantisation").

    .venv/bin/python bench/calibration_quality.py [--out bench/RESULTS.md] [--only gguf]

Each scheme is exported without verification, then measured the way the issue defines quality: the engine's
teacher-forced logits against the merged PyTorch reference (float32) on the held-out text (2,048 tokens in
windows of 512, each from a fresh state): top-1 agreement and mean KL(reference || engine); plus the greedy
prefix (how many of 32 greedy tokens after a 48-token prompt match the reference's), the bundle's bytes and the
export wall time (calibration included; a shared machine: compare rows of one run).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import cpu_name  # noqa: E402

from edgekit import reference as ref_mod  # noqa: E402
from edgekit import runtimes  # noqa: E402
from edgekit.bundle import read_manifest  # noqa: E402
from edgekit.export import export, make_plan  # noqa: E402
from edgekit.kinds.language import parity  # noqa: E402

# (format, quant, label, options)
SCHEMES = [
    ("gguf", "q4_k_m", "round-to-nearest", {"no_calibration": True, "mixed_precision": False}),
    ("gguf", "q4_k_m", "imatrix (calibrated)", {"mixed_precision": False}),
    ("gguf", "q4_k_m", "imatrix + mixed (default)", {"mixed_precision": True}),
    ("gguf", "q4_0", "round-to-nearest", {"no_calibration": True, "mixed_precision": False}),
    ("gguf", "q4_0", "imatrix (calibrated)", {"mixed_precision": False}),
    ("gguf", "q4_0", "imatrix + mixed (default)", {"mixed_precision": True}),
    ("gguf", "q5_k_m", "round-to-nearest", {"no_calibration": True}),
    ("gguf", "q5_k_m", "imatrix (calibrated)", {}),
    ("onnx", "int4", "round-to-nearest (affine)", {"no_calibration": True}),
    ("onnx", "int4", "HQQ (data-free)", {"weight_algorithm": "hqq"}),
    ("onnx", "int4", "mixed (round-to-nearest)", {"mixed_precision": True, "weight_algorithm": "affine"}),
    ("onnx", "int4", "mixed + GPTQ (default)", {"mixed_precision": True}),
    ("executorch", "8da4w", "round-to-nearest (affine)", {"no_calibration": True}),
    ("executorch", "8da4w", "HQQ scale-only (data-free)", {"weight_algorithm": "hqq", "no_calibration": True}),
    ("executorch", "8da4w", "mixed (round-to-nearest)", {"mixed_precision": True, "weight_algorithm": "affine"}),
    ("executorch", "8da4w", "mixed + GPTQ (default)", {"mixed_precision": True}),
]
SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"


def measure(bundle: Path, model, text: str) -> dict[str, float]:
    from tokenizers import Tokenizer

    from edgekit.runtimes.protocol import SamplingParams

    m = read_manifest(bundle)
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    bos = m["model"].get("bos_id") if m["model"].get("add_bos") else None
    session = runtimes.load(bundle)
    try:
        tot = {"agree": 0.0, "kl_sum": 0.0, "n": 0.0}
        for w in parity.windows(ids, bos, parity.WINDOW, parity.MIN_TOKENS):
            c = parity.compare_logits(ref_mod.logits(model, w), session.logits(w))
            for k in tot:
                tot[k] += c[k]
        prompt = ([bos] if bos is not None else []) + ids[: parity.GREEDY_PROMPT]
        want = ref_mod.greedy(model, prompt, parity.GREEDY_TOKENS)
        got = session.generate(prompt, SamplingParams(max_tokens=parity.GREEDY_TOKENS, stop_at_eos=False)).tokens
    finally:
        session.close()
    return {
        "top1": tot["agree"] / tot["n"], "kl": tot["kl_sum"] / tot["n"], "tokens": int(tot["n"]),
        "greedy": parity.greedy_prefix(want, got), "bytes": sum(f["size"] for f in m["files"].values()),
        "bpw": weight_bytes(bundle, m),
    }


def weight_bytes(bundle: Path, m: dict) -> str:
    """GGUF: bytes per weight of the quantised matrices (every 2-D tensor not stored as F32); other formats: the
    mixed-precision summary's bytes per weight where the manifest has one; '-' elsewhere."""
    mixed = m["artifact"].get("mixed_precision") or {}
    if m["artifact"].get("file") != "model.gguf":
        return f"{mixed['bytes_per_weight']:.4f}" if "bytes_per_weight" in mixed else "-"
    import gguf
    import numpy as np

    stored = [t for t in gguf.GGUFReader(str(bundle / "model.gguf")).tensors if t.tensor_type.name != "F32"]
    return f"{sum(int(t.n_bytes) for t in stored) / sum(int(np.prod(t.shape)) for t in stored):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, help="markdown file to append the table to")
    ap.add_argument("--only", help="one format")
    ap.add_argument("--quants", help="comma-separated quants to run (default: all)")
    ap.add_argument("--schemes", help="comma-separated scheme labels' first words to run, e.g. mixed,round-to-nearest")
    ap.add_argument("--source", default=SOURCE, help=f"checkpoint (default {SOURCE})")
    ap.add_argument("--adapter", default=ADAPTER, help=f"LoRA adapter, or 'none' (default {ADAPTER})")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    text = parity.heldout_text()
    model = None
    rows = ["| format | quant | scheme | top-1 | mean KL | greedy | bundle MB | bytes/weight | export s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (fmt, quant, label, opts) in enumerate(SCHEMES):
            if (args.only and fmt != args.only) or (args.quants and quant not in args.quants.split(",")):
                continue
            if args.schemes and label.split()[0] not in args.schemes.split(","):
                continue
            prep = make_plan(args.source, fmt, quant, None if args.adapter == "none" else args.adapter, opts)
            if model is None:
                model = ref_mod.load_reference(prep.checkpoint, prep.adapter, prep.plan.options)
            t0 = time.perf_counter()
            out = export(prep, Path(tmp) / f"b{k}", verify=False, progress=lambda _m: None)
            seconds = time.perf_counter() - t0
            r = measure(out, model, text)
            rows.append(
                f"| {fmt} | {quant} | {label} | {r['top1']:.4f} | {r['kl']:.2e} | {r['greedy']}/{parity.GREEDY_TOKENS} | "
                f"{r['bytes'] / 1e6:.2f} | {r['bpw']} | {seconds:.0f} |"
            )
            print(rows[-1], flush=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = (
        f"\ncommit {commit}, {cpu_name()}, {when}, load average at start {' '.join(load)} (2 cores shared by "
        f"several jobs); {r['tokens']} held-out tokens; command: `.venv/bin/python bench/calibration_quality.py {' '.join(sys.argv[1:])}`\n\n"
        + "\n".join(rows) + "\n"
    )
    print(table)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(table)


if __name__ == "__main__":
    main()
