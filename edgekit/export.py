"""The export job: plan -> merged reference -> the recipe's exporter -> bundle -> verification -> atomic commit."""

from __future__ import annotations

import errno
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import __version__, tokenizer_check
from .bundle import check_files, read_manifest, staging, write_manifest
from .checkpoint import Checkpoint, open_checkpoint
from .errors import BundleError, CheckpointError, ParityError, UnsupportedError, WriteError
from .lora import Adapter, open_adapter
from .plan import ExportPlan, Format

LIBRARIES = ("torch", "transformers", "peft", "gguf", "llama-cpp-python", "tokenizers")


@dataclass(frozen=True)
class PreparedExport:
    """A validated plan with its recipe and the opened checkpoint and adapter (nothing heavy loaded yet)."""

    plan: ExportPlan
    recipe: Any  # edgekit.recipes.Recipe
    checkpoint: Checkpoint
    adapter: Adapter | None
    adapters: tuple[Any, ...] = ()  # edgekit.adapters.NamedAdapter, kept separate (--lora-mode separate)

    @property
    def thresholds(self) -> Any:
        return self.recipe.thresholds_for(self.plan.quant.name, self.plan.options)


def make_plan(
    source: str | Path,
    format: Format | str,
    quant: str | None = None,
    adapter: str | Path | Sequence[str | Path] | None = None,
    options: Mapping[str, Any] | None = None,
    allow_extra_tensors: bool = False,
) -> PreparedExport:
    """Validate everything cheap first: format, checkpoint files, the recipe row, quant, options, adapter shapes.
    ``adapter``: one adapter directory to merge, or (with the ``lora_mode="separate"`` option) one or more
    ``NAME=PATH`` / ``PATH`` adapters to keep separate (``edgekit.adapters``).

    Raises ``UnsupportedError`` (format/quant/option), ``CheckpointError``, ``AdapterError``, each one line."""
    from .adapters import plan_adapters
    from .recipes import RECIPES

    fmt = Format.parse(format)
    ckpt = open_checkpoint(source, allow_extra_tensors=allow_extra_tensors)
    recipe = RECIPES.get(ckpt.family.family, fmt)
    tokenizer_check.check_checkpoint(ckpt, fmt.value)  # malformed tokenizer files; features the engine lacks
    spec = recipe.quant(quant)
    opts = recipe.options.parse(options or {}, spec)
    recipe.check_plan(ckpt.model_config, spec, opts)  # shapes the engine's kernels cannot run, by their limit
    specs = [] if adapter is None else [adapter] if isinstance(adapter, (str, Path)) else list(adapter)
    lora, named = plan_adapters(specs, ckpt, ckpt.family.family.value, fmt.value, spec.name, opts)
    plan = ExportPlan(
        source=ckpt.path, family=ckpt.family.family, format=fmt, quant=spec, options=opts,
        adapter=lora.path if lora else None, adapters=tuple((n.name, n.adapter.path) for n in named),
        allow_extra_tensors=allow_extra_tensors,
    )
    return PreparedExport(plan=plan, recipe=recipe, checkpoint=ckpt, adapter=lora, adapters=named)


def library_versions() -> dict[str, str]:
    from .versions import versions

    return versions(*LIBRARIES)


def manifest_for(prep: PreparedExport, artifact: dict[str, Any], export_s: float) -> dict[str, Any]:
    from . import kinds
    from .runtimes.engines import ENGINE_OF

    kind = kinds.behaviour(prep.checkpoint.family.kind)
    return {
        "edgekit_version": __version__,
        "family": prep.plan.family.value,
        "kind": prep.checkpoint.family.kind.value,
        "format": prep.plan.format.value,
        "engine": ENGINE_OF[prep.plan.format].value,
        "plan": prep.plan.to_dict(),
        # absolute: verify finds them from any directory
        "source": {"path": str(Path(prep.checkpoint.path).resolve()), "sha256": prep.checkpoint.sha256},
        "adapter": (
            {"path": str(Path(prep.adapter.path).resolve()), "sha256": prep.adapter.sha256, **prep.adapter.summary()}
            if prep.adapter
            else None
        ),
        "libraries": library_versions(),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "model": kind.metadata(prep.checkpoint, artifact),
        "io": kind.io(prep.checkpoint),
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
    max_kl: float | None = None,
) -> Path:
    """Run the export; returns the bundle path.  Raises ParityError (leaving nothing at ``out``) on a failed check.
    ``max_kl``: an optional hard budget on the quantisation cost (mean KL vs the float model, nats/token)."""
    out = Path(out)
    try:
        _export_into(prep, out, force, verify, progress, max_kl)
    except OSError as exc:  # the staging directory is gone by now
        raise WriteError(f"writing {out} failed: {exc.strerror or exc}; {_write_advice(out, exc)} — nothing was left "
                         "behind") from exc
    progress(f"bundle written to {out}")
    return out


def _write_advice(out: Path, exc: OSError) -> str:
    """What to do about a failed write: check the path when the path is the problem, else free space (a short
    write carries no errno)."""
    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS):
        free = shutil.disk_usage(out.parent).free / 1e6 if out.parent.exists() else 0.0
        return f"{free:.0f} MB free there: free space or choose another output path"
    return "check that its directory exists and is writable, or choose another output path"


def with_budget(thresholds: Any, max_kl: float | None) -> Any:
    """``thresholds`` with the user's ``--max-kl`` budget on the quantisation cost (language models only)."""
    if max_kl is None:
        return thresholds
    if not hasattr(thresholds, "max_cost_kl"):
        raise UnsupportedError("--max-kl applies to language models (a KL budget per token); solvers have none")
    from dataclasses import replace

    return replace(thresholds, max_cost_kl=float(max_kl))


def _export_into(
    prep: PreparedExport, out: Path, force: bool, verify: bool, progress: Callable[[str], None],
    max_kl: float | None = None,
) -> None:
    from . import reference
    from .exporters import ExportJob

    thresholds = with_budget(prep.thresholds, max_kl)
    t0 = time.perf_counter()
    keep = (prep.checkpoint.path,) + ((prep.adapter.path,) if prep.adapter else ())
    keep += tuple(n.adapter.path for n in prep.adapters)
    with staging(out, force=force, keep=keep) as tmp:
        progress(f"loading {prep.checkpoint.path}" + (f" + adapter {prep.adapter.path}" if prep.adapter else ""))
        if prep.checkpoint.family.kind.value == "language" and not prep.checkpoint.chat_template:
            progress(f"note: {prep.checkpoint.path} has no chat template (chat_template.jinja, or chat_template in "
                     "tokenizer_config.json): chat and serve will prompt with a plain User:/Assistant: transcript")
        model = reference.load_reference(prep.checkpoint, prep.adapter, prep.plan.options)
        job = ExportJob(
            plan=prep.plan, checkpoint=prep.checkpoint, reference=model, weights=reference.state_dict(model),
            progress=progress,
        )
        try:
            artifact = prep.recipe.exporter().export(job, tmp)
        except KeyError as exc:  # a weight the pair's graph reads is not in the checkpoint
            raise CheckpointError(
                f"{prep.checkpoint.path}: no tensor {exc.args[0]!r}, which the {prep.plan.family.value} "
                f"{prep.plan.format.value} graph needs; the checkpoint is incomplete or of another architecture"
            ) from None
        for f in prep.checkpoint.bundle_files:
            shutil.copy2(f, tmp / f.name)
        manifest = manifest_for(prep, artifact, time.perf_counter() - t0)
        if getattr(model, "edgekit_merge_report", None) is not None:
            manifest["adapter"]["merge"] = model.edgekit_merge_report
        if prep.adapters:  # --lora-mode separate: the base is exported unmerged, each adapter to its own file
            from . import adapters

            written = adapters.writer(prep.plan.family.value, prep.plan.format.value, prep.plan.quant.name).write(
                job, prep.adapters, tmp, manifest["artifact"]
            )
            adapters.attach(manifest, written, prep.adapters)
            _write_manifest(prep, tmp, manifest)
            if verify:
                base, reports = adapters.verify_separate(
                    tmp, model, prep.checkpoint, prep.plan.options, thresholds, progress=progress
                )
                progress(adapters.tables(base, reports))
                if adapters.failures(base, reports):
                    raise ParityError(
                        f"{prep.plan.format.value} {prep.plan.quant.name} failed verification: "
                        f"{'; '.join(adapters.failures(base, reports))} (use --no-verify to keep the file anyway)"
                    )
            return
        _write_manifest(prep, tmp, manifest)
        if verify:
            report = verify_bundle_with(tmp, model, thresholds, progress)
            progress(report.table())
            if not report.passed:
                raise ParityError(
                    f"{prep.plan.format.value} {prep.plan.quant.name} failed verification: "
                    f"{'; '.join(report.failures)} (use --no-verify to keep the file anyway)"
                )


def _write_manifest(prep: PreparedExport, root: Path, manifest: Mapping[str, Any]) -> None:
    """Write the manifest, then run the exporter's ``record_build(root)`` where it has one (ExecuTorch: caches
    the program's fingerprint for the structure check, ``exporters/executorch/structure.py``)."""
    write_manifest(root, manifest)
    record = getattr(prep.recipe.exporter(), "record_build", None)
    if record is not None:
        record(root)


def verify_bundle_with(root: Path, model: Any, thresholds: Any, progress: Callable[[str], None] = print) -> Any:
    """Verify the bundle at ``root`` against an already loaded reference with its kind's check; record the report."""
    from . import kinds, runtimes

    manifest = read_manifest(root)
    from .runtimes.probe import run_probe

    run_probe(root, manifest)  # an engine that aborts the process (SIGABRT) becomes a BundleError here
    session = runtimes.load(root)
    try:
        report = kinds.behaviour(manifest["kind"]).verify(session, model, root, thresholds, progress=progress)
    finally:
        session.close()
    manifest["verification"] = report.to_dict()
    # write_manifest records the files' digests afresh: refuse rather than bless a file that changed meanwhile
    check_files(root, manifest, hashes=True)
    write_manifest(root, manifest)
    return report


def recorded_reference(
    manifest: Mapping[str, Any],
    progress: Callable[[str], None],
    source: str | Path | None = None,
    adapter: str | Path | None = None,
    what: str = "verification",
) -> Any:
    """The merged reference of a bundle, rebuilt from the checkpoint (and adapter) its manifest records, or from
    ``source``/``adapter``; refuses a recorded file that changed since the export."""
    from . import reference

    src = source or manifest["source"]["path"]
    try:
        ckpt = open_checkpoint(src, allow_extra_tensors=bool(manifest["plan"].get("allow_extra_tensors", False)))
    except CheckpointError as exc:
        if source is not None:
            raise
        raise CheckpointError(f"{exc} — the checkpoint the bundle records; pass --source DIR where it is now") from None
    if ckpt.family.family.value != manifest["family"]:
        raise CheckpointError(f"{src} is a {ckpt.family.family.value} checkpoint; the bundle is {manifest['family']}")
    if source is None and ckpt.sha256 != manifest["source"]["sha256"]:
        raise CheckpointError(
            f"{src}: the checkpoint changed since the export, so {what} would not match; pass --source with the original"
        )
    lora = None
    recorded = manifest.get("adapter")
    if adapter is not None or recorded:
        lora = open_adapter(adapter or recorded["path"], ckpt)
        if adapter is None and lora.sha256 != recorded["sha256"]:
            raise BundleError(f"{lora.path}: the adapter changed since the export; pass --adapter with the original")
    progress(f"loading reference {ckpt.path}" + (f" + adapter {lora.path}" if lora else ""))
    return reference.load_reference(ckpt, lora, recorded_options(manifest, ckpt))


def recorded_options(manifest: Mapping[str, Any], ckpt: Checkpoint) -> Any:
    """The typed options a bundle was exported with (they may change the reference, e.g. BitNet's activations)."""
    from .recipes import RECIPES

    recipe = RECIPES.get(ckpt.family.family, Format.parse(manifest["format"]))
    return recipe.options.from_dict(manifest["plan"].get("options") or {})


def verify_bundle(
    root: str | Path,
    source: str | Path | None = None,
    adapter: str | Path | None = None,
    progress: Callable[[str], None] = print,
    max_kl: float | None = None,
) -> Any:
    """``edgekit verify``: rebuild the reference from the recorded source (and adapter) and check the bundle
    against the thresholds of its recipe (tensor check, fidelity; the cost within ``max_kl`` where given)."""
    from .recipes import RECIPES

    root = Path(root)
    manifest = read_manifest(root)
    check_files(root, manifest, hashes=True)  # a file modified in place keeps its size; only its digest tells
    thresholds = with_budget(RECIPES.bundle_thresholds(manifest), max_kl)
    model = recorded_reference(manifest, progress, source, adapter)
    if manifest.get("adapters"):  # separate adapters: the base, then each adapter switched in on one session
        from . import adapters

        ckpt = open_checkpoint(source or manifest["source"]["path"])
        base, reports = adapters.verify_separate(
            root, model, ckpt, recorded_options(manifest, ckpt), thresholds, progress=progress
        )
        return adapters.Combined(base, reports)
    return verify_bundle_with(root, model, thresholds, progress)
