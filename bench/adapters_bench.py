"""Separate LoRA adapters vs a merged export, per format, in one run (issue 16's numbers), on the built-in tiny
LFM2 with its two built-in adapters (``lfm2-tiny-lora`` rank 8 on every projection, ``lfm2-tiny-lora2`` rank 4 on
six).  Written into bench/RESULTS.md (``--write``) with the CPU, the commit and the machine's load.

    .venv/bin/python bench/adapters_bench.py [--formats gguf:q8_0,onnx:int8,executorch:8da4w] [--write]

``--write`` with every format rewrites the section; with some formats it replaces only their rows and records
their run (commit, load) under the table.

Per format: the merged bundle's size and each separate adapter file's size; the switch time
(``session.use_adapter``, median over repeated switches between the adapters and the base; ExecuTorch passes
the other adapter's tensors as the program's LoRA inputs); decode tokens/s (engine timers, greedy, ``--tokens`` after a 16-token
prompt, one thread, median of ``--reps`` interleaved repetitions) of the merged bundle, of the separate bundle with an adapter active, and with none
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
from typing import Any

import common

BASE = "builtin:lfm2-tiny"
LORA1, LORA2 = "builtin:lfm2-tiny-lora", "builtin:lfm2-tiny-lora2"
DEFAULT = "gguf:q8_0,onnx:int8,executorch:8da4w"
NOTE = (
    "Sizes: a GGUF adapter file holds only its own factors (F32); ONNX and ExecuTorch adapter files hold every "
    "branch of the graph at the largest rank (zero-padded), so `http` is as large as `main`. The ONNX separate "
    "base carries the zero default branch tensors; the ExecuTorch separate base is the merged program's layout "
    "(tied table stored once) plus the branches' matmuls, whose factors are inputs. The LoRA "
    "branches cost relatively much on this 6 M-parameter model (each a separate small matmul beside 4.9 M base "
    "weights); on a full-size model the same adapter is a far smaller share of the work."
)


def bundle_bytes(root: Path, skip: str | None = None) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not (skip and skip in p.parts))


def decode_once(session, tokens: int) -> float:
    from edgekit.runtimes import SamplingParams

    params = SamplingParams(max_tokens=tokens, stop_at_eos=False)
    return session.generate(list(range(5, 21)), params).timing.decode_tps


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
    # one thread each and interleaved repetitions: the machine is shared, so the three rates see the same load
    m = edgekit.load(merged, n_threads=1)
    s = edgekit.load(sep, n_threads=1)
    try:
        items = s.manifest["adapters"]["items"]
        first = s.use_adapter("main")  # reads the adapter file
        switches = [s.use_adapter(name) for _ in range(3) for name in ("http", "main", None)]
        rates: dict[str, list[float]] = {"merged": [], "adapter": [], "none": []}
        for k in range(reps + 1):  # the first round warms up
            got = {"merged": decode_once(m, tokens)}
            s.use_adapter("main")
            got["adapter"] = decode_once(s, tokens)
            s.use_adapter(None)
            got["none"] = decode_once(s, tokens)
            if k:
                for key, v in got.items():
                    rates[key].append(v)
    finally:
        s.close()
        m.close()
    tps_merged, tps_adapter, tps_none = (statistics.median(rates[k]) for k in ("merged", "adapter", "none"))
    return {
        "format": f"{fmt} {quant}",
        "merged_bytes": bundle_bytes(merged),
        "base_bytes": bundle_bytes(sep, skip="adapters"),
        "adapter_bytes": {n: e["bytes"] for n, e in items.items()},
        "switch_ms": statistics.median(switches) * 1e3,
        "first_switch_ms": first * 1e3,
        "tps_merged": tps_merged,
        "tps_adapter": tps_adapter,
        "tps_none": tps_none,
        "export_s": (t_merged, t_sep),
    }


def table(rows: list[dict]) -> list[str]:
    out = [
        "| format | merged bundle | separate base | adapter `main` (r8, 34 proj.) | adapter `http` (r4, 18 proj.) "
        "| first switch (reads file) | switch (median) | decode merged | decode + adapter | decode, no adapter |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["adapter_bytes"]
        out.append(
            f"| {r['format']} | {r['merged_bytes'] / 1e6:.2f} MB | {r['base_bytes'] / 1e6:.2f} MB | "
            f"{a['main'] / 1e3:.0f} kB | {a['http'] / 1e3:.0f} kB | {r['first_switch_ms']:.2f} ms | "
            f"{r['switch_ms']:.2f} ms | "
            f"{r['tps_merged']:.0f} t/s | {r['tps_adapter']:.0f} t/s ({r['tps_adapter'] / r['tps_merged']:.2f}x) | "
            f"{r['tps_none']:.0f} t/s |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=DEFAULT)
    ap.add_argument("--reps", type=int, default=5)
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
        f"row are what to read). Decode: 1 thread, greedy, {args.tokens} tokens after 16, engine timers, median of "
        f"{args.reps} interleaved repetitions (merged, + adapter, none) after a warm-up round. "
        f"`python bench/adapters_bench.py --write`.",
        "",
        *table(rows),
        "",
        "Switch = `session.use_adapter(name)`: llama.cpp `llama_set_adapters_lora` on the loaded model (adapter file "
        "read once); ONNX Runtime rebinding the adapter's tensors as inputs (file read once); ExecuTorch passing the "
        "adapter's factors and scale as the program's LoRA inputs on every call (file read once; no reload, any "
        "scale). With no adapter, llama.cpp runs the base graph alone, while the ONNX and ExecuTorch graphs still "
        "run their (zero) LoRA branches.",
        "",
        NOTE,
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
        elif args.formats != DEFAULT:
            text = replace_rows(text, start, rows, load_before, load_after, args)
        else:
            end = text.find("\n## ", start + 1)
            text = text[: start + 1] + body + (text[end + 1 :] if end > 0 else "")
        path.write_text(text)


def replace_rows(text: str, start: int, rows: list[dict], before: tuple, after: tuple, args: Any) -> str:
    """The section's table rows of the formats measured now replaced, each followed (below the table) by a line
    saying when and under what load it was measured."""
    lines = text[start:].split("\n")
    top = next(i for i, x in enumerate(lines) if x.startswith("| format |"))
    end = top
    while end + 1 < len(lines) and lines[end + 1].startswith("|"):
        end += 1
    table_rows = lines[top : end + 1]
    notes_at = end + 2  # the lines after the table's blank line: earlier per-row notes
    notes = []
    while notes_at < len(lines) and " row: re-measured in a run of its own" in lines[notes_at]:
        notes.append(lines[notes_at])
        notes_at += 1
    for r, line in zip(rows, table(rows)[2:]):
        head = f"| {r['format']} |"
        hit = [i for i, x in enumerate(table_rows) if x.startswith(head)]
        if hit:
            table_rows[hit[0]] = line
        else:
            table_rows.append(line)
        notes = [x for x in notes if not x.startswith(f"The {r['format']} row:")]
        notes.append(f"The {r['format']} row: re-measured in a run of its own (other rows not re-run), commit {common.git_commit()}, load average "
                     f"{before[0]:.1f} before, {after[0]:.1f} after (`python bench/adapters_bench.py --formats "
                     f"{args.formats} --write`).")
    rest = lines[notes_at:] if notes_at > end + 2 else lines[end + 1 :]
    while rest and not rest[0]:
        rest = rest[1:]
    out = lines[:top] + table_rows + [""] + notes + [""] + rest
    return text[:start] + "\n".join(out)

if __name__ == "__main__":
    main()
