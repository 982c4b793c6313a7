"""Separate LoRA adapters for ONNX bundles: LoRA branches in the base graph, one ONNX Runtime adapter file each.

The pair file writes the base graph (float or quantised); this module then gives every adapted projection a float
branch beside it, ``y = base(x) + (x @ A * lora_scale) @ B``, where ``A`` [in, r] and ``B`` [r, out] are
*overridable initializers* (graph inputs with a default; zero, so the file alone is the base model) and
``lora_scale`` float32 [1] (default 1).  The fused q/k/v projection gets one branch whose A concatenates the three
A factors and whose B is block-diagonal (exact).  Branch ranks are the largest any adapter of the export uses per
module; smaller adapters are zero-padded (exact).

Each adapter is an ONNX Runtime adapter file (``onnxruntime.AdapterFormat``, ``adapters/NAME.onnx_adapter``) that
holds every branch tensor.  ``InferenceSession.run`` users activate one with ``RunOptions.add_active_adapter
(LoraAdapter)``; edgekit's session binds the same tensors itself, because ``run_with_iobinding`` ignores active
adapters (onnxruntime 1.32 warns "run_with_iobinding has active adapters specified, but won't have an effect").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...adapters import ADAPTER_DIR, LoraFactors, NamedAdapter, check_fits, factors, padded, slots
from ...errors import BundleError, UnsupportedError
from . import ARTIFACT, DATA

MECHANISM = (
    "ONNX Runtime adapter file (onnxruntime.AdapterFormat) over LoRA branches whose A/B are overridable "
    "initializers; bound as inputs (RunOptions.add_active_adapter for InferenceSession.run)"
)
SCALE = "lora_scale"
SUFFIX = ".onnx_adapter"
_QKV = ("q_proj", "k_proj", "v_proj")


def branch_of(module: str) -> tuple[str, str]:
    """HF module -> (branch key, the graph node output the branch adds to).  q/k/v share the fused qkv_proj."""
    parts = module.split(".")
    if parts[-1] in _QKV:
        i = int(parts[2])
        return f"model.layers.{i}.self_attn.qkv_proj", f"l{i}/attn/qkv_proj/out0"
    return module, f"{module}/out0"


def branch_tensors(
    f: Mapping[str, LoraFactors], have: Mapping[str, int], shapes: Mapping[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Every branch tensor (``lora.<key>.A`` [in, r], ``lora.<key>.B`` [r, out]) for one adapter's factors ``f``
    padded to the graph's ranks ``have`` (modules the adapter leaves alone: zero).  ``shapes``: module -> [out, in]."""
    per_branch: dict[str, list[str]] = {}
    for module in have:
        per_branch.setdefault(branch_of(module)[0], []).append(module)
    out: dict[str, np.ndarray] = {}
    for key, modules in per_branch.items():
        modules = sorted(modules, key=lambda m: _QKV.index(m.rsplit(".", 1)[1]) if m.rsplit(".", 1)[1] in _QKV else 0)
        parts = [padded(f.get(m), have[m], shapes[m][1], shapes[m][0]) for m in modules]
        a = np.concatenate([p.a.T for p in parts], axis=1)  # [in, sum r]
        if key.endswith("qkv_proj"):
            full = {m.rsplit(".", 1)[1]: m for m in modules}
            rank = a.shape[1]
            outs = [shapes.get(f"{key.rsplit('.', 1)[0]}.{q}", (0, 0))[0] for q in _QKV]
            b = np.zeros((rank, sum(outs)), np.float32)
            r0 = 0
            for q, width, o0 in zip(_QKV, outs, np.cumsum([0] + outs[:-1])):
                if q not in full:
                    continue
                p = parts[modules.index(full[q])]
                b[r0 : r0 + p.rank, o0 : o0 + width] = p.b.T
                r0 += p.rank
        else:
            b = parts[0].b.T
        out[f"lora.{key}.A"] = np.ascontiguousarray(a, np.float32)
        out[f"lora.{key}.B"] = np.ascontiguousarray(b, np.float32)
    return out


def group_tensors(
    groups: Mapping[str, Sequence[str]], f: Mapping[str, LoraFactors], have: Mapping[str, int],
    shapes: Mapping[str, tuple[int, int]],
) -> dict[str, np.ndarray]:
    """Branch tensors of fused projections: ``groups`` maps a branch key to the HF modules one matmul computes
    side by side (their outputs concatenated in that order).  A [in, sum r] concatenates the adapted modules' A
    factors, B [sum r, sum out] is block-diagonal (exact); groups with no adapted module get no branch."""
    out: dict[str, np.ndarray] = {}
    for key, modules in groups.items():
        adapted = [m for m in modules if have.get(m)]
        if not adapted:
            continue
        widths = [shapes[m][0] for m in modules]
        d_in, rank = shapes[modules[0]][1], sum(have[m] for m in adapted)
        a, b = np.zeros((d_in, rank), np.float32), np.zeros((rank, sum(widths)), np.float32)
        r0, o0 = 0, 0
        for m, width in zip(modules, widths):
            if m in adapted:
                p = padded(f.get(m), have[m], d_in, width)
                a[:, r0 : r0 + have[m]] = p.a.T
                b[r0 : r0 + have[m], o0 : o0 + width] = p.b.T
                r0 += have[m]
            o0 += width
        out[f"lora.{key}.A"], out[f"lora.{key}.B"] = a, b
    return out


def module_shapes(config: Any, modules: Sequence[str]) -> dict[str, tuple[int, int]]:
    """[out, in] of every LFM2 projection named (also q/k/v when only some are adapted)."""
    s = config
    h, hd = s.hidden_size, s.head_dim
    leaf = {
        "q_proj": (s.num_attention_heads * hd, h), "k_proj": (s.num_key_value_heads * hd, h),
        "v_proj": (s.num_key_value_heads * hd, h), "in_proj": (3 * h, h), "w1": (s.intermediate_size, h),
        "w3": (s.intermediate_size, h), "w2": (h, s.intermediate_size),
    }
    out: dict[str, tuple[int, int]] = {}
    for m in modules:
        name = m.rsplit(".", 1)[1]
        if name == "out_proj":
            out[m] = (h, s.num_attention_heads * hd) if ".self_attn." in m else (h, h)
        else:
            out[m] = leaf[name]
        if name in _QKV:
            stem = m.rsplit(".", 1)[0]
            for q in _QKV:
                out[f"{stem}.{q}"] = leaf[q]
    return out


def add_branches(path: Path, tensors: Mapping[str, np.ndarray], targets: Mapping[str, Sequence[str]] | None = None) -> None:
    """Rewrite ``model.onnx`` (+ its external data) with a LoRA branch per ``lora.<key>.A/B`` pair, added to the
    output of the node producing the branch's target (``targets``: key -> candidate output names, the first in the
    graph wins; default: LFM2's names) and reading that node's first input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))  # external data read into memory: the data file is rewritten below
    g = model.graph
    producers = {o: k for k, n in enumerate(g.node) for o in n.output}
    keys = sorted({k[len("lora.") : -2] for k in tensors})
    inserts: dict[int, list[Any]] = {}
    for key in keys:
        if targets is not None:
            target = next((t for t in targets.get(key, ()) if t in producers), "")
        else:
            target = branch_of(key)[1] if not key.endswith("qkv_proj") else f"l{key.split('.')[2]}/attn/qkv_proj/out0"
        if target not in producers:
            raise UnsupportedError(f"ONNX LoRA: no projection {target!r} in the graph; this graph cannot take a branch")
        node = g.node[producers[target]]
        base_out = target + "/base"
        node.output[list(node.output).index(target)] = base_out
        a, b = f"lora.{key}.A", f"lora.{key}.B"
        t = f"lora/{key}"
        inserts[producers[target]] = [
            helper.make_node("MatMul", [node.input[0], a], [t + "/xa"], name=t + "/A"),
            helper.make_node("Mul", [t + "/xa", SCALE], [t + "/xas"], name=t + "/scale"),
            helper.make_node("MatMul", [t + "/xas", b], [t + "/xab"], name=t + "/B"),
            helper.make_node("Add", [base_out, t + "/xab"], [target], name=t + "/Add"),
        ]
        for name in (a, b):
            zero = np.zeros_like(tensors[name])
            g.initializer.append(numpy_helper.from_array(zero, name))
            g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(zero.shape)))
    g.initializer.append(numpy_helper.from_array(np.ones([1], np.float32), SCALE))
    g.input.append(helper.make_tensor_value_info(SCALE, TensorProto.FLOAT, [1]))
    nodes = list(g.node)
    del g.node[:]
    for k, n in enumerate(nodes):  # each branch right after its projection: the graph stays topologically sorted
        g.node.append(n)
        g.node.extend(inserts.get(k, []))
    (path.parent / DATA).unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA)


def write_file(path: Path, tensors: Mapping[str, np.ndarray]) -> int:
    import onnxruntime as ort

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()})
    fmt.export_adapter(str(path))
    return path.stat().st_size


def write(job: Any, named: Sequence[NamedAdapter], out_dir: Path, artifact: dict[str, Any]) -> dict[str, Any]:
    all_f = [factors(n.adapter) for n in named]
    have = slots(all_f)
    shapes = module_shapes(job.config, list(have))
    job.progress(f"adding LoRA branches for {len(have)} projections to {ARTIFACT}")
    return write_branches(out_dir, named, all_f, have, lambda f: branch_tensors(f, have, shapes))


def write_branches(
    out_dir: Path, named: Sequence[NamedAdapter], all_f: Sequence[Mapping[str, Any]], have: Mapping[str, int],
    tensors: Callable[[Mapping[str, Any]], dict[str, np.ndarray]], targets: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Give the graph its LoRA branches (zero factors: the base) and write one adapter file per adapter;
    ``tensors(factors)`` -> the branch initializers of one adapter (``{}``: zeros); ``targets`` as in
    ``add_branches``.  Returns the writer's manifest section (``edgekit.adapters.attach``)."""
    from . import check

    add_branches(out_dir / ARTIFACT, tensors({}), targets)
    items = {n.name: adapter_file(out_dir, n.name, f, tensors) for n, f in zip(named, all_f)}
    return {
        "mechanism": MECHANISM,
        "branches": dict(have),
        "scale_input": SCALE,
        "artifact": {"signature": check.signature(out_dir / ARTIFACT), "tensor_types": check.tensor_types(out_dir / ARTIFACT)},
        "items": items,
    }


def adapter_file(root: Path, name: str, f: Mapping[str, Any],
                 tensors: Callable[[Mapping[str, Any]], dict[str, np.ndarray]]) -> dict[str, Any]:
    """Write adapter ``name``'s file under ``adapters/``; its manifest entry."""
    rel = f"{ADAPTER_DIR}/{name}{SUFFIX}"
    size = write_file(root / rel, tensors(f))
    return {"file": rel, "bytes": size, "max_rank": max(lf.rank for lf in f.values())}


def recorded_branches(root: Path, manifest: Mapping[str, Any], named: NamedAdapter) -> tuple[dict[str, int], Any]:
    """(the bundle's LoRA branches, the adapter's factors checked to fit them) for ``adapter add``."""
    have = {k: int(v) for k, v in (manifest["adapters"].get("branches") or {}).items()}
    if not have:
        raise BundleError(f"{root}: the manifest records no LoRA branches; re-export with --lora-mode separate")
    f = factors(named.adapter)
    check_fits(named.name, f, have, "onnx")
    return have, f


def add_adapter(
    root: Path, manifest: Mapping[str, Any], checkpoint: Any, options: Any, named: NamedAdapter,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    have, f = recorded_branches(root, manifest, named)
    shapes = module_shapes(checkpoint.model_config, list(have))
    return adapter_file(root, named.name, f, lambda g: branch_tensors(g, have, shapes))
