"""The ``edgekit`` command: a thin argparse layer over the typed functions; choices come from the registries."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import cli_adapter, cli_apps, cli_profile
from .errors import EdgekitError


class _Parser(argparse.ArgumentParser):
    """argparse with edgekit's error convention: one line on stderr starting ``edgekit: error:``, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"edgekit: error: {self.prog.split(' ', 1)[-1] if ' ' in self.prog else 'edgekit'}: "
                         f"{message} (see {self.prog} --help)\n")
        sys.exit(2)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _progress(quiet: bool) -> Callable[[str], None]:
    start = time.perf_counter()

    def emit(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return emit


def _quant_help() -> str:
    from .recipes import RECIPES

    return "; ".join(
        f"{r.family.value} -> {r.format.value}: {', '.join(r.quants)} (default {r.default_quant})" for r in RECIPES
    )


def _option_fields() -> dict[str, tuple[Any, list[str]]]:
    """Every option of every recipe: name -> (the dataclass field, its help texts).  One flag per name; the
    recipes that share a name share its meaning, and each recipe's own ``Options.parse`` checks the value."""
    from .recipes import RECIPES

    out: dict[str, tuple[Any, list[str]]] = {}
    for cls in RECIPES.options_classes():
        for f in dataclasses.fields(cls):
            field, helps = out.setdefault(f.name, (f, []))
            text = f.metadata.get("help")
            if not text or any(h.startswith(text) for h in helps):
                continue  # a recipe's text that another's extends says nothing new
            helps[:] = [h for h in helps if not text.startswith(h)] + [text]
    return out


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("format options (generated from the recipe table; `edgekit formats` lists "
                                      "which apply where)")
    for name, (f, helps) in _option_fields().items():
        choices = f.metadata.get("choices")
        if f.type in (bool, "bool"):
            group.add_argument("--" + name.replace("_", "-"), dest=f"opt_{name}", action="store_const", const=True,
                               help="; ".join(helps))
            continue
        group.add_argument(
            "--" + name.replace("_", "-"), dest=f"opt_{name}", metavar=None if choices else name.upper(),
            choices=[str(c) for c in choices] if choices else None, help="; ".join(helps),
        )


NO_CHECK_HELP = "skip the sha256 check of the bundle's files (sizes are still checked)"


MAX_KL_HELP = ("refuse a bundle whose quantisation costs more than this mean KL (nats/token) against the float model "
               "(reported either way; the tensor check and engine fidelity always gate)")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export, make_plan

    options = {k.removeprefix("opt_"): v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    prep = make_plan(args.source, args.format, args.quant, args.adapter, options,
                     allow_extra_tensors=args.allow_extra_tensors)
    progress = _progress(args.quiet)
    progress(f"plan: {prep.plan.family.value} -> {prep.plan.format.value} {prep.plan.quant.name}")
    export(prep, args.output, force=args.force, verify=not args.no_verify, progress=progress, max_kl=args.max_kl)
    return 0


def cmd_formats(args: argparse.Namespace) -> int:
    """The support matrix: which family exports to which format, with which quantisations and options."""
    from .families import FAMILIES
    from .plan import Format
    from .recipes import RECIPES

    rows = [r.describe() for r in RECIPES]
    if args.json:
        refused = [
            {"family": f.value, "format": fmt.value, "why": RECIPES.refusal(f, fmt)}
            for f in FAMILIES for fmt in Format if RECIPES.refusal(f, fmt)
        ]
        print(json.dumps({"recipes": rows, "refused": refused}, indent=2))
        return 0
    lines = [f"{'family':<8} {'format':<11} {'quants (default first)':<58} options"]
    for family in FAMILIES:
        for fmt in Format:
            try:
                r = RECIPES.get(family, fmt)
            except EdgekitError:
                why = RECIPES.refusal(family, fmt) or "not supported yet"
                lines.append(f"{family.value:<8} {fmt.value:<11} -  {why}")
                continue
            quants = [r.default_quant] + [q for q in r.quants if q != r.default_quant]
            opts = ", ".join("--" + n.replace("_", "-") for n in r.options.flags(r.quants)) or "-"
            lines.append(f"{family.value:<8} {fmt.value:<11} {', '.join(quants):<58} {opts}")
    print("\n".join(lines))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .export import verify_bundle

    report = verify_bundle(args.bundle, args.source, args.adapter, progress=_progress(args.quiet), max_kl=args.max_kl)
    print(report.table())
    return 0 if report.passed else 1


def cmd_run(args: argparse.Namespace) -> int:
    from . import load
    from .runtimes import SamplingParams, StreamResult

    if args.adapter is None and args.adapter_scale != 1.0:
        raise EdgekitError("--adapter-scale applies to a separate adapter: name it with --adapter NAME")
    options = {"n_threads": args.threads} if args.threads else {}
    session = load(args.bundle, check=not args.no_check, **options)
    try:
        if not hasattr(session, "stream"):
            raise EdgekitError(f"{args.bundle} is a {session.manifest.get('kind')} model; use `edgekit solve` for it")
        if args.adapter is not None:
            session.use_adapter(args.adapter, args.adapter_scale)
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


def cmd_solve(args: argparse.Namespace) -> int:
    """Solve puzzles with a solver bundle (TRM/HRM): token ids (.npy) or text grids in, answers out."""
    import numpy as np

    from . import load
    from .kinds.solver import grid

    if args.output is not None and args.output.exists() and not args.force:
        raise EdgekitError(f"{args.output} exists; pass --force to overwrite it, or choose another -o path")
    session = load(args.bundle, check=not args.no_check, **({"n_threads": args.threads} if args.threads else {}))
    try:
        if not hasattr(session, "solve"):
            raise EdgekitError(f"{args.bundle} is a {session.manifest.get('kind')} model; use `edgekit run` for it")
        puzzles = grid.read_puzzles(args.input, session.seq_len)
        if len(puzzles) == 0:
            raise EdgekitError(f"{args.input}: no puzzles")
        n = grid.sudoku_side(session.seq_len, session.vocab_size)
        for k, why in enumerate(grid.sudoku_conflict(p, n) if n else None for p in puzzles):
            if why:
                raise EdgekitError(f"{args.input}: puzzle {k} is not a valid Sudoku: {why}")
        ids = np.load(args.puzzle_identifiers) if args.puzzle_identifiers else None
        answers, steps, seconds = [], [], 0.0
        for start in range(0, len(puzzles), args.batch_size):
            sol = session.solve(puzzles[start : start + args.batch_size],
                                None if ids is None else ids[start : start + args.batch_size],
                                max_steps=args.max_steps, halt=not args.no_halt)
            answers.append(sol.answers)
            steps.append(sol.steps)
            seconds += sol.seconds
    finally:
        session.close()
    answers_all, steps_all = np.concatenate(answers), np.concatenate(steps)
    if args.output:
        tmp = args.output.with_name(args.output.name + ".partial.npy")
        np.save(tmp, answers_all.astype(np.int32))
        tmp.replace(args.output)
    solved = [grid.is_sudoku_solution(p, a) for p, a in zip(puzzles, answers_all)] if n else None
    for k in range(min(args.show, len(puzzles))):
        verdict = "" if solved is None else (" — a valid solution" if solved[k] else " — NOT a valid solution")
        print(f"puzzle {k} ({steps_all[k]} steps)\n{grid.render(puzzles[k])}\n-> answer{verdict}\n"
              f"{grid.render(answers_all[k])}\n")
    print(
        f"[{session.engine}] {len(puzzles)} puzzles, steps mean {steps_all.mean():.2f} (max "
        f"{session.halt_max_steps if args.max_steps is None else args.max_steps}), {seconds:.3f} s in the engine, "
        f"{len(puzzles) / seconds if seconds else 0.0:.1f} puzzles/s"
        + ("" if solved is None else f", {sum(solved)}/{len(puzzles)} valid Sudoku solutions")
        + (f"; answers in {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .bundle import check_files, read_manifest
    from .errors import BundleError

    root = Path(args.bundle)
    m = read_manifest(root)
    check_files(root, m, hashes=not args.no_check)
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
        from . import kinds

        try:
            summary = kinds.behaviour(m["kind"]).summary(v["metrics"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{root}: verification.metrics is damaged ({type(exc).__name__}: {exc}); run: "
                              "edgekit verify BUNDLE") from None
        lines.append(f"verified    {'PASS' if v['passed'] else 'FAIL'}: {summary}")
    else:
        lines.append("verified    no (run: edgekit verify BUNDLE)")
    if m.get("adapters"):
        from .adapters import describe

        lines += [f"adapters    {line}" for line in describe(m)]
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .builtin import NAMES
    from .plan import Format

    p = _Parser(
        prog="edgekit",
        description="Export small models to GGUF / ExecuTorch / ONNX bundles, verify them against PyTorch, run them.",
        epilog="Example: edgekit export builtin:lfm2-tiny --adapter builtin:lfm2-tiny-lora --format gguf "
        "--quant q4_k_m -o out",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("export", help="export a checkpoint (+ LoRA adapter) to a verified bundle")
    e.add_argument("source", help=f"Hugging Face checkpoint directory, or builtin:NAME ({', '.join(NAMES)})")
    e.add_argument("--adapter", action="append", help="PEFT LoRA adapter directory (or builtin:NAME), merged before "
                   "export; with --lora-mode separate repeat it, optionally as NAME=PATH, for several named adapters")
    e.add_argument("--format", required=True, type=str.lower, choices=[t.value for t in Format], help="output format")
    e.add_argument("--quant", help=f"quantisation, case-insensitive. {_quant_help()}")
    e.add_argument("-o", "--output", required=True, type=Path, help="bundle directory to create")
    e.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    e.add_argument("--no-verify", action="store_true", help="skip the parity check against PyTorch")
    e.add_argument("--max-kl", type=_positive_float, help=MAX_KL_HELP)
    e.add_argument("--allow-extra-tensors", action="store_true",
                   help="export a checkpoint holding tensors the model does not use, where dropping them provably "
                        "changes nothing (never quantisation scales or layer tensors)")
    add_option_flags(e)
    e.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("verify", help="re-run the parity check of a bundle against the merged PyTorch model")
    v.add_argument("bundle", type=Path)
    v.add_argument("--source", help="checkpoint to compare with (default: the one recorded in the bundle)")
    v.add_argument("--adapter", help="adapter to merge (default: the one recorded in the bundle)")
    v.add_argument("--max-kl", type=_positive_float, help=MAX_KL_HELP)
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
    r.add_argument("--adapter", help="apply this separate adapter of the bundle (`edgekit adapter list BUNDLE`)")
    r.add_argument("--adapter-scale", type=float, default=1.0, help="multiplier of the adapter's update (default 1)")
    r.add_argument("--no-check", action="store_true", help=NO_CHECK_HELP)
    r.set_defaults(func=cmd_run, guard_engine=True)

    so = sub.add_parser("solve", help="solve puzzles with a TRM/HRM bundle (early halting by default)")
    so.add_argument("bundle", type=Path)
    so.add_argument("--input", required=True, type=Path, help="puzzles: .npy token ids [N, seq_len] in the official "
                    "dataset encoding (0 pad, 1 blank, 2.. digits), or a text file with one grid per line "
                    "(digits, '.' or '0' for blanks)")
    so.add_argument("-o", "--output", type=Path, help="write the answers (token ids, int32 [N, seq_len]) as .npy")
    so.add_argument("--force", action="store_true", help="overwrite an existing -o file")
    so.add_argument("--puzzle-identifiers", type=Path, help=".npy of int [N] (default 0 for every puzzle)")
    so.add_argument("--max-steps", type=_positive, help="supervision steps at most (default: the model's halt_max_steps)")
    so.add_argument("--no-halt", action="store_true", help="run every step, as the official evaluation does")
    so.add_argument("--batch-size", type=_positive, default=64, help="puzzles per engine call (default 64)")
    so.add_argument("--show", type=int, default=0, help="print the first N puzzles and answers as grids")
    so.add_argument("--threads", type=int)
    so.add_argument("--no-check", action="store_true", help=NO_CHECK_HELP)
    so.set_defaults(func=cmd_solve, guard_engine=True)

    f = sub.add_parser("formats", help="print the support matrix: family x format, quantisations, options")
    f.add_argument("--json", action="store_true", help="machine-readable, with the parity thresholds")
    f.set_defaults(func=cmd_formats)

    i = sub.add_parser("info", help="show a bundle's manifest summary")
    i.add_argument("bundle", type=Path)
    i.add_argument("--json", action="store_true", help="print the whole manifest")
    i.add_argument("--no-check", action="store_true", help=NO_CHECK_HELP)
    i.set_defaults(func=cmd_info)
    cli_profile.add_parsers(sub)  # profile, device-test, golden, bench
    cli_apps.add_parsers(sub)  # chat, serve, bundle --for
    cli_adapter.add_parsers(sub)  # adapter add, adapter list
    add_verbose_flags(p, sub)
    return p


def add_verbose_flags(p: argparse.ArgumentParser, sub: Any) -> None:
    """``--verbose`` before or after the subcommand: an error's details (a library's own multi-line text, the
    traceback) are shown only with it; without it every refusal is one line."""
    help_ = "on an error, also print its details and traceback"
    p.add_argument("-v", "--verbose", action="store_true", help=help_)
    for sp in sub.choices.values():
        if "--verbose" not in sp._option_string_actions:  # a subcommand may already have its own
            sp.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=help_)


def report_error(exc: BaseException, verbose: bool, prefix: str = "edgekit: error: ", hint: str = "") -> None:
    """One line on stderr (the first line of the message); with ``verbose`` the rest and the traceback."""
    import traceback

    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    tail = " (details: run again with --verbose)" if len(lines) > 1 and not verbose else hint
    print(f"{prefix}{lines[0]}{tail}", file=sys.stderr)
    if verbose:
        for line in lines[1:]:
            print(line, file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)


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
    verbose = bool(getattr(args, "verbose", False))
    if getattr(args, "guard_engine", False):  # run / chat / solve: an engine abort becomes one line
        return _handled(lambda: _guarded(args, verbose), verbose)
    return _handled(lambda: args.func(args), verbose)


def _guarded(args: argparse.Namespace, verbose: bool) -> int:
    """Run the command in a forked child when the bundle's engine can kill its process (runtimes/probe.py)."""
    from .bundle import read_manifest
    from .runtimes import probe

    manifest = read_manifest(Path(args.bundle))
    quiet = manifest["engine"] == "executorch" and not verbose

    def command() -> int:
        with _native_stderr_silenced() if quiet else contextlib.nullcontext():
            return _handled(lambda: args.func(args), verbose)

    if not probe.guarded(manifest):
        return command()
    return probe.run_supervised(command, args.bundle, str(manifest["engine"]),
                                checked=not getattr(args, "no_check", False))


class _DropNativeLogLines:
    """A text stream that drops whole lines in ExecuTorch's log format (``[cpuinfo_utils.cpp:71] ...``, ``I
    tokenizers:...``): its runtime hands a few of them to Python's ``sys.stderr`` in pieces; everything else passes."""

    _NATIVE = re.compile(r"^(\[[\w.]+\.(cpp|cc|h):\d+\] |[IWE] tokenizers:)")

    def __init__(self, stream: Any) -> None:
        self._stream, self._pending = stream, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not self._NATIVE.match(line):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        # a log line arrives in pieces, each flushed ("[", "cpuinfo_utils.cpp", ":", ...): a partial line that may
        # still become one is held until its newline
        if self._pending and not self._pending.startswith(("[", "I ", "W ", "E ")):
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def close(self) -> None:
        if self._pending and not self._NATIVE.match(self._pending):
            self._stream.write(self._pending)
        self._pending = ""
        self._stream.flush()
        self._stream.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Native code's writes to fd 2 go to /dev/null while Python's ``sys.stderr`` (errors, the timing line) keeps
    the real stderr: ExecuTorch's runner logs ~20 Info lines from C++ per run (cpuinfo, load, warm-up) into the
    middle of the answer, and its Python API has no switch for them.  A crash is still reported by the parent."""
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    sys.stderr = _DropNativeLogLines(open(saved, "w", buffering=1, closefd=False, encoding="utf-8",
                                          errors="backslashreplace"))
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        sys.stderr.close()
        os.close(saved)
        sys.stderr = python_stderr


def _handled(call: Callable[[], int], verbose: bool) -> int:
    """Run a command; every error becomes one line on stderr and an exit code (2 refusal, 3 edgekit bug)."""
    try:
        return call()
    except EdgekitError as exc:
        report_error(exc, verbose)
        return 2
    except BrokenPipeError:  # `edgekit formats | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # disk full, permissions: the staging directory has been removed already
        print(f"edgekit: error: {exc.strerror or exc} ({exc.filename or 'output'}); nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekit: interrupted; nothing was left at the output path", file=sys.stderr)
        return 130
    except Exception as exc:  # an edgekit bug or an unforeseen library failure: one line, traceback on request
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0][:300]
        print(
            f"edgekit: internal error: {type(exc).__name__}: {first} — this is an edgekit bug; please report it "
            "(run again with --verbose for the traceback)",
            file=sys.stderr,
        )
        if verbose:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
