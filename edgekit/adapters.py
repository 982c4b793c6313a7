"""LoRA adapters kept separate from the base model (``--lora-mode separate``): one base artifact, several named
adapter files beside it, switched at run time without reloading the base.

Where each format keeps an adapter (the engine's own mechanism; ``SEPARATE`` says which recipes and quants):

- GGUF: llama.cpp's LoRA adapter file (``general.type = adapter``, ``adapter.type = lora``, tensors
  ``<base tensor>.lora_a`` [r, in] / ``.lora_b`` [out, r] in PEFT's layout, the base's ``general.architecture``),
  loaded with ``llama_adapter_lora_init`` and applied with ``llama_set_adapters_lora(ctx, ..., scale)``; the
  ternary BitNet base stays exact and the adapter runs unmerged (lossless).
- ONNX: the base graph carries a LoRA branch per adapted projection whose A and B are overridable initializers
  (zero by default: the base model), plus a scalar ``lora_scale``; each adapter is an ONNX Runtime adapter file
  (``onnxruntime.AdapterFormat``, ``.onnx_adapter``) holding those tensors.  The session binds the adapter's
  tensors as inputs (``run_with_iobinding`` ignores ``RunOptions.add_active_adapter``); plain ``InferenceSession.run``
  users can pass the file to ``RunOptions.add_active_adapter``.
- ExecuTorch: the program carries a LoRA branch per adapted projection whose factors and scale are inputs of
  ``forward`` (XNNPACK batched matmuls); each adapter is a safetensors file of those inputs, which the session
  holds and passes on every call: switching reloads nothing, at any scale.

Every adapter's PEFT scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA, per-module patterns included) is
folded into its B factor, so each engine applies ``y = W x + scale * B (A x)`` with the run-time ``scale`` (1.0 =
the adapter as trained).  Adapters of different rank or targets share a graph's branches by zero padding (exact).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .checkpoint import Checkpoint
from .errors import AdapterError, BundleError, CheckpointError, UnsupportedError
from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Adapter, open_adapter

ADAPTER_DIR = "adapters"
MODES = ("merged", "separate")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")

# (family, format) -> the quants whose engine applies a separate adapter (None: every quant of the recipe), and
# the module writing that format's adapter files
SEPARATE: Mapping[tuple[str, str], tuple[tuple[str, ...] | None, str]] = {
    ("lfm2", "gguf"): (None, "edgekit.exporters.gguf.adapters"),
    ("bitnet", "gguf"): (None, "edgekit.exporters.gguf.adapters"),
    # float16 graphs would need float16 adapter tensors and state; not offered
    ("lfm2", "onnx"): (("fp32", "int8", "int4"), "edgekit.exporters.onnx.adapters"),
    ("lfm2", "executorch"): (None, "edgekit.exporters.executorch.adapters"),
    ("bitnet", "executorch"): (None, "edgekit.exporters.executorch.adapters"),
    ("bitnet", "onnx"): (None, "edgekit.exporters.onnx.bitnet_adapters"),
}


def supported_text() -> str:
    return "; ".join(
        f"{fam} {fmt} ({', '.join(q) if q else 'every quant'})" for (fam, fmt), (q, _) in SEPARATE.items()
    )


def check_separate(family: str, fmt: str, quant: str) -> str:
    """The writer module for a separate-adapter export of (family, format, quant); UnsupportedError naming the
    combinations that work otherwise."""
    row = SEPARATE.get((family, fmt))
    if row is None or (row[0] is not None and quant not in row[0]):
        raise UnsupportedError(
            f"{family} {fmt} {quant} cannot keep a LoRA adapter separate (its engine cannot apply one there); "
            f"--lora-mode separate works for: {supported_text()}; or use --lora-mode merged"
        )
    return row[1]


def writer(family: str, fmt: str, quant: str) -> Any:
    import importlib

    return importlib.import_module(check_separate(family, fmt, quant))


# -- naming ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NamedAdapter:
    """An adapter and the name a bundle knows it by (``session.use_adapter(name)``)."""

    name: str
    adapter: Adapter

    def record(self) -> dict[str, Any]:
        """The manifest's ``source`` of this adapter: where it came from and its sha256."""
        return {"path": str(Path(self.adapter.path).resolve()), "sha256": self.adapter.sha256,
                **self.adapter.summary()}


def check_name(name: str, taken: Sequence[str] = ()) -> str:
    if not _NAME.match(name):
        raise AdapterError(
            f"adapter name {name!r} is not valid: use letters, digits, '_', '-', '.' (at most 64, not starting "
            "with a punctuation mark)"
        )
    if name in taken:
        raise AdapterError(f"two adapters are named {name!r}; give each a distinct name (NAME=PATH on export, "
                           "--name NAME for `edgekit adapter add`)")
    return name


def default_name(spec: str) -> str:
    """``builtin:lfm2-tiny-lora`` -> ``lfm2-tiny-lora``; ``runs/math/`` -> ``math``."""
    text = spec.rstrip("/")
    return text.split(":", 1)[1] if text.startswith("builtin:") else Path(text).name


def split_spec(spec: str | Path) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` -> (name, path)."""
    text = str(spec)
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        return name.strip(), path.strip()
    return default_name(text), text


def open_named(specs: Sequence[str | Path], base: Checkpoint) -> tuple[NamedAdapter, ...]:
    """Open every ``NAME=PATH`` / ``PATH`` adapter against ``base`` (the same checks as a merged export); refuses
    invalid or duplicate names and the same adapter given twice."""
    out: list[NamedAdapter] = []
    for spec in specs:
        name, path = split_spec(spec)
        check_name(name, [a.name for a in out])
        adapter = open_adapter(path, base)
        for other in out:
            if other.adapter.sha256 == adapter.sha256:
                raise AdapterError(f"adapters {other.name!r} and {name!r} are the same files ({adapter.path}); give it once")
        out.append(NamedAdapter(name, adapter))
    return tuple(out)


def lora_mode(options: Any) -> str:
    return str(getattr(options, "lora_mode", "merged") or "merged")


def plan_adapters(
    specs: Sequence[str | Path], base: Checkpoint, family: str, fmt: str, quant: str, options: Any
) -> tuple[Adapter | None, tuple[NamedAdapter, ...]]:
    """(the adapter to merge, or None; the adapters to keep separate).  Several adapters need separate mode.
    ``--accept-reternarisation`` (BitNet) without an adapter to merge would change nothing: refused."""
    if getattr(options, "accept_reternarisation", False) and (not specs or lora_mode(options) == "separate"):
        raise UnsupportedError(
            "--accept-reternarisation applies only when a LoRA adapter is merged (--adapter PATH, --lora-mode "
            "merged); this export merges none — drop the flag"
        )
    if lora_mode(options) != "separate":
        if len(specs) > 1:
            raise UnsupportedError(
                f"{len(specs)} adapters can only be exported kept separate: pass --lora-mode separate "
                f"(works for: {supported_text()})"
            )
        if specs and "=" in str(specs[0]) and not Path(str(specs[0])).exists():
            raise UnsupportedError("a named adapter (NAME=PATH) is kept separate: pass --lora-mode separate")
        return (open_adapter(specs[0], base) if specs else None), ()
    check_separate(family, fmt, quant)
    if not specs:
        raise UnsupportedError("--lora-mode separate needs at least one --adapter (NAME=PATH or PATH)")
    return None, open_named(specs, base)


# -- the factors every format writes -------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraFactors:
    """One adapted projection: ``delta W = b @ a`` with PEFT's scaling already folded into ``b``.
    ``a``: float32 [r, in]; ``b``: float32 [out, r]."""

    a: np.ndarray
    b: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def _pattern(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first pattern matching the end of ``module`` (as a regex) wins."""
    for pattern, value in patterns.items():
        if module == pattern or re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def factors(adapter: Adapter) -> dict[str, LoraFactors]:
    """The adapter's factors by base module name (``model.layers.0.conv.in_proj``), scaling folded into B
    (peft's ``update_layer``: ``alpha / r``, rsLoRA ``alpha / sqrt(r)``, ``rank_pattern`` / ``alpha_pattern``)."""
    from safetensors.numpy import load_file

    cfg = adapter.config
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, array in load_file(str(adapter.path / ADAPTER_WEIGHTS)).items():
        m = _KEY.match(key)
        if m is None:  # open_adapter refused these already
            raise AdapterError(f"{adapter.path}: unexpected tensor {key!r}")
        parts.setdefault(m["module"], {})[m["ab"]] = np.asarray(array, dtype=np.float32)
    out: dict[str, LoraFactors] = {}
    for module, ab in sorted(parts.items()):
        rank = int(_pattern(ranks, module, r))
        a_m = float(_pattern(alphas, module, alpha))
        scaling = a_m / math.sqrt(rank) if cfg.get("use_rslora") else a_m / rank
        a, b = ab["A"], ab["B"]
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise AdapterError(f"{adapter.path}: {module}: LoRA weights hold NaN or Inf")
        out[module] = LoraFactors(a=np.ascontiguousarray(a), b=np.ascontiguousarray(b * np.float32(scaling)))
    return out


def slots(all_factors: Sequence[Mapping[str, LoraFactors]]) -> dict[str, int]:
    """Branch rank per module a graph needs to hold every adapter given (the union of targets, the largest rank)."""
    out: dict[str, int] = {}
    for f in all_factors:
        for module, lf in f.items():
            out[module] = max(out.get(module, 0), lf.rank)
    return dict(sorted(out.items()))


def padded(lf: LoraFactors | None, rank: int, d_in: int, d_out: int) -> LoraFactors:
    """``lf`` zero-padded to ``rank`` (zero rows of A, zero columns of B add nothing); a zero branch for None."""
    a = np.zeros((rank, d_in), np.float32)
    b = np.zeros((d_out, rank), np.float32)
    if lf is not None:
        a[: lf.rank] = lf.a
        b[:, : lf.rank] = lf.b
    return LoraFactors(a, b)


def check_fits(name: str, f: Mapping[str, LoraFactors], have: Mapping[str, int], fmt: str) -> None:
    """An adapter added to a bundle must fit the branches its graph has (targets and rank)."""
    extra = sorted(set(f) - set(have))
    if extra:
        raise AdapterError(
            f"adapter {name!r} targets {extra[0]}{f' and {len(extra) - 1} more' if len(extra) > 1 else ''}, which "
            f"this {fmt} bundle's graph has no LoRA branch for; re-export with all adapters (--lora-mode separate)"
        )
    big = sorted(m for m, lf in f.items() if lf.rank > have[m])
    if big:
        raise AdapterError(
            f"adapter {name!r} has rank {f[big[0]].rank} on {big[0]}; this {fmt} bundle's branches hold rank "
            f"{have[big[0]]}; re-export with all adapters (--lora-mode separate)"
        )


# -- references ------------------------------------------------------------------------------------------------
def adapter_reference(checkpoint: Checkpoint, adapter: Adapter, options: Any, scale: float = 1.0) -> Any:
    """What base + adapter through an engine must match: the base reference with the adapter applied *unmerged*,
    as the engines apply it — the family's own unmerged model where it has one (BitNet: ternary base, float LoRA
    branch), else forward hooks adding ``B (A x)`` to each adapted projection (equal to peft's merged model up to
    float rounding).  Its weights (state dict) are the base's, so the kind's verification reads the base file
    back against them and builds its file-weights fidelity reference with the adapter still applied.  ``scale``:
    the run-time scale (``session.use_adapter(name, scale)``) multiplying every branch."""
    spec = checkpoint.family
    hook = getattr(spec, "unmerged_reference", None)
    if hook:
        from .families import _resolve

        return _resolve(hook)(checkpoint, adapter, options, scale=scale)
    return with_lora_hooks(spec.build_reference(checkpoint, options), adapter, scale)


def _stash_input(module: Any, args: tuple[Any, ...]) -> None:
    # registered before any activation-quantising pre-hook: the LoRA branch sees the float input, as engines do
    module.edgekit_lora_input = args[0]


def _add_branch(module: Any, args: tuple[Any, ...], out: Any) -> Any:
    import torch.nn.functional as F

    x = module.__dict__.pop("edgekit_lora_input", args[0])
    a, b = module.edgekit_lora
    return out + F.linear(F.linear(x.to(a.dtype), a), b).to(out.dtype)


def with_lora_hooks(model: Any, adapter: Adapter, scale: float = 1.0) -> Any:
    """``model`` (a torch model whose modules carry the adapter's module names) with ``adapter`` added unmerged
    through forward hooks; the parameters stay the base's.  Survives ``copy.deepcopy``."""
    import torch

    for module, lf in factors(adapter).items():
        m = model.get_submodule(module)
        m.edgekit_lora = (torch.from_numpy(lf.a.copy()), torch.from_numpy(lf.b * np.float32(scale)))
        m.register_forward_pre_hook(_stash_input)
        m.register_forward_hook(_add_branch)
    model.edgekit_adapter = str(adapter.path)
    return model


# -- manifest, verification ------------------------------------------------------------------------------------
def attach(manifest: dict[str, Any], written: Mapping[str, Any], named: Sequence[NamedAdapter]) -> None:
    """Set ``manifest["adapters"]`` (the mechanism, the graph's LoRA branches if any, one entry per adapter) and
    apply the writer's ``artifact`` updates (an ONNX graph's signature after its LoRA inputs were added)."""
    items = {n.name: {**written["items"][n.name], "source": n.record(), "verification": None} for n in named}
    manifest["artifact"].update(written.get("artifact") or {})
    extra = {k: v for k, v in written.items() if k not in ("items", "artifact")}
    manifest["adapters"] = {"mode": "separate", **extra, "items": items}


def verify_separate(
    root: Path, base_model: Any, checkpoint: Checkpoint, options: Any, thresholds: Any,
    names: Sequence[str] | None = None, progress: Callable[[str], None] = print,
) -> Any:
    """The base alone against the base reference, then each adapter (``names``, default all) switched in place
    on the same session against its reference, with the recipe's thresholds for the quant; every report lands
    in the manifest.  Returns (the base's report, or None when ``base_model`` is None; name -> Report)."""
    from . import kinds, runtimes
    from .bundle import read_manifest, write_manifest
    from .lora import open_adapter as _open

    manifest = read_manifest(root)
    kind = kinds.behaviour(manifest["kind"])
    items = manifest["adapters"]["items"]
    session = runtimes.load(root)
    reports: dict[str, Any] = {}
    try:
        base = None
        if base_model is not None:
            progress("verify: the base model (no adapter)")
            session.use_adapter(None)
            base = kind.verify(session, base_model, root, thresholds, progress=progress)
        for name in names or list(items):
            progress(f"verify: adapter {name!r}")
            adapter = _open(items[name]["source"]["path"], checkpoint)
            if adapter.sha256 != items[name]["source"]["sha256"]:
                raise BundleError(f"{adapter.path}: adapter {name!r} changed since it was added; re-add it")
            model = adapter_reference(checkpoint, adapter, options)
            seconds = session.use_adapter(name)
            reports[name] = kind.verify(session, model, root, thresholds, progress=progress)
            items[name]["switch_seconds"] = round(float(seconds or 0.0), 6)
            del model
    finally:
        session.close()
    if base is not None:
        manifest["verification"] = base.to_dict()
    for name, rep in reports.items():
        items[name]["verification"] = rep.to_dict()
    write_manifest(root, manifest)
    return base, reports


@dataclass(frozen=True)
class Combined:
    """The base's report and each adapter's, shaped like one report (``passed``, ``failures``, ``table()``)."""

    base: Any
    reports: Mapping[str, Any]

    @property
    def failures(self) -> list[str]:
        return failures(self.base, self.reports)

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        return tables(self.base, self.reports)


def failures(base: Any, reports: Mapping[str, Any]) -> list[str]:
    """Failures of the base report and the adapters' reports, each prefixed with what failed."""
    out = [f"base: {f}" for f in (base.failures if base is not None else [])]
    for name, rep in reports.items():
        out += [f"adapter {name}: {f}" for f in rep.failures]
    return out


def tables(base: Any, reports: Mapping[str, Any]) -> str:
    parts = ["base model (no adapter)", base.table()] if base is not None else []
    for name, rep in reports.items():
        parts += [f"adapter {name}", rep.table()]
    return "\n".join(parts)


# -- adding an adapter to a bundle -------------------------------------------------------------------------------
def add(
    bundle: str | Path, adapter_dir: str | Path, name: str, verify: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``edgekit adapter add``: write one more adapter into a separate-mode bundle without re-exporting the
    base.  The adapter is checked against the bundle's recorded source checkpoint (its sha256 must not have
    changed) with the same refusals as an export; the new bundle is assembled beside the old one (files hard-linked)
    and renamed into place only when written and verified: a failure leaves the bundle as it was.  Returns the
    adapter's manifest entry."""
    import os
    import shutil

    from .bundle import check_files, read_manifest, staging, write_manifest
    from .checkpoint import open_checkpoint
    from .export import recorded_options
    from .families import Family
    from .plan import Format
    from .recipes import RECIPES

    root = Path(bundle)
    manifest = read_manifest(root)
    check_files(root, manifest, hashes=True)
    section = manifest.get("adapters")
    if not section or section.get("mode") != "separate":
        raise BundleError(
            f"{root} was exported with its adapter merged (or none); re-export with --lora-mode separate to add "
            "adapters to it"
        )
    check_name(name, list(section["items"]))
    ckpt = open_checkpoint(manifest["source"]["path"])
    if ckpt.sha256 != manifest["source"]["sha256"]:
        raise CheckpointError(
            f"{ckpt.path}: the base checkpoint changed since the export (sha256 differs); an adapter added now "
            "could not be checked against the bundle's base"
        )
    named = NamedAdapter(name, open_adapter(adapter_dir, ckpt))
    for other, entry in section["items"].items():
        if entry["source"]["sha256"] == named.adapter.sha256:
            raise AdapterError(f"{named.adapter.path} is in the bundle already, as {other!r}")
    fmt = Format.parse(manifest["format"])
    recipe = RECIPES.get(Family(manifest["family"]), fmt)
    quant = recipe.quant(manifest["plan"]["quant"]["name"])
    module = writer(manifest["family"], fmt.value, quant.name)
    options = recorded_options(manifest, ckpt)
    t0 = time.perf_counter()
    with staging(root, force=True) as tmp:
        for p in sorted(root.rglob("*")):
            dest = tmp / p.relative_to(root)
            if p.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, dest)  # the manifest is rewritten (a new file), the others are only read
            except OSError:
                shutil.copy2(p, dest)
        progress(f"writing adapter {name!r} ({named.adapter.path})")
        entry = module.add_adapter(tmp, manifest, ckpt, options, named, progress)
        section["items"][name] = {**entry, "source": named.record(), "verification": None}
        section["items"][name]["add_seconds"] = round(time.perf_counter() - t0, 2)
        write_manifest(tmp, manifest)
        if verify:
            _, reports = verify_separate(
                tmp, None, ckpt, options, recipe.thresholds_for(quant.name, options), names=[name], progress=progress
            )
            report = reports[name]
            progress(report.table())
            if not report.passed:
                from .errors import ParityError

                raise ParityError(
                    f"adapter {name!r} failed verification: {'; '.join(report.failures)}; the bundle is unchanged"
                )
    return read_manifest(root)["adapters"]["items"][name]


def describe(manifest: Mapping[str, Any]) -> list[str]:
    """Lines for ``edgekit info`` / ``edgekit adapter list``."""
    section = manifest.get("adapters") or {}
    lines = []
    for name, e in (section.get("items") or {}).items():
        v = e.get("verification")
        status = "not verified" if not v else ("PASS" if v.get("passed") else "FAIL")
        lines.append(f"{name}: {e.get('file')} ({e.get('bytes', 0) / 1e6:.2f} MB), rank {e['source'].get('rank')}, "
                     f"from {e['source']['path']}, {status}")
    return lines
