"""Separate LoRA adapters for ExecuTorch bundles: the factors and the scale are inputs of ``forward``.

The program carries a float32 LoRA branch beside every adapted projection, ``y = base(x) + ((x @ A) * scale) @ B``,
as two XNNPACK batched matmuls whose right-hand sides are *inputs* of the method: ``forward(tokens, input_pos,
(lora_scale [1], A_0 [1, in, r], B_0 [1, r, out], ...))``.  The session holds one list of these tensors per
adapter (read once from ``adapters/NAME.safetensors``) and passes the active one on every call, so switching is
a pointer swap — no program reload, no XNNPACK repacking of the base — at any scale (``lora_scale``); the base
alone is zero factors.  The order and shapes of the inputs (``Slot``) are in the manifest (``artifact.lora_inputs``),
which is all ``edgekit adapter add`` needs: no re-lowering.

Why this form (ExecuTorch 1.5, XNNPACK; numbers in bench/RESULTS.md, "Separate LoRA adapters"): the factors as
program constants in a ``.ptd`` per adapter (edgekit's earlier layout) switch only by reloading the program —
XNNPACK packs constants at method load: 13 ms on the tiny model, ~0.4 s on a 350M — and bake the scale in.  As
inputs of ``F.linear`` they would leave the delegate (XNNPACK's linear partitioner takes static weights only,
``backends/xnnpack/partition/config/gemm_configs.py``; not measured); as inputs of ``bmm`` they stay inside it
(the batched matmul packs nothing ahead; every op of the separate program is delegated as in the merged one).
Mutable buffers written by a second method were not tried (they need shared mutable-buffer planning across
methods, ``MemoryPlanningPass(share_mutable_buffers=True)``, and a runtime giving both methods one arena).  ExecuTorch's C++ text runner
passes only tokens and positions, so a separate-adapter bundle generates through the Method API loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ...adapters import ADAPTER_DIR, LoraFactors, NamedAdapter, check_fits, factors
from ...errors import AdapterError, BundleError

MECHANISM = ("ExecuTorch program whose LoRA factors and scale are inputs of forward (XNNPACK batched matmuls); "
             "one safetensors file of those inputs per adapter, passed by the session on every call")
SUFFIX = ".safetensors"
LEGACY = ("lora_keys", "lora_base_data")  # the .ptd-per-adapter layout (switch = program reload)


@dataclass(frozen=True)
class Slot:
    """One LoRA input of ``forward``: ``name``; the HF module whose factor fills it; ``which`` "A" ([1, in, r],
    A transposed) or "B" ([1, r, out], B transposed); ``rows``: the slice of B's output rows it holds (LFM2's
    in_proj is three projections in the graph), None for all."""

    name: str
    module: str
    which: str
    shape: tuple[int, int, int]
    rows: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "which": self.which, "shape": list(self.shape),
                "rows": list(self.rows) if self.rows else None}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Slot":
        return Slot(str(d["name"]), str(d["module"]), str(d["which"]), tuple(int(x) for x in d["shape"]),  # type: ignore[arg-type]
                    tuple(d["rows"]) if d.get("rows") else None)  # type: ignore[arg-type]


def assign_slots(
    linears: Iterable[tuple[Any, str, tuple[int, int] | None]], ranks: Mapping[str, int]
) -> tuple[Slot, ...]:
    """Give every (linear module, HF module name, B rows) whose HF leaf has a rank in ``ranks`` its A and B input
    indices (``module.lora_slots``); linears of one HF module share its A input.  Returns the slots in input order."""
    slots: list[Slot] = []
    index: dict[str, int] = {}
    for linear, hf, rows in linears:
        rank = ranks.get(hf.rsplit(".", 1)[-1])
        if not rank:
            continue
        lin = getattr(linear, "base", linear)
        d_in, d_out = int(lin.in_features), int(lin.out_features)
        a_name, b_name = f"{hf}.A", f"{hf}.B" + (f"[{rows[0]}:{rows[1]}]" if rows else "")
        if a_name not in index:
            index[a_name] = len(slots)
            slots.append(Slot(a_name, hf, "A", (1, d_in, rank)))
        index[b_name] = len(slots)
        slots.append(Slot(b_name, hf, "B", (1, rank, d_out), rows))
        linear.lora_slots = (index[a_name], index[b_name])
    return tuple(slots)


def branch(module: Any, x: Any, y: Any, lora: tuple[Any, Sequence[Any]] | None) -> Any:
    """``y`` plus the module's LoRA branch on its (unquantised) input ``x`` [1, n, in]; ``lora``: (scale [1],
    the factor inputs), None for a program without LoRA inputs."""
    import torch

    ids = getattr(module, "lora_slots", None)
    if lora is None or ids is None:
        return y
    scale, w = lora
    return y + torch.bmm(torch.bmm(x, w[ids[0]]) * scale, w[ids[1]])


def example_inputs(slots: Sequence[Slot]) -> tuple[Any, ...]:
    """(scale, factors...) for tracing: distinct non-zero values, so no branch is constant-folded away."""
    import torch

    gen = torch.Generator().manual_seed(16)
    return (torch.ones(1),) + tuple(torch.randn(s.shape, generator=gen) * 0.01 for s in slots)


def arrays(slots: Sequence[Slot], f: Mapping[str, LoraFactors]) -> dict[str, np.ndarray]:
    """One adapter's factors (``edgekit.adapters.factors``: scaling folded into B) as the program's inputs, zero
    beyond each factor's rank and on modules the adapter leaves alone."""
    out: dict[str, np.ndarray] = {}
    for s in slots:
        v = np.zeros(s.shape, np.float32)
        lf = f.get(s.module)
        if lf is not None:
            if lf.rank > s.shape[1 if s.which == "B" else 2]:
                raise AdapterError(f"{s.module}: rank {lf.rank} exceeds the program's LoRA branch rank")
            if s.which == "A":
                v[0, :, : lf.rank] = lf.a.T
            else:
                b = lf.b[s.rows[0] : s.rows[1]] if s.rows else lf.b
                v[0, : lf.rank, :] = b.T
        out[s.name] = v
    return out


def write_file(slots: Sequence[Slot], f: Mapping[str, LoraFactors], out: Path) -> int:
    """Write one adapter's inputs to ``out`` (safetensors, float32); returns its size in bytes."""
    from safetensors.numpy import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file(arrays(slots, f), str(tmp), metadata={"format": "edgekit executorch lora inputs"})
    tmp.replace(out)
    return out.stat().st_size


def read_file(path: Path, slots: Sequence[Slot]) -> list[np.ndarray]:
    """An adapter file's tensors in input order; BundleError when it does not fit the program."""
    from safetensors.numpy import load_file

    try:
        data = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{path}: not a readable adapter file ({exc}); re-add the adapter") from None
    out = []
    for s in slots:
        v = data.get(s.name)
        if v is None or tuple(v.shape) != s.shape or v.dtype != np.float32:
            raise BundleError(f"{path}: no float32 {s.name} of shape {list(s.shape)}; the file is not for this "
                              "program (re-add the adapter)")
        out.append(np.ascontiguousarray(v))
    return out


def check_layout(root: Path, artifact: Mapping[str, Any]) -> tuple[Slot, ...]:
    """The program's LoRA input slots; a bundle of the older ``.ptd``-per-adapter layout is refused."""
    if any(k in artifact for k in LEGACY) or "lora_inputs" not in artifact:
        raise BundleError(f"{root}: this ExecuTorch bundle keeps its adapters as .ptd data files (an older edgekit "
                          "layout); re-export it with --lora-mode separate")
    return tuple(Slot.from_dict(d) for d in artifact["lora_inputs"])


def write_all(slots: Sequence[Slot], per_name: Mapping[str, Mapping[str, LoraFactors]], out_dir: Path) -> dict[str, Any]:
    """Every adapter's file; name -> its manifest entry."""
    items: dict[str, Any] = {}
    for name, f in per_name.items():
        rel = f"{ADAPTER_DIR}/{name}{SUFFIX}"
        size = write_file(slots, f, out_dir / rel)
        items[name] = {"file": rel, "bytes": size, "max_rank": max(lf.rank for lf in f.values())}
    return items


def write(job: Any, named: Sequence[NamedAdapter], out_dir: Path, artifact: dict[str, Any]) -> dict[str, Any]:
    """The pair file lowered the program and wrote every adapter's file; their entries move from the artifact
    section (``adapter_files``) to the adapters section."""
    return {"mechanism": MECHANISM, "items": artifact.pop("adapter_files")}


def add_adapter(
    root: Path, manifest: Mapping[str, Any], checkpoint: Any, options: Any, named: NamedAdapter,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    slots = check_layout(root, manifest["artifact"])
    f = factors(named.adapter)
    have = {s.module: s.shape[2] for s in slots if s.which == "A"}
    check_fits(named.name, f, have, "executorch")
    rel = f"{ADAPTER_DIR}/{named.name}{SUFFIX}"
    size = write_file(slots, f, root / rel)
    return {"file": rel, "bytes": size, "max_rank": max(lf.rank for lf in f.values())}
