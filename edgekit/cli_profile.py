"""The profiling and device subcommands of ``edgekit``: profile, device-test, golden, bench.

Kept apart from cli.py so that the export flags there and these evolve independently; cli.py calls
``add_parsers`` once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from .errors import EdgekitError


def _progress(quiet: bool) -> Callable[[str], None]:
    def emit(msg: str) -> None:
        if not quiet:
            print(f"[edgekit] {msg}", file=sys.stderr, flush=True)

    return emit


def _threads(text: str) -> tuple[int | None, ...]:
    from .profiling.values import parse_counts

    return parse_counts(text, "-t", allow_zero=False)


def _spec(args: argparse.Namespace):
    from .profiling.values import ProfileSpec, parse_counts

    return ProfileSpec(
        prompts=parse_counts(args.n_prompt, "-p"),
        gens=parse_counts(args.n_gen, "-n"),
        depths=parse_counts(args.depth, "-d"),
        threads=_threads(args.threads) if args.threads else (None,),
        repetitions=args.repetitions,
        warmup=not args.no_warmup,
    )


def _emit_report(report, args: argparse.Namespace) -> None:
    from .profiling import report as render

    text = render.render(report, args.output)
    if args.file:
        Path(args.file).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"[edgekit] wrote {args.file}", file=sys.stderr)
    else:
        print(text)
    if args.plot:
        from .profiling.plot import write_png

        print(f"[edgekit] wrote {write_png(report, args.plot)}", file=sys.stderr)


def cmd_profile(args: argparse.Namespace) -> int:
    from . import devices
    from .profiling.session import profile

    report = profile(args.bundles, _spec(args), devices.parse(args.device), progress=_progress(args.quiet),
                     bandwidth=not args.no_roofline)
    _emit_report(report, args)
    if report.interrupted:
        print("[edgekit] interrupted: the results above are partial", file=sys.stderr)
        return 130
    return 1 if any(r.error for r in report.results) else 0


def cmd_device_test(args: argparse.Namespace) -> int:
    from . import devices
    from .devicetest import run_device_tests

    outcome = run_device_tests(args.bundle, devices.parse(args.device), progress=_progress(args.quiet),
                               extra_args=args.pytest_args or [])
    print(outcome.summary)
    return 0 if outcome.passed else 1


def cmd_golden(args: argparse.Namespace) -> int:
    from .golden import write_golden

    path = write_golden(args.bundle, progress=_progress(args.quiet))
    print(f"[edgekit] wrote {path}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import devices
    from .matrix import run_matrix

    spec = _spec(args)
    report, table_path, png_path = run_matrix(
        args.source, args.adapter, args.out_dir, spec, devices.parse(args.device), formats=args.formats,
        quants=args.quants, progress=_progress(args.quiet), verify=args.verify,
    )
    print(table_path.read_text())
    print(f"[edgekit] wrote {table_path} and {png_path}", file=sys.stderr)
    return 130 if report.interrupted else (1 if any(r.error for r in report.results) else 0)


def _measurement_flags(p: argparse.ArgumentParser, prompts: str = "512", gens: str = "128", reps: int = 5) -> None:
    from .profiling.report import FORMATS

    g = p.add_argument_group("measurement (llama-bench's flags)")
    g.add_argument("-p", "--n-prompt", default=prompts, help=f"prompt lengths for prefill tests, comma list; 0 skips (default {prompts})")
    g.add_argument("-n", "--n-gen", default=gens, help=f"token counts for decode tests, comma list; 0 skips (default {gens})")
    g.add_argument("-d", "--depth", default="0", help="tokens already in the cache before each test, comma list (default 0)")
    g.add_argument("-t", "--threads", help="thread counts, comma list (default: all cores)")
    g.add_argument("-r", "--repetitions", type=int, default=reps, help=f"repetitions per test (default {reps})")
    g.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each test")
    g.add_argument("--no-roofline", action="store_true", help="skip the memory-bandwidth probe (no roofline column)")
    p.add_argument("--device", default="local",
                   help="local (default), ssh://user@host[:port][?identity=KEY&python=PY&known_hosts=FILE], or adb[:serial]")
    p.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--file", type=Path, help="write the output to FILE instead of stdout")
    p.add_argument("--plot", type=Path, help="also write a PNG comparing the bundles (needs the plot extra)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure load time, TTFT, prefill/decode tokens/s, peak RSS, roofline (llama-bench's method)",
        description="Profile bundles with llama-bench's method: random tokens, a warm-up, caches cleared per "
        "repetition, mean ± sample stddev of per-repetition tokens/s.",
        epilog="Example: edgekit profile out/q4 out/q8 -p 128,512 -n 128 -t 1,2 --device ssh://pi@raspberrypi.local",
    )
    p.add_argument("bundles", nargs="+", type=Path, help="bundle directories")
    _measurement_flags(p)
    p.set_defaults(func=cmd_profile)

    d = sub.add_parser("device-test", help="ship device_tests/ and a bundle to a device and run them there")
    d.add_argument("bundle", type=Path)
    d.add_argument("--device", default="local", help="local (default), ssh://user@host[:port][?...], or adb[:serial]")
    d.add_argument("-q", "--quiet", action="store_true")
    d.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    d.set_defaults(func=cmd_device_test)

    g = sub.add_parser("golden", help="write the golden outputs device_tests/ checks against (needs the export extra)")
    g.add_argument("bundle", type=Path)
    g.add_argument("-q", "--quiet", action="store_true")
    g.set_defaults(func=cmd_golden)

    b = sub.add_parser(
        "bench",
        help="export a model to every format x quantisation edgekit supports and profile them all",
        epilog="Example: edgekit bench --out-dir bench-out -p 512 -n 128 -r 3",
    )
    b.add_argument("source", nargs="?", default="builtin:lfm2-tiny", help="checkpoint (default builtin:lfm2-tiny)")
    b.add_argument("--adapter", help="LoRA adapter merged before export (e.g. builtin:lfm2-tiny-lora)")
    b.add_argument("--out-dir", type=Path, default=Path("edgekit-bench"), help="where bundles, table and plot go")
    b.add_argument("--formats", help="comma list of formats (default: every registered exporter)")
    b.add_argument("--quants", help="comma list of quantisations (default: every one each format supports)")
    b.add_argument("--verify", action="store_true", help="run the parity check on each export (slower)")
    _measurement_flags(b, reps=3)
    b.set_defaults(func=cmd_bench)


__all__ = ["add_parsers", "EdgekitError"]
