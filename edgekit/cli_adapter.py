"""``edgekit adapter add|list``: separate LoRA adapters of a bundle (``edgekit.adapters``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _progress(quiet: bool):  # type: ignore[no-untyped-def]
    start = time.perf_counter()

    def emit(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return emit


def cmd_add(args: argparse.Namespace) -> int:
    from .adapters import add

    entry = add(args.bundle, args.adapter_dir, args.name, verify=not args.no_verify, progress=_progress(args.quiet))
    v = entry.get("verification")
    print(f"added adapter {args.name!r} to {args.bundle}: {entry['file']} ({entry['bytes'] / 1e6:.2f} MB)"
          + ("" if v is None else f", verification {'PASS' if v['passed'] else 'FAIL'}"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .adapters import describe
    from .bundle import read_manifest

    m = read_manifest(args.bundle)
    lines = describe(m)
    if not lines:
        print(f"{args.bundle}: no separate adapters (exported with --lora-mode {'merged' if m.get('adapter') else '-'})")
        return 0
    print(f"{args.bundle}: {(m['adapters'] or {}).get('mechanism', '')}")
    print("\n".join("  " + line for line in lines))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("adapter", help="add or list the separate LoRA adapters of a bundle")
    asub = a.add_subparsers(dest="adapter_command", required=True, parser_class=type(a))
    add = asub.add_parser(
        "add", help="add a PEFT LoRA adapter to a --lora-mode separate bundle without re-exporting the base",
        description="Checks the adapter against the bundle's recorded source checkpoint (same refusals as export), "
        "writes its file, verifies base + adapter through the engine, and replaces the bundle only when all passed.",
    )
    add.add_argument("bundle", type=Path)
    add.add_argument("adapter_dir", help="PEFT adapter directory (or builtin:NAME)")
    add.add_argument("--name", required=True, help="the name sessions use: session.use_adapter(NAME), edgekit run --adapter NAME")
    add.add_argument("--no-verify", action="store_true", help="skip the parity check of base + adapter")
    add.add_argument("-q", "--quiet", action="store_true")
    add.set_defaults(func=cmd_add)
    ls = asub.add_parser("list", help="list a bundle's adapters with their sizes and verification")
    ls.add_argument("bundle", type=Path)
    ls.set_defaults(func=cmd_list)
