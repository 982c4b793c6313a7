"""``edgekit bench``: export one model to every format x quantisation its recipes offer, profile all
bundles in one run, and write the table a user reads to choose (markdown), a plot (PNG) and the raw JSON.

Bundles are kept under ``OUT/bundles`` and reused when their plan and source are unchanged, so a second run
only measures.  An export that fails is a row with its error, not the end of the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .bundle import read_manifest
from .devices import Device
from .errors import BundleError, EdgekitError
from .profiling.values import PP, TG, BundleResult, ProfileReport, ProfileSpec


@dataclass(frozen=True)
class MatrixEntry:
    format: str
    quant: str
    bundle: Path | None
    error: str | None = None


def _split(text: str | None) -> list[str] | None:
    return [t.strip().lower() for t in text.split(",") if t.strip()] if text else None


def _reusable(out: Path, prep) -> bool:
    try:
        m = read_manifest(out)
    except BundleError:
        return False
    same_adapter = (m.get("adapter") or {}).get("sha256") == (prep.adapter.sha256 if prep.adapter else None)
    return m["source"]["sha256"] == prep.checkpoint.sha256 and m["plan"]["quant"]["name"] == prep.plan.quant.name and same_adapter


def export_all(
    source: str, adapter: str | None, out_dir: Path, formats: Sequence[str] | None, quants: Sequence[str] | None,
    verify: bool, progress: Callable[[str], None],
) -> list[MatrixEntry]:
    from .checkpoint import open_checkpoint
    from .export import export, make_plan
    from .recipes import RECIPES

    entries = []
    for recipe in RECIPES.for_family(open_checkpoint(source).family.family):
        fmt = recipe.format.value
        if formats and fmt not in formats:
            continue
        for quant in recipe.quants:
            if quants and quant not in quants:
                continue
            out = out_dir / "bundles" / f"{fmt}-{quant}"
            try:
                prep = make_plan(source, recipe.format, quant, adapter)
                if _reusable(out, prep):
                    progress(f"bench: reusing {out}")
                else:
                    progress(f"bench: exporting {fmt} {quant}")
                    export(prep, out, force=True, verify=verify, progress=lambda _m: None)
                entries.append(MatrixEntry(fmt, quant, out))
            except EdgekitError as exc:
                progress(f"bench: {fmt} {quant} failed: {exc}")
                entries.append(MatrixEntry(fmt, quant, None, str(exc).splitlines()[0]))
    return entries


def summary_markdown(report: ProfileReport, entries: Sequence[MatrixEntry]) -> str:
    tests = [c.name for c in report.spec.cases()]
    header = ["format", "quant", "threads", "size MB", *(f"{t} t/s" for t in tests), "TTFT ms", "load s", "peak RSS MB",
              "decode roofline", "top-1 vs PyTorch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    by_bundle: dict[str, list[BundleResult]] = {}
    for r in report.results:
        by_bundle.setdefault(r.bundle, []).append(r)
    for e in entries:
        if e.bundle is None:
            lines.append(f"| {e.format} | {e.quant} | - | " + " | ".join(["-"] * (len(header) - 4)) + f" | export failed: {e.error} |")
            continue
        verification = (read_manifest(e.bundle).get("verification") or {}).get("metrics", {})
        top1 = f"{verification['top1']:.3f}" if "top1" in verification else "not verified"
        for r in by_bundle.get(str(e.bundle), []):
            cases = {c.case.name: c for c in r.cases}
            cells = [cases[t].tps_text() if t in cases else "-" for t in tests]
            pp = [c for c in r.cases if c.case.kind == PP and c.ttft_s is not None]
            tg = [c for c in r.cases if c.case.kind == TG and c.roofline_fraction is not None]
            row = [
                e.format, e.quant + (" (partial)" if r.partial else ""), str(r.threads or "-"), f"{r.file_size / 1e6:.2f}",
                *cells,
                f"{pp[0].ttft_s * 1e3:.1f}" if pp else "-",
                f"{r.load_s:.3f}" if r.load_s is not None else "-",
                f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-",
                f"{tg[0].roofline_fraction * 100:.0f} %" if tg else "-",
                top1,
            ]
            lines.append("| " + " | ".join(row) + " |")
    inv = report.inventory
    s = report.spec
    lines += [
        "",
        f"_{report.device}: {inv.get('cpu_model')}, {inv.get('cpu_count')} cores, {inv.get('mem_total_mb')} MB, "
        f"{inv.get('os')} ({inv.get('machine')}); engines {inv.get('engines')}_",
        f"_llama-bench method: random tokens, warm-up {'on' if s.warmup else 'off'}, {s.repetitions} repetitions, "
        "mean ± sample stddev; TTFT for the first prefill test; roofline = decode t/s ÷ (read bandwidth ÷ bytes per token)_",
    ]
    if report.partial:
        lines.append("_PARTIAL: the run was interrupted or some tests failed_")
    lines += [f"- `{r.bundle}`: {r.error.splitlines()[0]}" for r in report.results if r.error]
    return "\n".join(lines) + "\n"


def run_matrix(
    source: str,
    adapter: str | None,
    out_dir: Path,
    spec: ProfileSpec,
    device: Device,
    formats: str | None = None,
    quants: str | None = None,
    progress: Callable[[str], None] = print,
    verify: bool = False,
) -> tuple[ProfileReport, Path, Path]:
    from .profiling.plot import write_png
    from .profiling.session import profile

    out_dir = Path(out_dir)
    entries = export_all(source, adapter, out_dir, _split(formats), _split(quants), verify, progress)
    bundles = [e.bundle for e in entries if e.bundle is not None]
    if not bundles:
        raise EdgekitError("bench: no export succeeded; nothing to profile (see the errors above)")
    report = profile(bundles, spec, device, progress=progress)
    table = out_dir / "bench.md"
    table.write_text(summary_markdown(report, entries), encoding="utf-8")
    (out_dir / "bench.json").write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
    png = write_png(report, out_dir / "bench.png", title=f"edgekit bench: {source} on {report.device}")
    return report, table, png
