"""edgekit's ExecuTorch export vs ExecuTorch's own export_llm (and GGUF Q4_0 from the same run), 8da4w.

For each model (the built-in trained LFM2, and/or a random-weight full-size LFM2-350M) this exports
  * edgekit ``--format executorch --quant 8da4w`` (group 32, affine scales, context 2048) in three variants
    (``VARIANTS``): the default (int8 LM head whose table the embedding shares, in model.ptd), ``--head-bits 4``
    (export_llm's int4 head; fp32 gather table of its own), and ``--head-bits 4 --embedding-quant 4``,
  * export_llm with its LFM2 XNNPACK recipe (``lfm2_xnnpack_q8da4w.yaml``: extended ops, custom SDPA + KV cache,
    qmode 8da4w; group 32, HQQ on as by default; same context and params.json),
  * edgekit ``--format gguf --quant q4_0``,
each in a child process (export seconds and peak RSS of that process), then measures pp512 / tg128 with
llama-bench's method (warm-up, ``-r`` repetitions, mean ± sample stddev): the .pte files with ExecuTorch's own
C++ ``TextLLMRunner`` (the "bare runner", timed by a per-token callback exactly as the wrapper is), edgekit's default .pte also through ``edgekit.load`` — greedy from a
text prompt (its TextLLMRunner path; ``generate`` and ``stream``) and from token ids (its Method API loop), for
the decode ratios all loaded in one process with a bare runner and alternated one generation each per round
(``--ratio-rounds``) — and the GGUF through ``edgekit.load`` (llama.cpp).  ``--quality`` adds the
HQQ-vs-affine check on the built-in model (verified exports, top-1 / KL against PyTorch).

    .venv/bin/python bench/executorch_bench.py --model builtin 350m -r 3 --write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from common import cpu_name, git_commit, random_350m  # noqa: E402  (bench/ is on sys.path)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = Path(os.environ.get("EDGEKIT_BENCH_DIR", "/tmp/edgekit-bench-executorch"))
CONTEXT = 2048
GROUP = 32


# -- children: one export per process so that peak RSS is that export's ---------------------------------------
def child_edgekit(src: str, out: str, fmt: str, quant: str, options: str) -> None:
    from edgekit.export import export, make_plan

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    export(make_plan(src, fmt, quant, None, json.loads(options)), out, verify=False, progress=lambda _m: None)
    _report(time.perf_counter() - t)


def child_export_llm(src: str, out: str, hqq: str) -> None:
    """ExecuTorch's own LLM export of the same checkpoint (their LFM2 weight conversion, our params.json)."""
    import torch
    from executorch.examples.models.lfm2.convert_weights import lfm_2_to_meta
    from executorch.examples.models.llama.export_llama_lib import export_llama
    from executorch.extension.llm.export.config.llm_config import LlmConfig, ModelType
    from safetensors.torch import load_file

    from edgekit.exporters.executorch.lfm2 import params_json
    from edgekit.families.lfm2 import Lfm2Config

    t = time.perf_counter()
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cfg = json.loads((Path(src) / "config.json").read_text())
    (out_dir / "params.json").write_text(json.dumps(params_json(Lfm2Config.from_hf(cfg))))
    # Llama2Model treats a checkpoint whose *path* contains "8da4w" or "int8" as pre-quantised: keep it elsewhere
    ckpt = WORK / "meta-checkpoints" / f"{Path(src).name}.pth"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(lfm_2_to_meta(load_file(str(Path(src) / "model.safetensors"))), ckpt)
    meta = Lfm2Config.from_hf(cfg)
    c = LlmConfig()
    c.base.model_class = ModelType.lfm2_350m
    c.base.checkpoint = str(ckpt)
    c.base.params = str(out_dir / "params.json")
    c.base.metadata = json.dumps({"get_bos_id": meta.bos_token_id, "get_eos_ids": list(meta.eos_token_ids)})
    c.model.use_kv_cache = True
    c.model.use_sdpa_with_kv_cache = True
    c.model.enable_dynamic_shape = True
    c.export.max_seq_length = CONTEXT
    c.export.max_context_length = CONTEXT
    c.export.output_dir = str(out_dir)
    c.export.output_name = "model.pte"
    c.quantization.qmode = "8da4w"
    c.quantization.group_size = GROUP
    c.quantization.use_hqq = hqq == "hqq"
    c.backend.xnnpack.enabled = True
    c.backend.xnnpack.extended_ops = True
    cwd = os.getcwd()
    os.chdir(out_dir)  # export_llm may write next to the working directory
    try:
        export_llama(c)
    finally:
        os.chdir(cwd)
    ckpt.unlink()
    ptes = sorted(out_dir.rglob("*.pte"))
    if ptes and ptes[0] != out_dir / "model.pte":
        ptes[0].rename(out_dir / "model.pte")
    shutil.copy(Path(src) / "tokenizer.json", out_dir / "tokenizer.json")
    _report(time.perf_counter() - t)


def _report(seconds: float) -> None:
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print("BENCH_RESULT " + json.dumps({"seconds": round(seconds, 1), "peak_rss_gb": round(rss_gb, 2)}), flush=True)


def run_child(*args: str) -> dict[str, Any]:
    """Run one export in a child process; an export already made by an earlier run is reused (its record kept
    next to it), so an interrupted benchmark resumes instead of paying every export again."""
    record = Path(args[2]) / "bench-export.json"
    if record.is_file():
        return json.loads(record.read_text())
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line.split(" ", 1)[1])
            record.write_text(json.dumps(result))
            return result
    raise RuntimeError(f"child {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# -- checkpoints --------------------------------------------------------------------------------------------
def checkpoint(name: str) -> Path:
    from edgekit.builtin import ROOT

    return ROOT / "lfm2-tiny" if name == "builtin" else random_350m(WORK)


# -- speed --------------------------------------------------------------------------------------------------
def stat(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def prompt_text(tokenizer_json: Path, n: int) -> tuple[str, list[int]]:
    """A text of about ``n`` tokens (held-out Python source), and its ids."""
    from tokenizers import Tokenizer

    from edgekit.kinds.language.parity import heldout_text

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = tok.encode(heldout_text(), add_special_tokens=False).ids[:n]
    text = tok.decode(ids)
    return text, tok.encode(text, add_special_tokens=False).ids


class BareRunner:
    """ExecuTorch's C++ TextLLMRunner, timed the way edgekit's wrapper times it (a perf_counter stamp per token
    in the token callback: prefill = call -> first token, decode = first -> last token), and quiet like the
    wrapper (``warming=True``: no piece printed to stdout), so the two differ only in edgekit's own work."""

    def __init__(self, pte: Path, tokenizer: Path, data: Path | None, tg: int) -> None:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama::custom_sdpa for the runner)
        import executorch.kernels.quantized  # noqa: F401
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

        import tempfile

        from edgekit.runtimes.executorch_runner import _raw_tokenizer

        # the tokenizer without its decoder, as edgekit's wrapper hands it to the runner: every piece is a byte-level
        # token string, never a partial UTF-8 character (which the runner's Python callback cannot take: a random
        # model generates those)
        raw, _ids = _raw_tokenizer(tokenizer)
        self._dir = tempfile.TemporaryDirectory(prefix="edgekit-bench-runner-")
        path = Path(self._dir.name) / "tokenizer.json"
        path.write_text(json.dumps(raw), encoding="utf-8")
        if tokenizer.with_name("tokenizer_config.json").is_file():
            shutil.copy(tokenizer.with_name("tokenizer_config.json"), path.with_name("tokenizer_config.json"))
        self.runner = TextLLMRunner(str(pte), str(path), str(data) if data else None)
        self.config = GenerationConfig(max_new_tokens=tg, temperature=0.0, echo=False, warming=True)

    def run(self, text: str) -> tuple[float, float]:
        """(prefill t/s, decode t/s) of one greedy generation."""
        stamps: list[float] = []
        stats: list[Any] = []
        self.runner.reset()
        start = time.perf_counter()
        self.runner.generate(text, self.config, lambda _s: stamps.append(time.perf_counter()), stats.append)
        return stats[-1].num_prompt_tokens / (stamps[0] - start), (len(stamps) - 1) / (stamps[-1] - stamps[0])


def bare_runner(pte: Path, tokenizer: Path, data: Path | None, text: str, tg: int, reps: int) -> tuple[list, list]:
    runner = BareRunner(pte, tokenizer, data, tg)
    runner.run(text)  # warm-up
    pp, dec = zip(*(runner.run(text) for _ in range(reps)))
    return list(pp), list(dec)


def wrapper_run(session: Any, prompt: str | list[int], tg: int, stream: bool = False) -> tuple[float, float]:
    """(prefill t/s, decode t/s) of one greedy ``generate`` (or ``stream``, consumed as it comes) through
    edgekit.load: the generation's own engine timing.  A text prompt stops at EOS as the bare runner does
    (ExecuTorch: the TextLLMRunner path); a token-id prompt runs ``tg`` tokens regardless (the Method API loop)."""
    from edgekit.runtimes import SamplingParams, StreamResult

    params = SamplingParams(max_tokens=tg, stop_at_eos=isinstance(prompt, str))
    session.reset()
    if stream:
        result = StreamResult()
        for _piece in session.stream(prompt, params, result):
            pass
        timing = result.timing
    else:
        timing = session.generate(prompt, params).timing
    return timing.prefill_tps, timing.decode_tps


def wrapper(bundle: Path, prompt: str | list[int], tg: int, reps: int) -> tuple[list, list]:
    from edgekit import load

    s = load(bundle)
    try:
        wrapper_run(s, prompt, tg)  # warm-up
        pp, dec = zip(*(wrapper_run(s, prompt, tg) for _ in range(reps)))
    finally:
        s.close()
    return list(pp), list(dec)


class BareMethodLoop:
    """ExecuTorch's own Python Method API (``executorch.runtime``), no edgekit: prefill the ids in one call, then
    ``tg`` greedy steps, each timed around ``Method.execute`` alone — what any Python loop over the binding pays."""

    def __init__(self, bundle: Path) -> None:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
        import torch
        from executorch.runtime import Runtime

        data = data_file(bundle)
        program = Runtime.get().load_program(bundle / "model.pte", data_path=data)
        self.method, self.torch = program.load_method("forward"), torch

    def run(self, ids: list[int], tg: int) -> tuple[float, float]:
        torch = self.torch
        start = time.perf_counter()
        row = self.method.execute([torch.tensor([ids]), torch.tensor([0])])[0]
        prefill = time.perf_counter() - start
        tok, pos, spent = torch.zeros((1, 1), dtype=torch.long), torch.zeros((1,), dtype=torch.long), 0.0
        for i in range(tg - 1):
            tok[0, 0], pos[0] = int(row.argmax()), len(ids) + i
            t = time.perf_counter()
            row = self.method.execute([tok, pos])[0]
            spent += time.perf_counter() - t
        return len(ids) / prefill, (tg - 1) / spent


def ratio_rounds(bundle: Path, text: str, ids: list[int], tg: int, rounds: int) -> dict[str, tuple[list, list]]:
    """The bare runner, ExecuTorch's bare Method API loop and every ``WRAPPER_MODES`` way of running the same
    .pte, all loaded in this process and alternated one generation each per round, so that every ratio sees the
    same machine at the same moment."""
    from edgekit import load

    bare = BareRunner(bundle / "model.pte", bundle / "tokenizer.json", data_file(bundle), tg)
    bare_loop = BareMethodLoop(bundle)
    s = load(bundle)
    prompts = {"text": text, "ids": ids}
    runs: dict[str, list[tuple[float, float]]] = {"ratio_runner": [], "ratio_method": []}
    runs |= {m[0]: [] for m in WRAPPER_MODES}
    try:
        for rnd in range(rounds + 1):  # round 0 warms every path up
            speeds = {"ratio_runner": bare.run(text), "ratio_method": bare_loop.run(ids, tg)}
            speeds |= {key: wrapper_run(s, prompts[kind], tg, stream) for key, _l, kind, stream in WRAPPER_MODES}
            for key, speed in speeds.items():
                if rnd:
                    runs[key].append(speed)
    finally:
        s.close()
    return {key: ([r[0] for r in v], [r[1] for r in v]) for key, v in runs.items()}


def delegate_calls(pte: Path) -> int:
    from executorch.exir._serialize._program import deserialize_pte_binary

    p = deserialize_pte_binary(pte.read_bytes())
    p = getattr(p, "program", p)
    plan = next(e for e in p.execution_plan if e.name == "forward")
    return sum(1 for c in plan.chains for i in c.instructions if type(i.instr_args).__name__ == "DelegateCall")


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".pte", ".ptd", ".gguf")]
    return sum(p.stat().st_size for p in files) / 1e6


# -- quality: HQQ vs affine ---------------------------------------------------------------------------------
def quality(reps_dir: Path) -> list[dict[str, Any]]:
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan

    rows = []
    for algo in ("affine", "hqq"):
        out = reps_dir / f"quality-8da4w-{algo}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        prep = make_plan("builtin:lfm2-tiny", "executorch", "8da4w", "builtin:lfm2-tiny-lora", {"weight_algorithm": algo})
        try:
            export(prep, out, progress=lambda _m: None)
        except Exception as exc:  # a failed check still tells us the numbers: they are in the message
            rows.append({"algorithm": algo, "error": str(exc)})
            continue
        m = read_manifest(out)
        v = m["verification"]["metrics"]
        rows.append({
            "algorithm": algo, "top1": v["top1"], "mean_kl": v["mean_kl"], "greedy": v["greedy_prefix"],
            "quantize_s": m["artifact"]["stage_seconds"]["quantize"], "export_s": time.perf_counter() - t,
        })
    return rows


# -- the run ------------------------------------------------------------------------------------------------
# edgekit variants: key, label, export options (on top of context and group size)
VARIANTS = (
    ("edgekit", "edgekit 8da4w default (calibrated mixed precision, int8 head, shared embedding)", {}),
    ("edgekit_h4", "edgekit 8da4w g32, int4 head (export_llm's choice)", {"head_bits": 4}),
    ("edgekit_h4e4", "edgekit 8da4w g32, int4 head + 4-bit embedding", {"head_bits": 4, "embedding_quant": "4"}),
)
# how edgekit.load runs the default .pte, each timed against the bare runner: (key, label, prompt kind, stream)
WRAPPER_MODES = (
    ("edgekit_wrapper", "text prompt, generate (TextLLMRunner inside)", "text", False),
    ("edgekit_wrapper_stream", "text prompt, stream (TextLLMRunner in a thread)", "text", True),
    ("edgekit_wrapper_ids", "token-id prompt (Method API loop)", "ids", False),
)


def data_file(bundle: Path) -> Path | None:
    """The bundle's .ptd (shared embedding table), if it has one."""
    files = json.loads((bundle / "edgekit.json").read_text())["artifact"].get("data_files") or []
    return bundle / files[0] if files else None


def run_model(name: str, reps: int, pp_n: int, tg: int, ratio_rounds_n: int, variants: tuple = VARIANTS,
              gguf: bool = True) -> dict[str, Any]:
    """``variants``: the ``VARIANTS`` rows to export and time; ``gguf``: also the GGUF Q4_0 row; ``ratio_rounds_n``
    0 skips the wrapper ratios."""
    src = checkpoint(name)
    base = WORK / name
    base.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"model": name, "variants": [v[0] for v in variants]}
    for key, label, extra in variants:
        print(f"[{name}] {label}: export", flush=True)
        opts = json.dumps({"max_context": CONTEXT, "group_size": GROUP, **extra})
        res[f"{key}_export"] = run_child("edgekit", str(src), str(base / key), "executorch", "8da4w", opts)
    print(f"[{name}] export_llm 8da4w export", flush=True)
    res["export_llm_export"] = run_child("export_llm", str(src), str(base / "export_llm-8da4w"), "hqq")
    if gguf:
        print(f"[{name}] edgekit gguf q4_0 export", flush=True)
        res["gguf_export"] = run_child("edgekit", str(src), str(base / "gguf-q4_0"), "gguf", "q4_0", "{}")

    el, gg = base / "export_llm-8da4w", base / "gguf-q4_0"
    text, ids = prompt_text(src / "tokenizer.json", pp_n)
    print(f"[{name}] speed ({len(ids)} prompt tokens, {tg} generated, {reps} reps)", flush=True)
    res["export_llm_runner"] = bare_runner(el / "model.pte", el / "tokenizer.json", None, text, tg, reps)
    for key, _label, _extra in variants:
        b = base / key
        res[f"{key}_runner"] = bare_runner(b / "model.pte", b / "tokenizer.json", data_file(b), text, tg, reps)
    if ratio_rounds_n and any(v[0] == "edgekit" for v in variants):
        res |= ratio_rounds(base / "edgekit", text, ids, tg, ratio_rounds_n)
    res["sizes_mb"] = {key: size_mb(base / key) for key, _l, _e in variants}
    res["sizes_mb"]["export_llm"] = size_mb(el / "model.pte")
    if gguf:
        res["gguf_wrapper"] = wrapper(gg, ids, tg, reps)
        res["sizes_mb"]["gguf"] = size_mb(gg)
    res["delegate_calls"] = {key: delegate_calls(base / key / "model.pte") for key, _l, _e in variants}
    res["delegate_calls"]["export_llm"] = delegate_calls(el / "model.pte")
    res["prompt_tokens"] = len(ids)
    return res


def table(r: dict[str, Any], tg: int) -> str:
    def row(label: str, key: str, export_key: str | None, speed: Any) -> tuple:
        ex = r[export_key] if export_key else None
        return (label, r["sizes_mb"][key], ex, r["delegate_calls"].get(key) if export_key else None,
                stat(speed[0]), stat(speed[1]))

    rows = [row("export_llm 8da4w g32 (HQQ, int4 head), bare runner", "export_llm", "export_llm_export",
                r["export_llm_runner"])]
    run = [v for v in VARIANTS if v[0] in r.get("variants", [k for k, _l, _e in VARIANTS])]
    rows += [row(f"{label}, bare runner", key, f"{key}_export", r[f"{key}_runner"]) for key, label, _e in run]
    ratios = [("ratio_method", "ExecuTorch's own Method API loop, no edgekit (token ids)")]
    ratios += [(key, f"edgekit.load, {label}") for key, label, _kind, _stream in WRAPPER_MODES]
    if "ratio_runner" in r:  # the ratio rounds: these rows alternated in one process, one generation each
        rows.append(row(f"edgekit 8da4w default, bare runner alternated with the {len(ratios)} rows below",
                        "edgekit", None, r["ratio_runner"]))
        rows += [row(f"edgekit 8da4w default, {label}", "edgekit", None, r[key]) for key, label in ratios if key in r]
    if "gguf_wrapper" in r:
        rows.append(row("GGUF Q4_0 (edgekit export), edgekit.load", "gguf", "gguf_export", r["gguf_wrapper"]))
    pp = r["prompt_tokens"]
    lines = [
        f"| program | size MB | export s | export peak RSS GB | XNNPACK calls | pp{pp} t/s | tg{tg} t/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, mb, ex, calls, a, b in rows:
        lines.append(
            f"| {label} | {mb:.1f} | {ex['seconds'] if ex else '-'} | {(ex.get('peak_rss_gb') or 'n/r') if ex else '-'} | "
            f"{calls if calls is not None else '-'} | {a} | {b} |"
        )
    ek_tg = r.get("ratio_runner", ([], []))[1]
    lines.append("")
    for key, label in ratios if "ratio_runner" in r else ():
        if key in r:
            ratio = statistics.mean(r[key][1]) / statistics.mean(ek_tg)
            lines.append(f"Decode ratio, {label} / bare runner, same .pte, alternated in one process "
                         f"({len(ek_tg)} rounds): **{ratio:.3f}** (goal for edgekit.load >= 0.97).  ")
    return "\n".join(lines)


def write_section(key: str, text: str) -> None:
    """Replace (or add) ``### key`` inside the ``## ExecuTorch`` section of bench/RESULTS.md."""
    path = HERE / "RESULTS.md"
    doc = path.read_text() if path.exists() else "# Benchmark results\n"
    start = doc.find("\n## ExecuTorch")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n## ExecuTorch\n\nMade by `bench/executorch_bench.py`.\n"
        start = doc.find("\n## ExecuTorch")
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
    path.write_text((doc[:start] + section.rstrip("\n") + "\n" + doc[end:]).rstrip("\n") + "\n")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        {"edgekit": child_edgekit, "export_llm": child_export_llm}[kind](*args)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["builtin"], choices=["builtin", "350m"])
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--ratio-rounds", type=int, default=15, help="rounds for the wrapper / bare runner ratios "
                                                                  "(0: none)")
    ap.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS], default=[v[0] for v in VARIANTS],
                    help="the edgekit .pte variants to export and time (default: all)")
    ap.add_argument("--no-gguf", action="store_true", help="leave out the GGUF Q4_0 row")
    ap.add_argument("-p", "--pp", type=int, default=512)
    ap.add_argument("-n", "--tg", type=int, default=128)
    ap.add_argument("--quality", action="store_true", help="also compare HQQ and affine 8da4w on the built-in model")
    ap.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md")
    ap.add_argument("--render", action="store_true", help="only re-render tables from the last run's JSON")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    header = (
        f"CPU: {cpu_name()} ({os.cpu_count()} threads, shared machine: absolute numbers are noisy, compare "
        f"within a table); commit {git_commit()}; executorch {_version('executorch')}, torch {_version('torch')}, "
        f"llama-cpp-python {_version('llama_cpp_python')}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )
    labels = {"builtin": "built-in lfm2-tiny (trained)", "350m": "LFM2-350M architecture, random weights"}
    for name in a.model:
        if a.render:
            r = json.loads((WORK / f"{name}.json").read_text())
            header = r.get("header", header)
        else:
            r = run_model(name, a.reps, a.pp, a.tg, a.ratio_rounds,
                          tuple(v for v in VARIANTS if v[0] in a.variants), not a.no_gguf)
            r["header"] = header
            (WORK / f"{name}.json").write_text(json.dumps(r, indent=2))
        text = f"{header}\n\n{table(r, a.tg)}"
        print(text, flush=True)
        if a.write:  # a run of some rows only gets a section of its own (the full table stays)
            full = set(a.variants) == {v[0] for v in VARIANTS} and not a.no_gguf
            rows = "" if full else f" ({', '.join(a.variants)}{'' if a.no_gguf else ', gguf'} only)"
            write_section(f"8da4w: edgekit vs export_llm vs GGUF Q4_0 — {labels[name]}{rows}", text)
    if a.quality:
        rows = quality(WORK)
        (WORK / "quality.json").write_text(json.dumps(rows, indent=2))
        lines = ["| 8da4w g32 scales | top-1 | mean KL | greedy prefix | quantise s | export+verify s |",
                 "|---|---:|---:|---:|---:|---:|"]
        for q in rows:
            if "error" in q:
                lines.append(f"| {q['algorithm']} | failed: {q['error'][:200]} | | | | |")
            else:
                lines.append(f"| {q['algorithm']} | {q['top1']:.4f} | {q['mean_kl']:.2e} | {q['greedy']}/32 | "
                             f"{q['quantize_s']:.1f} | {q['export_s']:.0f} |")
        text = f"{header}\n\nBuilt-in lfm2-tiny + LoRA (merged), verified against PyTorch:\n\n" + "\n".join(lines)
        print(text)
        if a.write:
            write_section("8da4w scale choice: HQQ vs affine (quality and cost)", text)
    return 0


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())
