"""The host side of ``edgekit profile``: stage each bundle on the device, run one runner process per bundle
and thread count, and assemble the streamed events into a ``ProfileReport``.

A bundle that fails on the device gets its error (brought back from the device) and ``partial`` in its
result, and the run goes on with the next bundle; a device that lacks the engine stops the run with the
install command; Ctrl-C stops it and returns what finished, marked ``interrupted``.
"""

from __future__ import annotations

import json
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..bundle import read_manifest
from ..devices import Device, EventStream, request, requirements_for, start
from ..errors import RuntimeMissingError
from .values import TG, BundleResult, CaseResult, ProfileReport, ProfileSpec

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


def run_one(
    device: Device,
    bundle: Path,
    remote: str,
    spec: ProfileSpec,
    threads: int | None,
    progress: Progress = _quiet,
    bandwidth: bool = True,
) -> BundleResult:
    manifest = read_manifest(bundle)
    result = BundleResult(
        bundle=str(bundle),
        format=str(manifest.get("format")),
        quant=str(manifest.get("plan", {}).get("quant", {}).get("name", "?")),
        engine=str(manifest.get("engine")),
        threads=threads,
        file_size=sum(int(e["size"]) for e in manifest.get("files", {}).values()),
        partial=True,  # until the device says "done"
    )
    gbs = None
    if bandwidth and any(c.kind == TG for c in spec.cases()):
        gbs = request(device, {"op": "bandwidth", "threads": threads}, timeout=300)["gbs"]
    req = {"op": "profile", "bundle": remote, "label": str(bundle), "spec": spec.to_dict(), "threads": threads,
           "bandwidth_gbs": gbs}
    stream: EventStream = start(device.python_command("edgekit.profiling.runner"), req)
    try:
        for event in stream:
            kind = event.get("event")
            if kind == "start":
                result = BundleResult(
                    bundle=str(bundle),
                    format=event.get("format") or result.format,
                    quant=event.get("quant") or result.quant,
                    engine=event.get("engine") or result.engine,
                    threads=event.get("threads"),
                    file_size=event.get("file_size") or result.file_size,
                    weight_bytes=event.get("weight_bytes"),
                    load_s=event.get("load_s"),
                    peak_rss_mb=event.get("rss_after_load_mb"),
                    partial=True,
                )
                progress(f"{result.label}: loaded in {result.load_s:.2f} s")
            elif kind == "case":
                case = CaseResult.from_dict(event["result"])
                result = result.with_case(case)
                progress(f"{result.label}: {case.case.name} {case.tps_text()} tok/s")
            elif kind == "done":
                result = _replace(result, peak_rss_mb=event.get("peak_rss_mb"), partial=False)
            elif kind == "missing":
                reqs = requirements_for(event.get("extra", ""))
                raise RuntimeMissingError(
                    f"{device.name} lacks the {event.get('engine')} runtime (cannot import "
                    f"{', '.join(event.get('modules', []))}); install it there with: {device.install_hint(reqs)}"
                )
            elif kind == "error":
                message = f"{event.get('kind')}: {event.get('message')}"
                if event.get("traceback"):
                    message += "\n" + str(event["traceback"]).rstrip()
                result = _replace(result, error=message, partial=True)
    except KeyboardInterrupt:
        raise _Interrupted(_replace(result, error="interrupted", partial=True)) from None
    fin = stream.finished
    if result.partial and result.error is None:
        tail = fin.stderr_tail if fin else ""
        result = _replace(
            result, error=f"the device-side run ended (exit {fin.returncode if fin else '?'}) early" + (f": {tail}" if tail else "")
        )
    return result


class _Interrupted(Exception):
    def __init__(self, result: BundleResult) -> None:
        self.result = result


def ensure_runtime(device: Device, engine: str) -> None:
    """Before any work: can the device import what ``engine`` needs?  If not, say what to install there."""
    answer = request(device, {"op": "check", "engine": engine})
    if answer.get("missing"):
        raise RuntimeMissingError(
            f"{device.name} lacks the {engine} runtime (cannot import {', '.join(answer['missing'])}); install it "
            f"there with: {device.install_hint(requirements_for(answer.get('extra', '')))}"
        )


def inventory(device: Device) -> dict[str, Any]:
    return request(device, {"op": "inventory"})["inventory"]


def profile(
    bundles: Sequence[Path],
    spec: ProfileSpec,
    device: Device,
    progress: Progress = _quiet,
    on_result: Callable[[BundleResult], None] | None = None,
    bandwidth: bool = True,
) -> ProfileReport:
    """Profile every bundle at every thread count of ``spec`` on ``device``."""
    bundles = [Path(b) for b in bundles]
    for b in bundles:
        read_manifest(b)  # a typo in a path fails before any device work
    device.check()
    inv = inventory(device)
    progress(f"device {device.name}: {inv.get('cpu_model')} ({inv.get('cpu_count')} cores, {inv.get('machine')}), {inv.get('os')}")
    for engine in sorted({str(read_manifest(b).get("engine")) for b in bundles}):
        ensure_runtime(device, engine)
    results: list[BundleResult] = []
    interrupted = False
    try:
        for b in bundles:
            progress(f"staging {b} on {device.name}")
            remote = device.stage_bundle(b)
            for t in spec.threads:
                r = run_one(device, b, remote, spec, t, progress, bandwidth)
                results.append(r)
                if on_result:
                    on_result(r)
                if r.error:
                    progress(f"{b}: failed on the device: {r.error.splitlines()[0]}")
    except _Interrupted as stop:
        results.append(stop.result)
        interrupted = True
    except KeyboardInterrupt:
        interrupted = True
    return ProfileReport(
        device=device.name, inventory=inv, spec=spec, results=tuple(results), interrupted=interrupted,
        edgekit_version=__version__,
    )


def load_report(path: Path) -> ProfileReport:
    return ProfileReport.from_dict(json.loads(Path(path).read_text()))

