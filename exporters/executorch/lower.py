"""Eager LFM2 module -> ``.pte``: quantise, torch.export with a dynamic token dimension, lower to XNNPACK,
add the LLM runner's metadata methods, serialise (optionally with the LoRA weights in a separate ``.ptd``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import model as M
from .quant import LinearQuant, quantize_embedding, quantize_linears, share_embedding_with_head

LORA_DATA = "adapter"  # -> adapter.ptd
SHARED_DATA = "model"  # -> model.ptd: the tied embedding / LM head table, stored once


@dataclass(frozen=True)
class Lowered:
    files: tuple[str, ...]
    delegated_partitions: int
    non_delegated_ops: dict[str, int]
    seconds: dict[str, float]


def _delegation(program: Any) -> tuple[int, dict[str, int]]:
    """Number of XNNPACK calls and the ops left to the portable/optimized kernels (per op name)."""
    gm = program.exported_program().graph_module
    calls, rest = 0, {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            calls += 1
        elif name not in ("getitem",):
            rest[name] = rest.get(name, 0) + 1
    return calls, dict(sorted(rest.items()))


def lower(
    eager: M.Lfm2,
    out_dir: Path,
    artifact: str,
    linear: LinearQuant | None,
    embedding_bits: int | None,
    metadata: Mapping[str, Any],
    separate_lora: bool,
    share_embedding: bool,
    progress: Callable[[str], None],
) -> Lowered:
    # import here: executorch's kernels must be registered before export references them
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed.embedding_* for tracing)

    def tag(name: str) -> str | None:
        """The .ptd file a constant goes to (None: inside the .pte).  The shared table is tagged under both its
        uses (gather and LM head); the serialiser stores byte-identical data once."""
        if separate_lora and "lora_" in name:
            return LORA_DATA
        if share_embedding and ("embed_tokens" in name or "lm_head" in name):
            return SHARED_DATA
        return None

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    eager = eager.eval()
    with torch.no_grad():
        if embedding_bits is not None:
            quantize_embedding(eager, embedding_bits)
        if linear is not None:
            progress(f"quantising linear layers ({linear.describe()})")
            quantize_linears(eager, linear)
        if share_embedding:
            share_embedding_with_head(eager, linear)
    seconds["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    s = eager.shape
    tokens = torch.export.Dim("tokens", min=1, max=s.context - 1)
    progress("torch.export (dynamic token dimension)")
    with torch.no_grad(), torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        ep = torch.export.export(eager, M.example_inputs(), dynamic_shapes=({1: tokens}, {0: 1}), strict=True)
        ep = ep.run_decompositions({})  # unwraps torchao's tensor subclasses into dq/linear patterns
        if separate_lora or share_embedding:
            # tag the weights that go to a .ptd file; XNNPACK keeps the tag of the ones it takes
            unlifted = ep.module()
            delegate_external_constants_pass_unlifted(unlifted, lambda node: tag(f"{node.target} {node.name}"))
            ep = torch.export.export(unlifted, M.example_inputs(), dynamic_shapes=({1: tokens}, {0: 1}), strict=True)
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("lowering to XNNPACK")
    # one partitioner: its quantised-linear patterns and every float op it supports
    partitioners = [XnnpackPartitioner()]
    edge = to_edge_transform_and_lower(
        ep,
        partitioner=partitioners,
        compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
        constant_methods=dict(metadata),
    )
    calls, rest = _delegation(edge)
    seconds["lower"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("serialising")
    program = edge.to_executorch(
        ExecutorchBackendConfig(
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            external_constants=(lambda node: tag(node.name)) if separate_lora or share_embedding else False,
        )
    )
    files = [artifact]
    with open(out_dir / artifact, "wb") as f:
        program.write_to_file(f)
    if separate_lora or share_embedding:
        before = set(p.name for p in out_dir.iterdir())
        program.write_tensor_data_to_file(str(out_dir))
        files += sorted(set(p.name for p in out_dir.iterdir()) - before)
    seconds["serialize"] = time.perf_counter() - t
    return Lowered(files=tuple(files), delegated_partitions=calls, non_delegated_ops=rest, seconds=seconds)
