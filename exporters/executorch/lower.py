"""An eager (already quantised) module -> ``.pte``: torch.export, lower to XNNPACK, add constant methods,
serialise — optionally moving tagged constants to ``.ptd`` data files (a separate LoRA adapter, a shared table)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch



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
    module: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    dynamic_shapes: Any,
    out_dir: Path,
    artifact: str,
    metadata: Mapping[str, Any],
    progress: Callable[[str], None],
    tag: Callable[[str], str | None] | None = None,
) -> Lowered:
    """Export ``module`` (eval mode, quantised already) to ``out_dir/artifact``.

    ``metadata``: constant methods (name -> value) for ExecuTorch's runners; ``tag(constant name)`` -> the
    ``.ptd`` file stem a constant goes to, or None for inside the ``.pte`` (XNNPACK keeps the tag of the weights
    it takes; the serialiser stores byte-identical tagged data once)."""
    # import here: executorch's kernels must be registered before export references them
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed.embedding_* for tracing)

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    progress("torch.export" + (" (dynamic shapes)" if dynamic_shapes else ""))
    with torch.no_grad(), torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        ep = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes, strict=True)
        ep = ep.run_decompositions({})  # unwraps torchao's tensor subclasses into dq/linear patterns
        if tag is not None:
            unlifted = ep.module()
            delegate_external_constants_pass_unlifted(unlifted, lambda node: tag(f"{node.target} {node.name}"))
            ep = torch.export.export(unlifted, example_inputs, dynamic_shapes=dynamic_shapes, strict=True)
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("lowering to XNNPACK")
    # one partitioner: its quantised-linear patterns and every float op it supports
    edge = to_edge_transform_and_lower(
        ep,
        partitioner=[XnnpackPartitioner()],
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
            external_constants=(lambda node: tag(node.name)) if tag is not None else False,
        )
    )
    files = [artifact]
    with open(out_dir / artifact, "wb") as f:
        program.write_to_file(f)
    if tag is not None:
        before = set(p.name for p in out_dir.iterdir())
        program.write_tensor_data_to_file(str(out_dir))
        files += sorted(set(p.name for p in out_dir.iterdir()) - before)
    seconds["serialize"] = time.perf_counter() - t
    return Lowered(files=tuple(files), delegated_partitions=calls, non_delegated_ops=rest, seconds=seconds)
