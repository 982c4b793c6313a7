"""edgekit's ONNX export against onnxruntime-genai's model builder, on the same weights, in one run.

For each model (the built-in LFM2 and/or a random-weight full-size LFM2-350M) and quant (fp32, int4) this builds
the model both ways (``python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p Q -e cpu`` with its
defaults, and ``edgekit.export``), then measures prefill (pp512) and decode (tg128) tokens/s the llama-bench way:
random prompt tokens, one warm-up, a fresh state per repetition, mean ± sample stddev of per-repetition rates.
Both files run through edgekit's OnnxSession; with ``--genai`` both also run through onnxruntime-genai.

    .venv/bin/python bench/onnx_vs_builder.py --model builtin --quant fp32 int4 -r 5
    .venv/bin/python bench/onnx_vs_builder.py --model 350m --quant fp32 int4 -r 3 --genai --write

``--write`` replaces the "## ONNX" section of bench/RESULTS.md with the table (CPU model and git commit included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from onnx_common import open_builder  # noqa: E402
from common import cpu_name, git_commit, random_350m  # noqa: E402  (bench/ is on sys.path)

WORK = Path(os.environ.get("EDGEKIT_BENCH_DIR", "/tmp/edgekit-bench-onnx"))


@dataclass(frozen=True)
class Row:
    model: str
    quant: str
    variant: str  # "builder" / "edgekit"
    runner: str  # "edgekit wrapper" / "onnxruntime-genai"
    pp: list[float]
    tg: list[float]
    load_s: float
    size_mb: float

    @staticmethod
    def stat(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def checkpoint(name: str) -> Path:
    """An HF directory for the builder and for edgekit (tokenizer.json included: both read it)."""
    from edgekit.builtin import ROOT

    if name == "builtin":
        return ROOT / "lfm2-tiny"
    return random_350m(WORK) if name == "350m" else Path(name)


def build_builder(src: Path, quant: str, out: Path) -> Path:
    if not (out / "model.onnx").exists():
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out), "-p", quant,
               "-e", "cpu", "-c", str(WORK / "hf-cache")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def build_edgekit(src: Path, quant: str, out: Path) -> Path:
    from edgekit.export import export, make_plan

    if not (out / "edgekit.json").exists():
        # parity is tested in tests/test_onnx_parity.py; here only speed matters
        export(make_plan(src, "onnx", quant), out, force=True, verify=False, progress=lambda _m: None)
    return out


def dir_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.glob("model.onnx*")) / 1e6


def one_rep(session: Any, state: Any, rng: np.random.Generator, vocab: int, pp: int, tg: int) -> tuple[float, float]:
    """One pp and one tg measurement (tokens/s), each from a fresh state."""
    prompt = rng.integers(0, vocab, pp).tolist()
    state.reset()
    t = time.perf_counter()
    session.forward(prompt, state)
    t_pp = time.perf_counter() - t
    state.reset()  # llama-bench's tg starts from an empty context
    token = int(rng.integers(0, vocab))
    t = time.perf_counter()
    for _ in range(tg):
        token = int(session.forward([token], state)[-1].argmax())
    return pp / t_pp, tg / (time.perf_counter() - t)


def measure_wrappers(sessions: dict[str, Any], vocab: int, pp: int, tg: int, reps: int) -> dict[str, tuple[list[float], list[float]]]:
    """Repetitions interleaved across the files (alternating order), so that load from other processes on a
    shared machine falls on both sides alike; the same random tokens go to every file."""
    states = {k: s.new_state() for k, s in sessions.items()}
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in sessions}
    order = list(sessions)
    for rep in range(reps + 1):  # the first repetition is the warm-up
        for k in order if rep % 2 else order[::-1]:
            r_pp, r_tg = one_rep(sessions[k], states[k], np.random.default_rng(rep), vocab, pp, tg)
            if rep:
                out[k][0].append(r_pp)
                out[k][1].append(r_tg)
    return out


def open_genai(model_dir: Path, threads: int) -> tuple[Any, float]:
    import onnxruntime_genai as og

    path = model_dir / "genai_config.json"
    original = path.read_bytes()
    cfg = json.loads(original)
    # onnxruntime-genai takes its thread count from the config's session options; the file is restored once the
    # model is open, so the bundle still matches its manifest
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    path.write_text(json.dumps(cfg, indent=4))
    try:
        t = time.perf_counter()
        model = og.Model(og.Config(str(model_dir)))
        return model, time.perf_counter() - t
    finally:
        path.write_bytes(original)


def one_rep_genai(model: Any, rng: np.random.Generator, vocab: int, pp: int, tg: int) -> tuple[float, float]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=pp + 1, do_sample=False)
    gen = og.Generator(model, params)
    t = time.perf_counter()
    gen.append_tokens(rng.integers(0, vocab, pp).astype(np.int32))
    t_pp = time.perf_counter() - t
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=tg + 2, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(rng.integers(0, vocab, 1).astype(np.int32))
    t = time.perf_counter()
    for _ in range(tg):
        gen.generate_next_token()
    return pp / t_pp, tg / (time.perf_counter() - t)


def measure_genai(models: dict[str, Any], vocab: int, pp: int, tg: int, reps: int) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in models}
    order = list(models)
    for rep in range(reps + 1):
        for k in order if rep % 2 else order[::-1]:
            r_pp, r_tg = one_rep_genai(models[k], np.random.default_rng(rep), vocab, pp, tg)
            if rep:
                out[k][0].append(r_pp)
                out[k][1].append(r_tg)
    return out


def run(models: list[str], quants: list[str], reps: int, pp: int, tg: int, threads: int, genai: bool,
        log: Callable[[str], None]) -> list[Row]:
    from edgekit.runtimes.onnxruntime import OnnxSession
    from edgekit.bundle import read_manifest

    rows: list[Row] = []
    for name in models:
        src = checkpoint(name)
        vocab = json.loads((src / "config.json").read_text())["vocab_size"]
        for quant in quants:
            tag = f"{Path(name).name}-{quant}"
            log(f"building {tag} with the builder and with edgekit")
            dirs = {
                "builder": build_builder(src, quant, WORK / f"builder-{tag}"),
                "edgekit": build_edgekit(src, quant, WORK / f"edgekit-{tag}"),
            }
            sessions, loads = {}, {}
            for variant, d in dirs.items():
                t = time.perf_counter()
                if variant == "builder":
                    sessions[variant] = open_builder(d, n_threads=threads, n_ctx=pp + tg + 8)
                else:
                    sessions[variant] = OnnxSession(d, read_manifest(d), n_threads=threads, n_ctx=pp + tg + 8)
                loads[variant] = time.perf_counter() - t
            log("  both files through the edgekit wrapper, repetitions interleaved")
            for variant, (pps, tgs) in measure_wrappers(sessions, vocab, pp, tg, reps).items():
                rows.append(Row(name, quant, variant, "edgekit wrapper", pps, tgs, loads[variant], dir_mb(dirs[variant])))
            for session in sessions.values():
                session.close()
            if genai:
                log("  both files through onnxruntime-genai, repetitions interleaved")
                opened = {variant: open_genai(d, threads) for variant, d in dirs.items()}
                results = measure_genai({k: m for k, (m, _) in opened.items()}, vocab, pp, tg, reps)
                for variant, (pps, tgs) in results.items():
                    rows.append(Row(name, quant, variant, "onnxruntime-genai", pps, tgs, opened[variant][1],
                                    dir_mb(dirs[variant])))
                del opened
    return rows


def table(rows: list[Row], pp: int, tg: int) -> str:
    head = (f"| model | quant | graph | run through | size MB | load s | pp{pp} t/s | tg{tg} t/s | "
            f"pp vs builder | tg vs builder | decode GB/s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    base = {(r.model, r.quant, r.runner): r for r in rows if r.variant == "builder"}
    for r in rows:
        b = base.get((r.model, r.quant, r.runner))
        pp_ratio = statistics.mean(r.pp) / statistics.mean(b.pp) if b else float("nan")
        tg_ratio = statistics.mean(r.tg) / statistics.mean(b.tg) if b else float("nan")
        # every weight is read once per decoded token; the file size bounds the bytes read
        gbs = r.size_mb * statistics.mean(r.tg) / 1e3
        lines.append(
            f"| {Path(r.model).name} | {r.quant} | {r.variant} | {r.runner} | {r.size_mb:.1f} | {r.load_s:.2f} | "
            f"{Row.stat(r.pp)} | {Row.stat(r.tg)} | {pp_ratio:.2f}× | {tg_ratio:.2f}× | {gbs:.1f} |"
        )
    return "\n".join(lines)


SECTION_INTRO = (
    "## ONNX\n\n"
    "edgekit's ONNX export vs onnxruntime-genai's model builder (defaults: all-position logits in prefill), same "
    "weights, measured in one run by `bench/onnx_vs_builder.py` (llama-bench method: random prompt tokens, one "
    "warm-up, fresh state per repetition, mean ± sample stddev). \"run through\" names the engine loop: edgekit's "
    "OnnxSession (IOBinding, in-place state) or onnxruntime-genai. Ratios compare with the builder's file run the "
    "same way. decode GB/s = file size × tg rate (every weight is read once per token).\n"
)


def write_section(key: str, text: str) -> None:
    """Replace (or add) the subsection ``### key`` inside the ``## ONNX`` section of bench/RESULTS.md."""
    path = HERE / "RESULTS.md"
    doc = path.read_text() if path.exists() else "# Benchmark results\n"
    start = doc.find("\n## ONNX")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + SECTION_INTRO
        start = doc.find("\n## ONNX")
    end = doc.find("\n## ", start + 1)
    end = len(doc) if end < 0 else end
    section = doc[start:end]
    sub = f"\n### {key}\n"
    block = f"{sub}\n{text.strip()}\n"
    i = section.find(sub)
    if i < 0:
        section = section.rstrip("\n") + "\n" + block
    else:
        j = section.find("\n### ", i + 1)
        section = section[:i] + block + (section[j:] if j >= 0 else "")
    doc = doc[:start] + section.rstrip("\n") + "\n" + doc[end:]
    path.write_text(doc.rstrip("\n") + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["builtin"], help="builtin, 350m, or an HF directory")
    ap.add_argument("--quant", nargs="+", default=["fp32", "int4"], choices=["fp32", "int4"])
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("-p", "--prompt", type=int, default=512)
    ap.add_argument("-n", "--gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--genai", action="store_true", help="also run both files through onnxruntime-genai")
    ap.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md (## ONNX)")
    ap.add_argument("--notes", default="", help="text appended under the table")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows = run(args.model, args.quant, args.reps, args.prompt, args.gen, args.threads, args.genai, log)
    import onnxruntime
    import onnxruntime_genai

    header = (
        f"CPU: {cpu_name()}, {args.threads} threads; commit {git_commit()}; onnxruntime {onnxruntime.__version__}, "
        f"onnxruntime-genai {onnxruntime_genai.__version__}; {args.reps} repetitions after a warm-up "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})."
    )
    out = f"{header}\n\n{table(rows, args.prompt, args.gen)}\n"
    print(out)
    json_path = WORK / f"results-{'-'.join(Path(m).name for m in args.model)}.json"
    json_path.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    if args.write:
        labels = {"builtin": "built-in lfm2-tiny (trained)", "350m": "LFM2-350M architecture, random weights"}
        key = ", ".join(labels.get(m, Path(m).name) for m in args.model)
        write_section(key, f"{out}\n{args.notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
