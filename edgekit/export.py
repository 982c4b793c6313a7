"""The export job: plan -> merged reference -> exporter -> bundle -> verification -> atomic commit."""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Mapping

from . import __version__
from .bundle import read_manifest, staging, write_manifest
from .checkpoint import Checkpoint, open_checkpoint
from .errors import BundleError, CheckpointError, ParityError, UnsupportedError, WriteError
from .lora import Adapter, open_adapter
from .plan import ExportPlan, Target

LIBRARIES = ("torch", "transformers", "peft", "gguf", "llama_cpp_python", "tokenizers")


@dataclass(frozen=True)
class PreparedExport:
    """A validated plan together with the opened checkpoint and adapter (nothing heavy loaded yet)."""

    plan: ExportPlan
    checkpoint: Checkpoint
    adapter: Adapter | None

    @property
    def exporter(self) -> Any:
        from . import exporters

        return exporters.get(self.plan.target)


def make_plan(
    source: str | Path,
    target: Target | str,
    quant: str | None = None,
    adapter: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> PreparedExport:
    """Validate everything cheap first: format, quant, checkpoint files, adapter shapes, options."""
    from . import exporters

    target = Target.parse(target) if isinstance(target, str) else target
    exporter = exporters.get(target)
    spec = exporter.quant(quant)
    ckpt = open_checkpoint(source)
    family = ckpt.family.family
    if target not in ckpt.family.targets or family not in exporter.families:
        formats = ", ".join(t.value for t in ckpt.family.targets) or "none yet"
        raise UnsupportedError(f"{family.value} cannot be exported to {target.value}; supported formats: {formats}")
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(opts) - set(exporter.options))
    if unknown:
        raise UnsupportedError(f"{target.value} export has no option {unknown}; options: {', '.join(exporter.options) or 'none'}")
    if exporter.check_options is not None:
        exporter.check_options(spec.name, opts)
    lora = open_adapter(adapter, ckpt) if adapter is not None else None
    plan = ExportPlan(
        source=ckpt.path, family=family, target=target, quant=spec, adapter=lora.path if lora else None, options=opts
    )
    return PreparedExport(plan=plan, checkpoint=ckpt, adapter=lora)


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name.replace("_", "-"))
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def model_metadata(ckpt: Checkpoint) -> dict[str, Any]:
    from tokenizers import Tokenizer

    meta = ckpt.metadata()
    tok = Tokenizer.from_file(str(ckpt.path / "tokenizer.json"))
    with_special = tok.encode("a", add_special_tokens=True).ids
    plain = tok.encode("a", add_special_tokens=False).ids
    meta["add_bos"] = meta.get("bos_id") is not None and with_special[: 1] == [meta["bos_id"]] and len(with_special) > len(plain)
    meta["chat_template"] = ckpt.chat_template
    return meta


def manifest_for(prep: PreparedExport, artifact: dict[str, Any], export_s: float) -> dict[str, Any]:
    exporter = prep.exporter
    return {
        "edgekit_version": __version__,
        "family": prep.plan.family.value,
        "kind": prep.checkpoint.family.kind.value,
        "format": prep.plan.target.value,
        "engine": exporter.engine,
        "plan": prep.plan.to_dict(),
        "source": {"path": str(prep.checkpoint.path), "sha256": prep.checkpoint.sha256},
        "adapter": (
            {"path": str(prep.adapter.path), "sha256": prep.adapter.sha256, **prep.adapter.summary()}
            if prep.adapter
            else None
        ),
        "libraries": library_versions(),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "model": model_metadata(prep.checkpoint),
        "io": {"input": "token ids [n]", "output": "logits [n, vocab]", "state": "engine-managed"},
        "artifact": artifact,
        "export_seconds": round(export_s, 2),
        "verification": None,
    }


def export(
    prep: PreparedExport,
    out: str | Path,
    force: bool = False,
    verify: bool = True,
    progress: Callable[[str], None] = print,
) -> Path:
    """Run the export; returns the bundle path.  Raises ParityError (leaving nothing at ``out``) on a failed check."""
    out = Path(out)
    try:
        _export_into(prep, out, force, verify, progress)
    except OSError as exc:  # the staging directory is gone by now
        free = shutil.disk_usage(out.parent).free / 1e6 if out.parent.exists() else 0.0
        raise WriteError(
            f"writing {out} failed: {exc.strerror or exc} ({free:.0f} MB free there); "
            "free space or choose another output path — nothing was left behind"
        ) from exc
    progress(f"bundle written to {out}")
    return out


def _export_into(
    prep: PreparedExport, out: Path, force: bool, verify: bool, progress: Callable[[str], None]
) -> None:
    from . import exporters, reference

    t0 = time.perf_counter()
    with staging(out, force=force) as tmp:
        progress(f"loading {prep.checkpoint.path}" + (f" + adapter {prep.adapter.path}" if prep.adapter else ""))
        model = reference.load_reference(prep.checkpoint, prep.adapter)
        job = exporters.ExportJob(
            plan=prep.plan, checkpoint=prep.checkpoint, weights=reference.state_dict(model), progress=progress
        )
        artifact = prep.exporter.export(job, tmp)
        for f in prep.checkpoint.tokenizer_files:
            shutil.copy2(f, tmp / f.name)
        write_manifest(tmp, manifest_for(prep, artifact, time.perf_counter() - t0))
        if verify:
            report = verify_bundle_with(tmp, model, progress)
            progress(report.table())
            if not report.passed:
                raise ParityError(
                    f"{prep.plan.target.value} {prep.plan.quant.name} failed verification: {'; '.join(report.failures)} "
                    "(use --no-verify to keep the file anyway)"
                )


def verify_bundle_with(root: Path, model: Any, progress: Callable[[str], None] = print) -> Any:
    """Verify the bundle at ``root`` against an already loaded reference and record the report."""
    from . import exporters, runtimes, verify
    from .plan import Target

    manifest = read_manifest(root)
    exporter = exporters.get(Target(manifest["format"]))
    thresholds = exporter.thresholds[manifest["plan"]["quant"]["name"]]
    session = runtimes.load(root)
    try:
        report = verify.run(session, model, root / "tokenizer.json", thresholds, progress=progress)
    finally:
        session.close()
    manifest["verification"] = report.to_dict()
    write_manifest(root, manifest)
    return report


def verify_bundle(
    root: str | Path,
    source: str | Path | None = None,
    adapter: str | Path | None = None,
    progress: Callable[[str], None] = print,
) -> Any:
    """``edgekit verify``: rebuild the reference from the recorded source (and adapter) and check the bundle."""
    from . import reference

    root = Path(root)
    manifest = read_manifest(root)
    src = source or manifest["source"]["path"]
    ckpt = open_checkpoint(src)
    if source is None and ckpt.sha256 != manifest["source"]["sha256"]:
        raise CheckpointError(f"{src}: the checkpoint changed since the export; pass --source with the original")
    lora = None
    recorded = manifest.get("adapter")
    if adapter is not None or recorded:
        lora = open_adapter(adapter or recorded["path"], ckpt)
        if adapter is None and lora.sha256 != recorded["sha256"]:
            raise BundleError(f"{lora.path}: the adapter changed since the export; pass --adapter with the original")
    progress(f"loading reference {ckpt.path}" + (f" + adapter {lora.path}" if lora else ""))
    model = reference.load_reference(ckpt, lora)
    return verify_bundle_with(root, model, progress)
