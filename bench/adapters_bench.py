"""Separate LoRA adapters vs a merged export, per format, in one run (issue 16's numbers), on the built-in tiny
LFM2 with its two built-in adapters (``lfm2-tiny-lora`` rank 8 on every projection, ``lfm2-tiny-lora2`` rank 4 on
six).  Written into bench/RESULTS.md (``--write``) with the CPU, the commit and the machine's load.

    .venv/bin/python bench/adapters_bench.py [--formats gguf:q8_0,onnx:int8,executorch:8da4w] [--write]

Per format: the merged bundle's size and each separate adapter file's size; the switch time
(``session.use_adapter``, median over repeated switches between the adapters and the base; ExecuTorch reloads
the program with the other data file); decode tokens/s (engine timers, greedy, ``--tokens`` after a 16-token
prompt, mean of ``--reps``) of the merged bundle, of the separate bundle with an adapter active, and with none
(the zero branches still run: ONNX and ExecuTorch keep their LoRA matmuls; llama.cpp skips them without an
adapter).  Exports skip verification (the tests verify); speed ratios within one run are what to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common

BASE = "builtin:lfm2-tiny"
LORA1, LORA2 = "builtin:lfm2-tiny-lora", "builtin:lfm2-tiny-lora2"
DEFAULT = "gguf:q8_0,onnx:int8,executorch:8da4w"


def bundle_bytes(root: Path, skip: str | None = None) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not (skip and skip in p.parts))


def decode_tps(session, reps: int, tokens: int) -> float:
    from edgekit.runtimes import SamplingParams

    prompt = list(range(5, 21))
    params = SamplingParams(max_tokens=tokens, stop_at_eos=False)
    session.generate(prompt, params)  # warm-up
    return statistics.mean(session.generate(prompt, params).timing.decode_tps for _ in range(reps))


def one(fmt: str, quant: str, work: Path, reps: int, tokens: int) -> dict:
    import edgekit
    from edgekit.export import export, make_plan

    opts = {"max_context": 512} if fmt == "executorch" else {}
    quiet = lambda _m: None  # noqa: E731
    t = time.perf_counter()
    merged = export(make_plan(BASE, fmt, quant, LORA1, opts), work / f"{fmt}-merged", verify=False, progress=quiet)
    t_merged = time.perf_counter() - t
    t = time.perf_counter()
    sep = export(make_plan(BASE, fmt, quant, [f"main={LORA1}", f"http={LORA2}"], {**opts, "lora_mode": "separate"}),
                 work / f"{fmt}-separate", verify=False, progress=quiet)
    t_sep = time.perf_counter() - t
    s = edgekit.load(merged)
    try:
        tps_merged = decode_tps(s, reps, tokens)
    finally:
        s.close()
    s = edgekit.load(sep)
    try:
        items = s.manifest["adapters"]["items"]
        switches = [s.use_adapter(name) for _ in range(3) for name in ("main", "http", None)]
        s.use_adapter("main")
        tps_adapter = decode_tps(s, reps, tokens)
        s.use_adapter(None)
        tps_none = decode_tps(s, reps, tokens)
    finally:
        s.close()
    return {
        "format": f"{fmt} {quant}",
        "merged_bytes": bundle_bytes(merged),
        "base_bytes": bundle_bytes(sep, skip="adapters"),
        "adapter_bytes": {n: e["bytes"] for n, e in items.items()},
        "switch_ms": statistics.median(switches) * 1e3,
        "tps_merged": tps_merged,
        "tps_adapter": tps_adapter,
        "tps_none": tps_none,
        "export_s": (t_merged, t_sep),
    }


def table(rows: list[dict]) -> list[str]:
    out = [
        "| format | merged bundle | separate base | adapter `main` (r8, 34 proj.) | adapter `http` (r4, 18 proj.) "
        "| switch (median) | decode merged | decode + adapter | decode, no adapter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["adapter_bytes"]
        out.append(
            f"| {r['format']} | {r['merged_bytes'] / 1e6:.2f} MB | {r['base_bytes'] / 1e6:.2f} MB | "
            f"{a['main'] / 1e3:.0f} kB | {a['http'] / 1e3:.0f} kB | {r['switch_ms']:.2f} ms | "
            f"{r['tps_merged']:.0f} t/s | {r['tps_adapter']:.0f} t/s ({r['tps_adapter'] / r['tps_merged']:.2f}x) | "
            f"{r['tps_none']:.0f} t/s |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=DEFAULT)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--write", action="store_true", help="write the section into bench/RESULTS.md")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.formats.split(","):
            fmt, quant = spec.split(":")
            print(f"{fmt} {quant} ...", file=sys.stderr, flush=True)
            rows.append(one(fmt, quant, Path(tmp), args.reps, args.tokens))
            print("\n".join(table(rows)[-1:]), file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    lines = [
        "",
        f"Built-in tiny LFM2 (6 M parameters) with two separate adapters vs the same model with `main` merged; "
        f"{common.cpu_name()}, commit {common.git_commit()}, {os.cpu_count()} cores shared with other jobs (load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after: absolute t/s are noisy, ratios within a "
        f"row are what to read). Decode: greedy, {args.tokens} tokens after 16, engine timers, mean of "
        f"{args.reps}. `python bench/adapters_bench.py --write`.",
        "",
        *table(rows),
        "",
        "Switch = `session.use_adapter(name)`: llama.cpp `llama_set_adapters_lora` on the loaded model (adapter file "
        "read once); ONNX Runtime rebinding the adapter's tensors as inputs (file read once); ExecuTorch reloading the "
        "program with the adapter's .ptd (XNNPACK repacks at method load). With no adapter, llama.cpp runs the base "
        "graph alone, while the ONNX and ExecuTorch graphs still run their (zero) LoRA branches.",
    ]
    print("\n".join(lines))
    if args.write:
        path = common.HERE / "RESULTS.md"
        text = path.read_text()
        title = "## Separate LoRA adapters"
        body = "\n".join([title, *lines]) + "\n"
        start = text.find(f"\n{title}\n")
        if start < 0:
            text = text.rstrip("\n") + "\n\n" + body
        else:
            end = text.find("\n## ", start + 1)
            text = text[: start + 1] + body + (text[end + 1 :] if end > 0 else "")
        path.write_text(text)


if __name__ == "__main__":
    main()
