"""Reading an ONNX file's weights back for the tensor check and the fidelity reference (``edgekit.tensorcheck``).

- float32 / float16 initializers are read as they are; a MatMul's weight operand ([in, out]) is transposed back
  to the [out, in] layout of a linear layer;
- ``MatMulNBits`` (com.microsoft) weights are decoded per ONNX Runtime's contrib-op spec
  (docs/ContribOperators.md, MatMulNBits): ``B`` uint8 [N, k_blocks, blob] with the K values of each block
  packed little-end first (8 // bits values per byte), ``scales`` [N * k_blocks], optional ``zero_points``
  packed the same way per row (default ``2**(bits-1)``), value = (q - zero_point) * scale; the result is
  [N, K] = the linear layer's [out, in].  At ``accuracy_level`` 4 the CPU kernel quantises the activation
  operand to int8 per block of ``block_size`` values (symmetric, scale = max|x| / 127): ``ActQuant("sym_block")``.
  ``GatherBlockQuantized`` reads the same blocks (a tied embedding), so it needs no read-back of its own.

A float16 graph (``--quant fp16``) also runs its activations in float16: ``ActQuant("f16")``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BundleError
from edgekit.tensorcheck import ActQuant


@dataclass(frozen=True)
class OnnxWeight:
    """One weight of the file: the float initializer's name (MatMulNBits: the name of the float weight it was
    made from, the quantiser's ``_Q4G32``-style suffix removed), [out, in] float32 values for matmul weights
    (others as stored), storage type, block, levels, activation quantisation."""

    name: str
    values: np.ndarray
    qtype: str
    block: int = 0
    levels: int = 0
    act: ActQuant = ActQuant()
    matmul: bool = False


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """uint8 [..., bytes] -> uint8 [..., count] values of ``bits`` each, lowest bits first."""
    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    vals = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return vals.reshape(*packed.shape[:-1], packed.shape[-1] * per)[..., :count]


def dequantize_matmul_nbits(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, n: int, k: int,
                            bits: int, block: int) -> np.ndarray:
    """MatMulNBits' B (+ scales, zero points) -> float32 [N, K]."""
    k_blocks = (k + block - 1) // block
    q = unpack(b.reshape(n, k_blocks, -1), bits, block).astype(np.float32)  # [N, k_blocks, block]
    if zero_points is None or zero_points.size == 0:
        zp = np.full((n, k_blocks, 1), float(1 << (bits - 1)), dtype=np.float32)
    elif zero_points.dtype == np.uint8 and zero_points.size != n * k_blocks:
        zp = unpack(zero_points.reshape(n, -1), bits, k_blocks).astype(np.float32)[..., None]
    else:
        zp = zero_points.reshape(n, k_blocks, 1).astype(np.float32)
    s = scales.reshape(n, k_blocks, 1).astype(np.float32)
    return ((q - zp) * s).reshape(n, k_blocks * block)[:, :k]


def load(path: Path, external_data: bool = False) -> Any:
    """The ONNX ModelProto at ``path``; without ``external_data`` the graph only (initializers stored outside it
    stay references), parsed once per file version and shared by every check of one verification (``structure``,
    ``attributes``, ``check_rope``): callers must not modify it.  Raises ``BundleError`` when the file cannot be
    read."""
    import onnx

    if external_data:
        try:
            return onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError, OSError, ValueError
            raise BundleError(f"{path}: not a readable ONNX model ({exc}); re-export the bundle") from None
    st = path.stat() if path.is_file() else None
    return _graph(str(path.resolve()), st.st_mtime_ns if st else 0, st.st_size if st else 0)


@functools.lru_cache(maxsize=2)
def _graph(path: str, mtime_ns: int, size: int) -> Any:
    import onnx

    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError
        raise BundleError(f"{path}: not a readable ONNX model ({exc}); re-export the bundle") from None


def read(path: Path) -> list[OnnxWeight]:
    """Every float initializer and every MatMulNBits weight of the ONNX model at ``path`` (external data loaded).

    Raises ``BundleError`` when the file cannot be read."""
    import onnx
    from onnx import helper, numpy_helper

    g = load(path, external_data=True).graph
    inits = {t.name: t for t in g.initializer}
    out: list[OnnxWeight] = []
    used: set[str] = set()
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer)
    float_act = ActQuant("f16") if half else ActQuant()
    for node in g.node:
        if len(node.input) > 1 and node.input[1] in used:  # a weight shared by several matmuls: read once
            continue
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
            n, k = int(attrs["N"]), int(attrs["K"])
            b = numpy_helper.to_array(inits[node.input[1]])
            scales = numpy_helper.to_array(inits[node.input[2]])
            zp = numpy_helper.to_array(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] else None
            used.update(x for x in node.input[1:] if x)
            values = dequantize_matmul_nbits(b, scales, zp, n, k, bits, block)
            act = ActQuant("sym_block", block) if int(attrs.get("accuracy_level", 0)) == 4 else ActQuant()
            name = node.input[1].rsplit("_Q", 1)[0]
            out.append(OnnxWeight(name, values, f"INT{bits}", block, 1 << bits, act, matmul=True))
        elif node.op_type == "MatMul" and node.input[1] in inits:
            t = inits[node.input[1]]
            used.add(t.name)
            arr = numpy_helper.to_array(t)
            qtype = "F16" if t.data_type == onnx.TensorProto.FLOAT16 else "F32"
            out.append(OnnxWeight(t.name, np.asarray(arr, dtype=np.float32).T, qtype, act=float_act, matmul=True))
    for t in g.initializer:
        if t.name in used or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        qtype = "F16" if t.data_type == onnx.TensorProto.FLOAT16 else "F32"
        out.append(OnnxWeight(t.name, np.asarray(numpy_helper.to_array(t), dtype=np.float32), qtype))
    return out


# The RoPE tables (``cos_cache`` / ``sin_cache``: [positions, head_dim / 2], GroupQueryAttention's rotate-half
# layout) are not weights but decide every attention layer's output at every position, so the tensor check reads
# every row back and compares it with ``rope_expected``.  Bound on |file - expected| at position p, per stored
# type: ABS + SLOPE * 2**-23 * p.  The p term is the float32 rounding of the expected angle p x inv_freq (the
# exporter computes in float64): measured on correct builtin:lfm2-tiny exports (4096 x 32, theta 1e6) at most
# 0.50 * 2**-23 * p for fp32, int8 and int4 (3.2e-7 over rows 0..16, 1.4e-4 at row 4047); fp16 stores the
# tables as float16: measured 2.5e-4 above that term (half a float16 step below 1).  A base off by 1% moves row 1
# by ~2e-4 and row 600 by ~0.1; base x0.9 moves row 600 by ~1.
ROPE_BOUND: dict[str, tuple[float, float]] = {"F32": (1e-6, 2.0), "F16": (1e-3, 2.0)}
ROPE_TABLES = ("cos_cache", "sin_cache")


def rope_expected(theta: float, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) float32 [positions, head_dim / 2] with Hugging Face transformers' default RoPE arithmetic:
    inv_freq = 1 / theta ** (arange(0, d, 2) / d), angles = positions x inv_freq, all in float32."""
    import torch

    inv = 1.0 / (float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * inv[None, :]
    return angles.cos().numpy(), angles.sin().numpy()


def compare_rope(name: str, got: np.ndarray, qtype: str, ref: np.ndarray, what: str) -> str | None:
    """One RoPE table ``got`` (stored as ``qtype``: F32 or F16) against the expected half-width table ``ref``
    [positions, head_dim / 2]; a full-width ``got`` ([positions, head_dim], halves repeated: rotate-half layout) is
    compared with the repeated table.  Returns the failure line (off by more than ``ROPE_BOUND`` at any row, or of
    another shape), or None."""
    positions = ref.shape[0]
    got = np.asarray(got, dtype=np.float64)
    if got.ndim == 2 and got.shape[1] == 2 * ref.shape[1]:
        ref = np.concatenate([ref, ref], axis=1)
    if got.shape != ref.shape:
        return (f"tensor check: RoPE table {name} has shape {list(got.shape)}, expected {list(ref.shape)} "
                f"({what})")
    rows = np.arange(positions, dtype=np.float64)
    abs_bound, slope = ROPE_BOUND[qtype]
    bound = abs_bound + slope * 2.0**-23 * rows
    err = np.abs(got - ref.astype(np.float64)).max(axis=1) if ref.size else np.zeros(positions)
    err = np.where(np.isfinite(err), err, np.inf)
    bad = np.flatnonzero(~(err <= bound))
    if not bad.size:
        return None
    worst = int(bad[np.argmax(err[bad] / bound[bad])])
    return (f"tensor check: RoPE table {name} ({qtype}) is off by {err[worst]:.2e} at row {worst} "
            f"(bound {bound[worst]:.1e}; {bad.size} of {positions} rows, first {int(bad[0])}) against "
            f"the table of {what}")


def check_rope(path: Path, theta: float, head_dim: int, positions: int) -> list[str]:
    """The RoPE tables of the ONNX file at ``path`` (every row; external data read for these two tensors only)
    against ``rope_expected(theta, head_dim, positions)``; one failure line per table that is missing, of another
    shape or type, or off by more than ``ROPE_BOUND`` at any row.  A full-width table ([positions, head_dim], the
    halves repeated) is compared with the repeated expected table."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    inits = {t.name: t for t in load(path).graph.initializer}
    want = dict(zip(ROPE_TABLES, rope_expected(theta, head_dim, positions)))
    fails: list[str] = []
    what = f"rope_theta {theta:g}, head_dim {head_dim}, {positions} positions"
    for name, ref in want.items():
        t = inits.get(name)
        if t is None:
            fails.append(f"tensor check: {path.name} has no RoPE table {name} (expected from {what})")
            continue
        qtype = {onnx.TensorProto.FLOAT: "F32", onnx.TensorProto.FLOAT16: "F16"}.get(t.data_type)
        if qtype is None:
            fails.append(f"tensor check: RoPE table {name} has data type "
                         f"{onnx.TensorProto.DataType.Name(t.data_type)}, expected float32 or float16")
            continue
        try:
            if uses_external_data(t):  # on a copy: ``load``'s graph is shared by every check of this file
                t = onnx.TensorProto.FromString(t.SerializeToString())
                load_external_data_for_tensor(t, str(path.parent))
            got = np.asarray(numpy_helper.to_array(t), dtype=np.float64)
        except Exception as exc:  # a truncated or missing data file
            raise BundleError(f"{path}: cannot read {name} ({exc}); re-export the bundle") from None
        fail = compare_rope(name, got, qtype, ref, what)
        if fail:
            fails.append(fail)
    return fails
