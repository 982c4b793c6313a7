"""Mixed precision for ExecuTorch 8da4w (``edgekit.mixed``): the types a linear layer may take, their stored
bytes, the scan's quantise/dequantise callback and the plan for an LFM2 export.

Types (names as the manifest records them): ``int4_g256`` ... ``int4_g32`` (XNNPACK's blockwise int4 GEMM group
sizes), ``int4_channel`` (only where ``--group-size 0`` makes it the default) and ``int8_channel`` (8da8w's
weights).  Stored bytes are what XNNPACK keeps for the delegate: the packed weights (bits / 8 each) plus the
scales — bf16 for a blockwise scale (XNNPACK's serialiser casts per-group scales to bf16), float32 for a
per-channel one; the weights are symmetric (no zero points).

The scan's ``fake`` quantises one weight with torchao's own config on a single ``nn.Linear`` and reads the
dequantised weight back (``readback.linear``, which is also the tensor check's read-back): weight-only.  The
dynamic per-token int8 activation quantisation is the same whatever the weight type, so the scan leaves it out;
it sees the weights with torchao's float32 scales, not XNNPACK's bf16 copy of the group scales (a far smaller
error than any step between the types).

The tied LM head stays out of the scan: it is int8 per channel (``--head-bits``) and its table serves the
embedding's gather too, so its type is fixed by the sharing, not by a byte trade.

Imports only the standard library at import time (options are checked at plan time without torch).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from . import GROUP_SIZES

INT8 = "int8_channel"
INT4_CHANNEL = "int4_channel"
SCALE_BYTES_GROUP = 2  # bf16 (XNNPACK's blockwise scales)
SCALE_BYTES_CHANNEL = 4  # float32
CANDIDATES: tuple[str, ...] = tuple(f"int4_g{g}" for g in sorted(GROUP_SIZES, reverse=True)) + (INT8,)


def type_name(bits: int, group_size: int | None) -> str:
    return f"int{bits}_g{group_size}" if group_size else f"int{bits}_channel"


def parse_type(name: str) -> tuple[int, int | None]:
    """``"int4_g64"`` -> (4, 64); ``"int8_channel"`` -> (8, None)."""
    m = re.fullmatch(r"int(4|8)_(?:g(\d+)|channel)", name)
    if m is None:
        raise ValueError(f"not an ExecuTorch mixed-precision type: {name!r}")
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def linear_quant(name: str, algorithm: str) -> Any:
    """The ``quant.LinearQuant`` of a type name (imports torch)."""
    from .quant import LinearQuant

    bits, group = parse_type(name)
    return LinearQuant(bits, group, algorithm)


def fits(shape: Sequence[int], name: str) -> bool:
    """Whether a [out, in] weight can take the type (a group must divide the input width)."""
    _, group = parse_type(name)
    return group is None or shape[1] % group == 0


def nbytes(shape: Sequence[int], name: str) -> int:
    """Stored bytes of a [out, in] weight at the type (module docstring)."""
    bits, group = parse_type(name)
    out, d_in = int(shape[0]), int(shape[1])
    scales = out * (d_in // group) * SCALE_BYTES_GROUP if group else out * SCALE_BYTES_CHANNEL
    return out * d_in * bits // 8 + scales


def candidates(shapes: Mapping[str, Sequence[int]], default: str) -> tuple[list[Any], dict[str, str]]:
    """``edgekit.mixed.Candidate`` per weight (checkpoint name -> [out, in]) and the default type of each.  A
    weight the default group does not divide stays float32 in the export (``quant.quantize_linears``), so it is
    no candidate."""
    from edgekit.mixed import Candidate

    out, defaults = [], {}
    for name, shape in shapes.items():
        if not fits(shape, default):
            continue
        kinds = [k for k in CANDIDATES if fits(shape, k)]
        if default not in kinds:
            kinds.append(default)
        sizes = dict(sorted(((k, nbytes(shape, k)) for k in kinds), key=lambda kv: kv[1]))
        out.append(Candidate(name, int(shape[0]) * int(shape[1]), sizes))
        defaults[name] = default
    return out, defaults


def fake_quant(weight: Any, name: str, algorithm: str) -> Any:
    """``weight`` (float32 numpy [out, in]) quantised at the type by torchao and dequantised (float32 numpy)."""
    import numpy as np

    from . import readback

    got = readback.linear("w", "w", weight, linear_quant(name, algorithm), "w")
    return np.asarray(got.values, dtype=np.float32)


def plan(job: Any, linears: Sequence[str], default: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The scan over ``linears`` (checkpoint names of [out, in] weights of ``job.reference``) and the selection
    under the options' byte budget (default: every linear at ``default``, the plain export's ``LinearQuant``).
    Returns (checkpoint name -> ``LinearQuant`` where it differs from ``default``, the manifest's
    ``mixed_precision`` entry, its ``calibration`` entry)."""
    from edgekit import mixed as mixed_mod

    base = type_name(default.weight_bits, default.group_size)
    cands, defaults = candidates({n: tuple(job.weights[n].shape) for n in linears}, base)

    def fake(_name: str, w: Any, t: str) -> Any:
        return fake_quant(w, t, default.algorithm)

    result = mixed_mod.plan_job(job, cands, defaults, fake, f"torchao quantise/dequantise per linear "
                                f"({default.algorithm}); quantize_linears overrides")
    summary = {**result.summary, "scale_dtypes": {"group": "bf16", "channel": "float32"}}
    overrides = {n: linear_quant(t, default.algorithm) for n, t in result.types.items() if t != base}
    return overrides, summary, result.calibration
