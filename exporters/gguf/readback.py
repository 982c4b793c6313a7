"""Reading a GGUF file's weights back for the tensor check and the fidelity reference (``edgekit.tensorcheck``).

Every tensor is dequantised with gguf-py (``gguf.quants.dequantize`` knows every GGML type, whatever quantiser
wrote it: gguf-py's own, llama.cpp's ``llama_model_quantize`` or a calibrated one).  Per type this module records
the quantisation block along a row, the number of levels of one value, and what llama.cpp's CPU backend does to
the other operand of a matmul with it (the type's ``vec_dot_type`` in ggml-cpu: Q8_0 activations for the
32-blocks, Q8_K (blocks of 256, float32 scale) for K-quants and the ternary types, F16/BF16 rounding for those
float types, nothing for F32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgekit.errors import BundleError
from edgekit.tensorcheck import ActQuant, ReadTensor

Q8_0_ACT = ActQuant("sym_block", 32, scale_f16=True)
Q8_K_ACT = ActQuant("sym_block", 256)

# GGML type name -> (values per block along a row for the error check, levels per value, activation quantisation)
TYPES: Mapping[str, tuple[int, int, ActQuant]] = {
    "F32": (0, 0, ActQuant()),
    "F16": (0, 0, ActQuant("f16")),
    "BF16": (0, 0, ActQuant("bf16")),
    "Q8_0": (32, 255, Q8_0_ACT),
    "Q4_0": (32, 16, Q8_0_ACT),
    "Q4_1": (32, 16, Q8_0_ACT),
    "Q5_0": (32, 32, Q8_0_ACT),
    "Q5_1": (32, 32, Q8_0_ACT),
    # K-quants: super-blocks of 256 with a scale (and min) per sub-block of 32 (Q6_K: 16)
    "Q4_K": (32, 16, Q8_K_ACT),
    "Q5_K": (32, 32, Q8_K_ACT),
    "Q6_K": (16, 64, Q8_K_ACT),
    "Q3_K": (16, 8, Q8_K_ACT),
    "Q2_K": (16, 4, Q8_K_ACT),
    "TQ1_0": (256, 3, Q8_K_ACT),
    "TQ2_0": (256, 3, Q8_K_ACT),
}


def read(
    path: Path,
    source_of: Callable[[str], tuple[str, Callable[[np.ndarray], np.ndarray]] | None],
    modules_of: Callable[[str, str], tuple[str, ...]],
) -> list[ReadTensor]:
    """Every tensor of the GGUF at ``path``, dequantised to float32.  ``source_of(gguf_name)`` gives the
    checkpoint name it came from and the function that turns the file's array back into that tensor's layout
    (None: the file holds a tensor the family does not know, reported by the check as foreign);
    ``modules_of(gguf_name, source)`` the reference's linear modules that multiply by it.  (The family's pair file
    marks the tensors whose codes GPTQ wrote: ``lfm2.gptq_targets``.)

    Raises ``BundleError`` when the file cannot be read."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: not a readable GGUF file ({exc}); re-export the bundle") from None
    out: list[ReadTensor] = []
    for t in reader.tensors:
        qtype = t.tensor_type.name
        block, levels, act = TYPES.get(qtype, (0, 0, ActQuant()))
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        mapped = source_of(t.name)
        if mapped is None:
            out.append(ReadTensor(t.name, f"<unknown:{t.name}>", values, qtype, block, levels))
            continue
        source, back = mapped
        out.append(ReadTensor(t.name, source, back(values), qtype, block, levels, None,
                              modules_of(t.name, source), act))
    return out


def check_metadata(path: Path, arch: str, write: Callable[[Any], None]) -> list[str]:
    """The metadata check: ``write`` (a family's metadata writer) is run into an unopened ``gguf.GGUFWriter`` and
    every key it sets must be in the file at ``path`` with the same value (float32 keys compared as float32, so a
    value the writer rounded passes).  One failure line per key that differs or is missing."""
    import tempfile

    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        w = gguf.GGUFWriter(str(Path(tmp) / "unused.gguf"), arch)
        write(w)
        expected = {k: v for shard in w.kv_data for k, v in shard.items()}
    fields = gguf.GGUFReader(str(path)).fields
    fails: list[str] = []
    # keys the exporter does not write but llama.cpp reads (add_eos_token, eot/eog ids, a chat template, ...):
    # they change how a llama.cpp user's prompt is tokenised or where generation stops, so one the checkpoint does
    # not give is refused (a new-user trial: add_eos_token=true and eot_token_id=18 passed)
    for key in sorted(fields):
        if key.startswith(("tokenizer.", f"{arch}.")) and key not in expected:
            fails.append(f"metadata check: {path.name} holds {key} = {_short(fields[key].contents())}, which the "
                         "checkpoint does not give")
    for key, want in expected.items():
        if key == "general.name":  # the checkpoint directory's name: a bundle may be verified against a copy
            continue
        field = fields.get(key)
        if field is None:
            fails.append(f"metadata check: {path.name} has no {key} (the checkpoint gives {_short(want.value)})")
            continue
        got = field.contents()
        if not _same(got, want.value, want.type, want.sub_type):
            fails.append(f"metadata check: {path.name} holds {key} = {_short(got)}, the checkpoint gives "
                         f"{_short(want.value)}{_first_difference(got, want.value)}")
    return fails


def _same(got: Any, want: Any, vtype: Any, sub_type: Any) -> bool:
    import gguf

    floats = (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64)
    if vtype in floats or (vtype == gguf.GGUFValueType.ARRAY and sub_type in floats):
        a, b = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
        return a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(want, (list, tuple, np.ndarray)):
        return list(got) == [x.decode() if isinstance(x, bytes) else x for x in list(want)]
    return got == (want.decode() if isinstance(want, bytes) else want)


def _first_difference(got: Any, want: Any) -> str:
    """`` (first difference at [i]: a vs b)`` for two lists, else empty."""
    if not isinstance(got, (list, tuple, np.ndarray)) or not isinstance(want, (list, tuple, np.ndarray)):
        return ""
    got, want = list(got), [x.decode() if isinstance(x, bytes) else x for x in list(want)]
    if len(got) != len(want):
        return f" ({len(got)} values, the checkpoint {len(want)})"
    def differs(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return bool(np.float32(a) != np.float32(b))
        return a != b

    i = next((k for k, (a, b) in enumerate(zip(got, want)) if differs(a, b)), None)
    return "" if i is None else f" (first difference at [{i}]: {got[i]!r} vs {want[i]!r})"


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 6:
        return f"[{', '.join(map(repr, list(value)[:3]))}, ... {len(value)} values]"
    return repr(value.tolist() if isinstance(value, np.ndarray) else value)
