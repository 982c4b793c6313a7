"""The apps' subcommands: ``edgekit chat``, ``edgekit serve``, ``edgekit bundle --for``.  Registered by
``cli.build_parser`` with ``add_parsers(sub)``; the apps themselves live in apps/ (installed as edgekit.apps)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _load(bundle: Path, threads: int | None, ctx: int | None) -> Any:
    from . import load
    from .bundle import read_manifest

    options: dict[str, Any] = {"n_threads": threads} if threads else {}
    if ctx:
        if read_manifest(bundle).get("engine") != "llama.cpp":
            from .errors import UnsupportedError

            raise UnsupportedError("--ctx applies to GGUF bundles (llama.cpp); the other engines' context is fixed "
                                   "at export")
        options["n_ctx"] = ctx
    return load(bundle, **options)


def cmd_chat(args: argparse.Namespace) -> int:
    from .apps.chat import run_chat
    from .runtimes import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop_at_eos=not args.ignore_eos)
    session = _load(args.bundle, args.threads, args.ctx)
    try:
        return run_chat(session, args.bundle, params, system=args.system)
    finally:
        session.close()


def cmd_serve(args: argparse.Namespace) -> int:
    from .apps.server import ServerConfig, serve

    config = ServerConfig(host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
                          max_queue=args.max_queue, max_body_bytes=args.max_body_kb * 1024)
    session = _load(args.bundle, args.threads, args.ctx)
    try:
        serve(session, args.bundle, config)
    finally:
        session.close()
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from .apps.mobile import TARGETS, lay_out

    out = lay_out(args.bundle, TARGETS[args.target], args.output, force=args.force)
    print(f"{out}: laid out for {args.target}; next steps in {out / 'README.md'}", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("chat", help="terminal chat with a language bundle (streaming, its chat template)")
    c.add_argument("bundle", type=Path)
    c.add_argument("--system", help="a system message at the start of the conversation")
    c.add_argument("--max-tokens", type=_positive, default=256, help="tokens per answer at most (default 256)")
    c.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    c.add_argument("--top-k", type=int, default=40)
    c.add_argument("--top-p", type=float, default=0.95)
    c.add_argument("--seed", type=int)
    c.add_argument("--ctx", type=_positive, help="context window in tokens (GGUF only; default the bundle's, "
                   "at most 4096)")
    c.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-sequence token")
    c.add_argument("--threads", type=_positive)
    c.set_defaults(func=cmd_chat, guard_engine=True)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server for a bundle (+ a Sudoku page for solvers)")
    s.add_argument("bundle", type=Path)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    s.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 requests")
    s.add_argument("--model-name", help="the model id clients use (default: the bundle directory's name)")
    s.add_argument("--max-queue", type=_positive, default=16, help="requests admitted at once, running or waiting "
                   "(default 16); more get 429")
    s.add_argument("--max-body-kb", type=_positive, default=1024, help="largest request body (default 1024 KiB)")
    s.add_argument("--ctx", type=_positive, help="context window in tokens (GGUF only)")
    s.add_argument("--threads", type=_positive)
    s.set_defaults(func=cmd_serve)

    from .apps.mobile import TARGETS

    b = sub.add_parser("bundle", help="lay out a bundle for a mobile app template (model, tokenizer, settings, guide)")
    b.add_argument("bundle", type=Path)
    b.add_argument("--for", dest="target", required=True, type=str.lower, choices=sorted(TARGETS),
                   help="the app template")
    b.add_argument("-o", "--output", required=True, type=Path, help="directory to create")
    b.add_argument("--force", action="store_true", help="replace OUTPUT if it is an earlier layout")
    b.set_defaults(func=cmd_bundle)
