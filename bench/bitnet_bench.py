"""BitNet size and speed, side by side in one run (issue 12's numbers), written into bench/RESULTS.md.

Two parts (each its own section of RESULTS.md):

``--part builtin`` — the built-in trained ``bitnet-tiny`` exported to every recipe quant (verified), next to the
built-in ``lfm2-tiny`` at Q4_0/Q8_0: artifact bytes per parameter, bits per weight of the ternary tensors, and
prefill/decode tokens/s through ``edgekit profile`` (llama-bench's method) in the same run.

``--part full`` — BitNet b1.58 2B-4T's shape (``../shared/fixtures/configs/bitnet-b1.58-2b-4t.json``) with random
ternary weights, as a packed checkpoint: GGUF TQ2_0 / TQ1_0 exports (export time and peak RSS of the exporting
process) and the same model at Q4_0 (llama.cpp's quantiser from the F16 export), next to an LFM2 of the same
width, depth and FFN (random bf16, GGUF Q4_0), profiled pp512/tg128 together.  llama.cpp's ``bitnet`` graph
hard-codes SiLU (the 2B-4T model uses squared ReLU, which edgekit's GGUF exporter refuses), so the speed model is
the 2B-4T shape with ``hidden_act: silu``: the FFN activation is a negligible part of a decode step.  Exports skip
verification here (a 2.4B-parameter A8 reference over 2,048 tokens takes hours on 2 cores); parity is the tests'
job, on the built-in model.

Run alone if you can: ``python bench/bitnet_bench.py --part builtin`` / ``--part full [--reps 2]``.  The load
average at the start and end is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

EDGEKIT = [sys.executable, "-m", "edgekit"]
FIXTURES = [Path(os.environ.get("EDGEKIT_SHARED_FIXTURES", "")), common.REPO.parent / "shared" / "fixtures",
            Path("/work/shared/fixtures")]


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def timed_export(args: list[str]) -> tuple[float, float]:
    """Run ``edgekit export ARGS`` in a fresh child; (seconds, peak RSS of the exporting process in GiB)."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:]).returncode; dt = time.perf_counter() - t; "
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *EDGEKIT, "export", *args], capture_output=True, text=True)
    dt, rss_kb, rc = out.stdout.split()[-3:]
    if int(rc) != 0:
        raise SystemExit(f"export failed ({' '.join(args)}):\n{out.stderr[-3000:]}")
    return float(dt), int(rss_kb) / 2**20


def profile(bundles: list[Path], prompt: int, gen: int, reps: int) -> list[dict]:
    cmd = [*EDGEKIT, "profile", *map(str, bundles), "-p", str(prompt), "-n", str(gen), "-r", str(reps), "-o", "json",
           "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"profile failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)["results"]


def case(result: dict, kind: str) -> dict:
    return next(c for c in result["cases"] if c["case"]["kind"] == kind)


def ternary_bpw(bundle: Path) -> str:
    """Bits per weight of the projection matrices (attention and FFN; ternary for BitNet) as stored in the file
    (GGUF: from the tensor types; other formats: -)."""
    manifest = json.loads((bundle / "edgekit.json").read_text())
    if manifest["plan"]["format"] != "gguf":
        return "-"
    from gguf import GGUFReader

    reader = GGUFReader(bundle / manifest["artifact"]["file"])
    bits = n = 0
    for t in reader.tensors:
        if any(k in t.name for k in ("attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_")) and t.name.endswith(
                "weight") and len(t.shape) > 1 and min(int(d) for d in t.shape) > 1:
            bits += int(t.n_bytes) * 8
            n += int(t.n_elements)
    return f"{bits / n:.3f}" if n else "-"


def params(bundle: Path) -> int:
    """Parameters of the exported model, counted from the source checkpoint's safetensors headers."""
    from safetensors import safe_open

    manifest = json.loads((bundle / "edgekit.json").read_text())
    src = Path(manifest["source"]["path"])
    total = 0
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                n = 1
                for d in shape:
                    n *= d
                # packed ternary: four 2-bit weights per uint8 (the published layout)
                total += n * (4 if st.get_slice(k).get_dtype() == "U8" else 1)
    return total


def table(rows: list[dict], prompt: int, gen: int) -> list[str]:
    out = [f"| model | format / quant | artifact MB | params (M) | bytes / param | projection bpw | pp{prompt} t/s | "
           f"tg{gen} t/s | tg roofline | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        pp, tg = case(res, "pp"), case(res, "tg")
        frac = tg.get("roofline_fraction")
        out.append(
            f"| {r['model']} | {res['format']} {res['quant']} | {res['file_size'] / 1e6:.2f} | {r['params'] / 1e6:.1f} | "
            f"{res['file_size'] / r['params']:.3f} | {r['bpw']} | {pp['tps_mean']:.1f} ± {pp['tps_std']:.1f} | "
            f"{tg['tps_mean']:.1f} ± {tg['tps_std']:.1f} | {f'{frac:.0%}' if frac else '-'} | "
            f"{res['peak_rss_mb']:.0f} |"
        )
    return out


def write_section(title: str, lines: list[str]) -> None:
    path = common.HERE / "RESULTS.md"
    text = path.read_text()
    start = text.find(f"\n{title}\n")
    body = "\n".join([title, *lines]) + "\n"
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n### ", start + 1)
        end2 = text.find("\n## ", start + 1)
        ends = [e for e in (end, end2) if e > 0]
        text = text[: start + 1] + body + (text[min(ends):] if ends else "")
    path.write_text(text)


def part_builtin(work: Path, reps: int) -> None:
    from edgekit.builtin import ROOT

    before = load()
    jobs = [("bitnet-tiny", "gguf", q) for q in ("tq2_0", "tq1_0", "f16")] + \
           [("bitnet-tiny", "onnx", q) for q in ("int2", "int4", "fp32")] + \
           [("bitnet-tiny", "executorch", q) for q in ("8da4w", "fp32")] + \
           [("lfm2-tiny", "gguf", q) for q in ("q4_0", "q8_0")]
    bundles = []
    for model, fmt, quant in jobs:
        out = work / f"{model}-{fmt}-{quant}"
        if not (out / "edgekit.json").exists():
            print(f"exporting {model} -> {fmt} {quant}", flush=True)
            timed_export([f"builtin:{model}", "--format", fmt, "--quant", quant, "-o", str(out), "--force"])
        bundles.append((model, out))
    print("profiling", flush=True)
    results = profile([b for _, b in bundles], 128, 64, reps)
    rows = [{"model": m, "result": r, "params": params(b), "bpw": ternary_bpw(b)} for (m, b), r in zip(bundles, results)]
    write_section("### BitNet: built-in bitnet-tiny in every format vs lfm2-tiny (one run)", [
        "", f"`python bench/bitnet_bench.py --part builtin --reps {reps}` — {common.cpu_name()}, 2 threads, commit "
        f"{common.git_commit()}, load average before / after: {before} | {load()}.  Bytes / param = artifact size / "
        "parameters of the checkpoint (ternary weights counted one each); projection bpw = bits per weight of the "
        "attention/FFN matrices in the file (GGUF; ternary for BitNet).  Tiny models sit in cache, so roofline "
        "fractions above 100 % mean the weights were not read from DRAM.  Speed through `edgekit profile` (llama-bench's method, "
        f"{reps} repetitions, mean ± sd).", "", *table(rows, 128, 64), "",
    ])


def fixture(name: str) -> Path:
    for d in FIXTURES:
        if str(d) and (d / "configs" / name).is_file():
            return d / "configs" / name
    raise SystemExit(f"{name} not found in {', '.join(map(str, FIXTURES))}")


def padded_tokenizer(src: Path, dst: Path, vocab: int) -> None:
    """The built-in tokenizer padded with unused entries to ``vocab`` rows (every sampled id decodes)."""
    tok = json.loads((src / "tokenizer.json").read_text())
    table_ = tok["model"]["vocab"]
    for i in range(max(table_.values()) + 1, vocab):
        table_[f"<unused{i}>"] = i
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    for f in ("tokenizer_config.json", "chat_template.jinja"):
        if (src / f).exists():
            shutil.copy(src / f, dst / f)


def full_bitnet(work: Path) -> Path:
    out = work / "bitnet-2b4t-silu-random"
    if (out / "model.safetensors").exists():
        return out
    from edgekit.builtin import ROOT
    from edgekit.families.bitnet.config import BitNetConfig
    from edgekit.families.bitnet.synthetic import random_weights
    from edgekit.families.bitnet.weights import write_checkpoint

    raw = json.loads(fixture("bitnet-b1.58-2b-4t.json").read_text())
    raw["hidden_act"] = "silu"  # llama.cpp's bitnet graph (see the module docstring)
    w = random_weights(BitNetConfig.from_hf(raw), seed=0)
    write_checkpoint(w, out, layout="packed", base_config=raw)
    padded_tokenizer(ROOT / "bitnet-tiny", out, w.config.vocab_size)
    return out


def full_lfm2(work: Path, like: dict) -> Path:
    """An LFM2 with the BitNet's hidden size, depth and FFN width (attention every third layer), random bf16."""
    out = work / "lfm2-2b4t-shape-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from edgekit.builtin import ROOT

    cfg = json.loads((common.HERE / "configs" / "lfm2-350m.json").read_text())
    cfg.pop("transformers_version", None)
    layers = like["num_hidden_layers"]
    cfg.update(hidden_size=like["hidden_size"], num_hidden_layers=layers, intermediate_size=like["intermediate_size"],
               block_ff_dim=like["intermediate_size"], block_auto_adjust_ff_dim=False,
               num_attention_heads=like["num_attention_heads"], num_key_value_heads=like["num_key_value_heads"])
    cfg["layer_types"] = ["full_attention" if i % 3 == 2 else "conv" for i in range(layers)]
    cfg.pop("full_attn_idxs", None)
    torch.manual_seed(0)
    Lfm2ForCausalLM(Lfm2Config(**cfg)).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    padded_tokenizer(ROOT / "lfm2-tiny", out, int(cfg["vocab_size"]))
    return out


def q4_0_copy(f16_bundle: Path, out: Path) -> None:
    """The F16 BitNet bundle re-quantised to Q4_0 by llama.cpp's quantiser (a speed comparison point only: Q4_0
    does not hold ternary weights exactly), with the manifest's file digests refreshed."""
    from edgekit.bundle import read_manifest, write_manifest
    from edgekit.exporters.gguf.writer import requantize
    from gguf import LlamaFileType

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(f16_bundle, out, ignore=shutil.ignore_patterns("model.gguf"))
    requantize(f16_bundle / "model.gguf", out / "model.gguf", LlamaFileType.MOSTLY_Q4_0)
    manifest = read_manifest(out)
    manifest["plan"]["quant"]["name"] = "q4_0"
    manifest["artifact"]["note"] = "bench only: requantised from the F16 export to Q4_0 (not exact ternary)"
    write_manifest(out, manifest)


def part_full(work: Path, reps: int, reuse: bool = False) -> None:
    """``reuse``: keep bundles (and their recorded export cost, ``exports.json``) from an earlier run in ``work``
    and only profile again — for re-measuring speed on a quiet machine."""
    before = load()
    bitnet = full_bitnet(work)
    like = json.loads((bitnet / "config.json").read_text())
    lfm2 = full_lfm2(work, like)
    record = work / "exports.json"
    exports: dict[str, list[float]] = json.loads(record.read_text()) if reuse and record.exists() else {}

    def export_once(key: str, out: Path, args: list[str]) -> None:
        if key in exports and (out / "edgekit.json").exists():
            return
        print(f"exporting {key}", flush=True)
        exports[key] = [*timed_export([*args, "--no-verify", "-o", str(out), "--force"]), load()]
        record.write_text(json.dumps(exports))

    bundles: list[tuple[str, Path, Path]] = []
    for quant in ("tq2_0", "tq1_0"):
        out = work / f"bitnet-gguf-{quant}"
        export_once(f"bitnet {quant}", out, [str(bitnet), "--format", "gguf", "--quant", quant])
        bundles.append(("BitNet 2B-4T shape (random ternary)", out, bitnet))
    q4 = work / "bitnet-gguf-q4_0"
    if not ("bitnet q4_0 (f16 export + requantise)" in exports and (q4 / "edgekit.json").exists()):
        f16 = work / "bitnet-gguf-f16"
        export_once("bitnet f16", f16, [str(bitnet), "--format", "gguf", "--quant", "f16"])
        print("requantising F16 -> Q4_0", flush=True)
        t = time.perf_counter()
        q4_0_copy(f16, q4)
        exports["bitnet q4_0 (f16 export + requantise)"] = [exports["bitnet f16"][0] + time.perf_counter() - t,
                                                            exports["bitnet f16"][1], load()]
        record.write_text(json.dumps(exports))
        shutil.rmtree(f16)
    bundles.append(("BitNet 2B-4T shape, Q4_0", q4, bitnet))
    out = work / "lfm2-gguf-q4_0"
    export_once("lfm2 q4_0", out, [str(lfm2), "--format", "gguf", "--quant", "q4_0"])
    bundles.append(("LFM2, same width/depth/FFN (random)", out, lfm2))
    print("profiling pp512 / tg128", flush=True)
    results = profile([b for _, b, _ in bundles], 512, 128, reps)
    rows = [{"model": m, "result": r, "params": params(b), "bpw": ternary_bpw(b)} for (m, b, _), r in zip(bundles, results)]
    tq2, q40 = case(results[0], "tg")["tps_mean"], case(results[2], "tg")["tps_mean"]
    lines = ["", f"`python bench/bitnet_bench.py --part full --reps {reps}` — {common.cpu_name()}, 2 threads, commit "
             f"{common.git_commit()}, load average before / after: {before} | {load()}.  BitNet b1.58 2B-4T's shape "
             "(hidden 2560, 30 layers, FFN 6912, 20/5 heads, vocab 128256) with random ternary weights, SiLU (see "
             "the script's docstring); the LFM2 has the same hidden size, depth and FFN (attention every third layer, "
             "vocab 65536).", "", *table(rows, 512, 128), "",
             f"Decode TQ2_0 / Q4_0 of the same model: {tq2 / q40:.2f}x.", "",
             "| export (`--no-verify`) | seconds | peak RSS GiB | load average after |", "|---|---|---|---|"]
    lines += [f"| {k} | {dt:.1f} | {rss:.2f} | {at} |" for k, (dt, rss, at) in exports.items()]
    write_section("### BitNet: full-size 2B-4T shape, ternary GGUF vs Q4_0 vs LFM2 (one run)", [*lines, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("builtin", "full"), required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="keep checkpoints and bundles here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="full: profile the bundles of an earlier run in --work again")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekit-bitnet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.part == "builtin":
        part_builtin(work, args.reps)
    else:
        part_full(work, args.reps, args.reuse)
    print(f"written to {common.HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
