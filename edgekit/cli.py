"""The ``edgekit`` command: a thin argparse layer over the typed functions; choices come from the registries."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from . import cli_profile
from .errors import EdgekitError


def _progress(quiet: bool) -> Callable[[str], None]:
    start = time.perf_counter()

    def emit(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return emit


def _quant_help() -> str:
    from .exporters import EXPORTERS

    return "; ".join(f"{t.value}: {', '.join(e.quants)} (default {e.default_quant})" for t, e in EXPORTERS.items())


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export, make_plan

    options = {
        "pretokenizer": args.pretokenizer,
        "block_size": args.block_size,
        "accuracy_level": args.accuracy_level,
        "head_bits": args.head_bits,
        "group_size": args.group_size,
        "embedding_quant": args.embedding_quant,
        "max_context": args.max_context,
        "lora_mode": args.lora_mode,
        "shared_embedding": args.shared_embedding,
    }
    prep = make_plan(args.source, args.format, args.quant, args.adapter, options)
    progress = _progress(args.quiet)
    progress(f"plan: {prep.plan.family.value} -> {prep.plan.target.value} {prep.plan.quant.name}")
    export(prep, args.output, force=args.force, verify=not args.no_verify, progress=progress)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .export import verify_bundle

    report = verify_bundle(args.bundle, args.source, args.adapter, progress=_progress(args.quiet))
    print(report.table())
    return 0 if report.passed else 1


def cmd_run(args: argparse.Namespace) -> int:
    from . import load
    from .runtimes import SamplingParams, StreamResult

    options = {"n_threads": args.threads} if args.threads else {}
    session = load(args.bundle, **options)
    try:
        params = SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
        )
        result = StreamResult()
        for piece in session.stream(args.prompt, params, result):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        t = result.timing
        print(
            f"[{session.engine}] prompt {t.prompt_tokens} tok, {t.prefill_tps:.1f} tok/s; "
            f"generated {len(result.tokens)} tok, {t.decode_tps:.1f} tok/s; ttft {t.ttft_s * 1e3:.1f} ms",
            file=sys.stderr,
        )
    finally:
        session.close()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .bundle import check_files, read_manifest

    root = Path(args.bundle)
    m = read_manifest(root)
    check_files(root, m)
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    plan = m["plan"]
    lines = [
        f"bundle      {root}",
        f"family      {m['family']} ({m['kind']})",
        f"format      {m['format']} / {plan['quant']['name']} (engine {m['engine']})",
        f"source      {m['source']['path']}",
        f"adapter     {m['adapter']['path'] if m.get('adapter') else '-'}",
        "files       " + ", ".join(f"{k} ({v['size'] / 1e6:.2f} MB)" for k, v in m["files"].items()),
        f"tensors     {m['artifact'].get('tensor_types', '-')}",
    ]
    v = m.get("verification")
    if v:
        mt = v["metrics"]
        lines.append(
            f"verified    {'PASS' if v['passed'] else 'FAIL'}: top-1 {mt['top1']:.4f}, mean KL {mt['mean_kl']:.2e}, "
            f"max |Δlogit| {mt['max_abs_logit']:.2e}, greedy {mt['greedy_prefix']}/{mt['greedy_tokens']}"
        )
    else:
        lines.append("verified    no (run: edgekit verify BUNDLE)")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .builtin import NAMES
    from .exporters import EXPORTERS

    p = argparse.ArgumentParser(
        prog="edgekit",
        description="Export small models to GGUF / ExecuTorch / ONNX bundles, verify them against PyTorch, run them.",
        epilog="Example: edgekit export builtin:lfm2-tiny --adapter builtin:lfm2-tiny-lora --format gguf "
        "--quant q4_k_m -o out",
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="export a checkpoint (+ LoRA adapter) to a verified bundle")
    e.add_argument("source", help=f"Hugging Face checkpoint directory, or builtin:NAME ({', '.join(NAMES)})")
    e.add_argument("--adapter", help="PEFT LoRA adapter directory (or builtin:NAME), merged before export")
    e.add_argument("--format", required=True, choices=[t.value for t in EXPORTERS], help="output format")
    e.add_argument("--quant", help=f"quantisation, case-insensitive. {_quant_help()}")
    e.add_argument("-o", "--output", required=True, type=Path, help="bundle directory to create")
    e.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    e.add_argument("--no-verify", action="store_true", help="skip the parity check against PyTorch")
    e.add_argument("--pretokenizer", help="GGUF only: llama.cpp pre-tokenizer name when it cannot be derived")
    e.add_argument("--block-size", type=int, help="ONNX int8/int4: weights per scale (16/32/64/128/256, default 32)")
    e.add_argument("--accuracy-level", type=int, help="ONNX int8/int4: MatMulNBits compute type (4 = int8 activations, default)")
    e.add_argument("--head-bits", type=int, help="ONNX int4 / ExecuTorch 8da4w only: bits of the tied embedding / LM head (4 or 8)")
    e.add_argument("--group-size", type=int, help="ExecuTorch 8da4w only: weights per scale (32/64/128/256, 0 = per channel; default 32)")
    e.add_argument("--embedding-quant", choices=["none", "8", "4"], help="ExecuTorch only: quantise the token embedding table (default none)")
    e.add_argument("--max-context", type=int, help="ExecuTorch only: KV cache length in tokens (default min(2048, the model's))")
    e.add_argument("--lora-mode", choices=["merged", "separate"], help="ExecuTorch only: fold the adapter in (default) or keep it in adapter.ptd")
    e.add_argument("--shared-embedding", choices=["auto", "on", "off"], help="ExecuTorch only: store the tied "
                   "embedding / LM head table once, in model.ptd (on; auto, the default, = on for fp32 and 8da4w) or "
                   "keep one self-contained model.pte (off)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("verify", help="re-run the parity check of a bundle against the merged PyTorch model")
    v.add_argument("bundle", type=Path)
    v.add_argument("--source", help="checkpoint to compare with (default: the one recorded in the bundle)")
    v.add_argument("--adapter", help="adapter to merge (default: the one recorded in the bundle)")
    v.add_argument("-q", "--quiet", action="store_true")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("run", help="generate text from a bundle (streams to stdout)")
    r.add_argument("bundle", type=Path)
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-tokens", type=int, default=64)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-k", type=int, default=40)
    r.add_argument("--top-p", type=float, default=0.95)
    r.add_argument("--seed", type=int)
    r.add_argument("--threads", type=int)
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("info", help="show a bundle's manifest summary")
    i.add_argument("bundle", type=Path)
    i.add_argument("--json", action="store_true", help="print the whole manifest")
    i.set_defaults(func=cmd_info)
    cli_profile.add_parsers(sub)  # profile, device-test, golden, bench
    return p


def quiet_libraries() -> None:
    """The command prints its own progress; the libraries' import chatter and deprecation notices are noise
    to a user (transformers, torch, torchao, gguf).  Errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    for name in ("torch", "torch.utils._pytree", "torchao", "transformers", "peft", "gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: the staging directory has been removed already
        print(f"edgekit: error: {exc.strerror or exc} ({exc.filename or 'output'}); nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekit: interrupted; nothing was left at the output path", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
