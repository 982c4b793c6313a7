"""Renderings of a ProfileReport: a terminal table, markdown, CSV, JSON and JSON lines (one row per test)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .values import SOLVE, STEP, CaseResult, ProfileReport, tps_text

FORMATS = ("table", "json", "jsonl", "csv", "md")
COLUMNS = (
    "bundle", "format", "quant", "engine", "threads", "test", "tps_mean", "tps_std", "ttft_ms", "load_s",
    "peak_rss_mb", "size_mb", "roofline", "status",
)


def _rows(report: ProfileReport) -> list[dict[str, Any]]:
    rows = []
    for r in report.results:
        status = "ok" if not r.partial else ("partial" if r.cases else "failed")
        base = {
            "bundle": r.bundle, "format": r.format, "quant": r.quant, "engine": r.engine, "threads": r.threads,
            "load_s": r.load_s, "peak_rss_mb": r.peak_rss_mb, "size_mb": r.file_size / 1e6, "status": status,
        }
        for c in r.cases:
            rows.append({**base, **_case_row(c)})
        if not r.cases:
            rows.append({**base, "test": "-", "error": r.error})
    return rows


def _case_row(c: CaseResult) -> dict[str, Any]:
    return {
        "test": c.case.name + (f" ({c.steps_mean:.1f} steps)" if c.steps_mean is not None else ""),
        "tps_mean": c.tps_mean,
        "tps_std": c.tps_std,
        "ttft_ms": c.ttft_s * 1e3 if c.ttft_s is not None else None,
        "roofline": c.roofline_fraction,
        "repetitions": len(c.samples),
        "wall_tps_mean": c.wall_tps_mean,
        "bandwidth_gbs": c.bandwidth_gbs,
        "bytes_per_token": c.bytes_per_token,
    }


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "roofline":
        return f"{value * 100:.0f} %"
    if key in ("tps_mean", "tps_std"):
        return f"{value:.2f}"
    if key in ("ttft_ms", "peak_rss_mb", "size_mb"):
        return f"{value:.1f}"
    if key == "load_s":
        return f"{value:.3f}"
    return str(value)


def _display(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    header = ["bundle", "format", "quant", "threads", "test", "t/s", "ttft ms", "load s", "peak RSS MB", "size MB", "roofline"]
    body = []
    for row in _rows(report):
        tps = "-" if row.get("tps_mean") is None else tps_text(row["tps_mean"], row["tps_std"], row["repetitions"], 2)
        bundle = row["bundle"].rstrip("/").split("/")[-1]
        test = row["test"] + ("" if row["status"] == "ok" else f" ({row['status']})")
        body.append([
            bundle, row["format"], row["quant"], _cell("threads", row["threads"]), test, tps,
            _cell("ttft_ms", row.get("ttft_ms")), _cell("load_s", row["load_s"]), _cell("peak_rss_mb", row["peak_rss_mb"]),
            _cell("size_mb", row["size_mb"]), _cell("roofline", row.get("roofline")),
        ])
    return header, body


def _caption(report: ProfileReport) -> str:
    inv = report.inventory
    s = report.spec
    parts = [
        f"device {report.device}: {inv.get('cpu_model', '?')}, {inv.get('cpu_count', '?')} cores, "
        f"{inv.get('mem_total_mb', '?')} MB, {inv.get('os', '?')} ({inv.get('machine', '?')})",
        f"{s.repetitions} repetitions{' after a warm-up' if s.warmup else ''}; t/s = "
        + ("mean ± sample stddev" if s.repetitions > 1 else "the one repetition's (no spread)"),
    ]
    if any(c.case.kind in (STEP, SOLVE) for r in report.results for c in r.cases):
        parts.append("solver tests: stepN = one supervision step of N puzzles (t/s = puzzle-steps/s); solveN = N "
                     "puzzles solved with early halting (t/s = puzzles/s; steps until all halted)")
    if report.partial:
        parts.append("PARTIAL RESULTS: " + ("the run was interrupted" if report.interrupted else "some tests did not finish"))
    return "\n".join(parts)


def _errors(report: ProfileReport) -> list[str]:
    return [f"{r.bundle}: {r.error}" for r in report.results if r.error]


def table(report: ProfileReport) -> str:
    header, body = _display(report)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    numeric = {3, 5, 6, 7, 8, 9, 10}
    fmt = lambda row: "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    lines = [_caption(report), fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in body]
    lines += [f"error: {e}" for e in _errors(report)]
    return "\n".join(lines)


def markdown(report: ProfileReport) -> str:
    header, body = _display(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 5 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    notes = [f"_{line}_" for line in _caption(report).splitlines()]
    notes += [f"- error: `{e.splitlines()[0]}`" for e in _errors(report)]
    return "\n".join(lines + [""] + notes)


def csv_text(report: ProfileReport) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*COLUMNS, "repetitions", "wall_tps_mean", "bandwidth_gbs", "bytes_per_token", "error"],
                       extrasaction="ignore")
    w.writeheader()
    for row in _rows(report):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def jsonl(report: ProfileReport) -> str:
    """One line per test (as llama-bench's -o jsonl), each carrying the device and partial flag."""
    head = {"device": report.device, "partial": report.partial}
    return "".join(json.dumps({**head, **row}) + "\n" for row in _rows(report))


def render(report: ProfileReport, fmt: str) -> str:
    if fmt == "table":
        return table(report)
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    if fmt == "jsonl":
        return jsonl(report)
    if fmt == "csv":
        return csv_text(report)
    if fmt == "md":
        return markdown(report)
    raise ValueError(f"unknown output format {fmt!r}; known: {', '.join(FORMATS)}")

