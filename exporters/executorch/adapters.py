"""Separate LoRA adapters for ExecuTorch bundles: one program, one ``.ptd`` data file per adapter.

The LFM2 program carries a float32 LoRA branch on every adapted projection, its A/B constants tagged into an
external data file (``lower.lower``'s tag).  XNNPACK names each external constant by the sha256 of its bytes
(and stores identical tensors once), so a program lowered with zero branches could not tell its branches apart.
The program is therefore lowered with a distinct random placeholder in every branch tensor; each key of the
data file it writes is then matched to its branch by hashing those placeholders (as stored, or transposed), and
that map (``artifact.lora_keys``) is all later adapters need: an adapter's data file is the same keys with the
adapter's values — no re-lowering, also for ``edgekit adapter add``.  ``lora_zero.ptd`` holds zeros: the base.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ...adapters import ADAPTER_DIR, NamedAdapter, factors
from ...errors import AdapterError, BundleError, InternalError

MECHANISM = ("ExecuTorch program with LoRA branches whose weights live in a .ptd data file per adapter; "
             "switching loads the program with the other data file")
SUFFIX = ".ptd"


def set_placeholders(model: torch.nn.Module) -> None:
    """A distinct random value in every LoRA tensor (deterministic), so the lowered data keys are distinct."""
    gen = torch.Generator().manual_seed(16)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen))


def lora_values(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters() if ".lora_" in n}


def key_map(ptd: Path, placeholders: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """Data-file key -> [LoRA parameter name, stored transposed?], found by hashing the placeholders."""
    payload = _read(ptd)
    by_hash: dict[str, list[Any]] = {}
    for name, v in placeholders.items():
        by_hash[hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()] = [name, False]
        by_hash.setdefault(hashlib.sha256(np.ascontiguousarray(v.T).tobytes()).hexdigest(), [name, True])
    out: dict[str, list[Any]] = {}
    for key, entry in payload.named_data.items():
        data = bytes(payload.buffers[entry.buffer_index])
        hit = by_hash.get(hashlib.sha256(data).hexdigest())
        if hit is None:
            raise InternalError(f"{ptd}: data key {key[:16]}... matches no LoRA branch; the lowering changed the "
                                "tensors' layout (report this)")
        out[key] = hit
    missing = sorted(set(placeholders) - {v[0] for v in out.values()})
    if missing:
        raise InternalError(f"{ptd}: LoRA tensors {missing[:3]} are not in the data file")
    return out


def _read(ptd: Path) -> Any:
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    return FlatTensorSerializer().deserialize(Cord(ptd.read_bytes()))


def write_data(template: Path, keys: Mapping[str, Sequence[Any]], values: Mapping[str, np.ndarray], out: Path) -> int:
    """A data file with ``template``'s keys and tensor layouts holding ``values`` (LoRA parameter name -> array)."""
    from executorch.exir._serialize._cord import Cord
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    payload = _read(template)
    buffers: list[bytes] = []
    named: dict[str, Any] = {}
    for key, entry in payload.named_data.items():
        name, transposed = keys[key]
        v = np.asarray(values[name], dtype=np.float32)
        data = np.ascontiguousarray(v.T if transposed else v).tobytes()
        if len(data) != len(payload.buffers[entry.buffer_index]):
            raise InternalError(f"{name}: {len(data)} bytes where the program expects {len(payload.buffers[entry.buffer_index])}")
        named[key] = DataEntry(buffer_index=len(buffers), alignment=64, tensor_layout=entry.tensor_layout)
        buffers.append(data)
    blob = FlatTensorSerializer().serialize(DataPayload(buffers=buffers, named_data=named))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_bytes(bytes(blob) if not isinstance(blob, Cord) else bytes(blob))
    tmp.replace(out)
    return out.stat().st_size


def adapter_values(model: torch.nn.Module, f: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from .lfm2 import load_factors

    load_factors(model, f)
    return lora_values(model)


def write(job: Any, named: Sequence[NamedAdapter], out_dir: Path, artifact: dict[str, Any]) -> dict[str, Any]:
    """The pair file lowered the program and wrote every adapter's data file; their entries move from the
    artifact section (``adapter_files``) to the adapters section."""
    return {"mechanism": MECHANISM, "items": artifact.pop("adapter_files")}


def add_adapter(
    root: Path, manifest: Mapping[str, Any], checkpoint: Any, options: Any, named: NamedAdapter,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from ...adapters import check_fits
    from .lfm2 import Lfm2, LoraSpec

    art = manifest["artifact"]
    keys, branches = art.get("lora_keys"), art.get("lora_branches")
    if not keys or not branches:
        raise BundleError(f"{root}: the manifest records no LoRA data keys; re-export with --lora-mode separate")
    f = factors(named.adapter)
    have = {m: int(branches.get(m.rsplit(".", 1)[-1], 0)) for m in f}
    check_fits(named.name, f, {m: r for m, r in have.items() if r}, "executorch")
    model = Lfm2(checkpoint.model_config.with_context(16), {k: LoraSpec(int(r), 1.0) for k, r in branches.items()})
    rel = f"{ADAPTER_DIR}/{named.name}{SUFFIX}"
    size = write_data(root / art["lora_base_data"], keys, adapter_values(model, f), root / rel)
    return {"file": rel, "bytes": size, "max_rank": max(lf.rank for lf in f.values())}
