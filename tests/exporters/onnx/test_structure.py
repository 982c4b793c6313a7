"""The structure check compares an ONNX export's graph with the one the exporter builds for the checkpoint
(``exporters/onnx/structure.py``).  A new-user trial passed ``edgekit verify`` with graph edits that the
verification windows cannot see: a token remapped in front of the embedding (the token never occurs in the
held-out text), GroupQueryAttention reading RoPE tables re-sliced from position 600 on, and an RMSNorm turned
into a LayerNorm on a model whose widened bar hid it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import exported

from edgekit.bundle import read_manifest, write_manifest

SOURCE = "builtin:lfm2-tiny"


def _bundle(export_cache, tmp_path, quant: str) -> Path:
    bundle = tmp_path / "b"
    shutil.copytree(exported(export_cache, SOURCE, "onnx", quant, verify=False), bundle)
    return bundle


def _rewrite(bundle: Path, edit) -> None:
    import onnx

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    edit(model)
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, read_manifest(bundle))  # re-hashed: only the content checks can notice


def _failures(bundle: Path) -> list[str]:
    from edgekit.export import verify_bundle

    report = verify_bundle(bundle, progress=lambda _m: None)
    assert not report.passed
    return [f for f in report.failures if f.startswith("structure: ")]


def _remap_token(model) -> None:
    """input_ids == 7 -> 9 in front of the embedding."""
    from onnx import helper, numpy_helper

    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array(7, np.int64), "t7"),
                          numpy_helper.from_array(np.array(9, np.int64), "t9")])
    gather = next(n for n in g.node if n.name == "embed/Gather")
    gather.input[1] = "ids_remapped"
    g.node.insert(0, helper.make_node("Equal", ["input_ids", "t7"], ["is7"], name="remap/Equal"))
    g.node.insert(1, helper.make_node("Where", ["is7", "t9", "input_ids"], ["ids_remapped"], name="remap/Where"))


def _reslice_rope(model) -> None:
    """Every GroupQueryAttention reads cos/sin through an Identity (the tables themselves untouched)."""
    from onnx import helper

    g = model.graph
    for table in ("cos_cache", "sin_cache"):
        g.node.insert(0, helper.make_node("Identity", [table], [table + "/moved"], name=f"rope/{table}"))
    for n in g.node:
        if n.op_type == "GroupQueryAttention":
            n.input[7], n.input[8] = "cos_cache/moved", "sin_cache/moved"


def _layer_norm(model) -> None:
    next(n for n in model.graph.node if n.name == "final_norm").op_type = "SkipLayerNormalization"


def _mid_graph_cast(model) -> None:
    """int64 -> float16 -> int64 Casts on the mask arithmetic, named as the float16 converter names its boundary
    Casts (exact below 2048 positions, wrong beyond: a new-user trial)."""
    from onnx import TensorProto, helper

    g = model.graph
    gather = next(n for n in g.node if n.name == "mask/Gather")
    out = gather.output[0]
    gather.output[0] = out + "/raw"
    at = list(g.node).index(gather) + 1
    g.node.insert(at, helper.make_node("Cast", [out + "/raw"], [out + "/f16"], name="graph_input_cast90",
                                       to=TensorProto.FLOAT16))
    g.node.insert(at + 1, helper.make_node("Cast", [out + "/f16"], [out], name="graph_input_cast91",
                                           to=TensorProto.INT64))


def _keep_all_logits(model) -> None:
    """``logits_to_keep`` defaulting to 0 (every position): onnxruntime-genai sizes its buffer for one."""
    from onnx import numpy_helper

    t = next(t for t in model.graph.initializer if t.name == "logits_to_keep")
    t.CopyFrom(numpy_helper.from_array(np.array([0], np.int64), t.name))


def _head_bias(model) -> None:
    """A bias on the LM head's MatMulNBits (input 5, which onnxruntime applies): +2 nats on one token everywhere (a
    new-user trial: it passed under the widened KL bar; the read-back dequantises inputs 1-3 only)."""
    from onnx import helper, numpy_helper

    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("lm_head"))
    n = helper.get_attribute_value(next(a for a in node.attribute if a.name == "N"))
    bias = np.zeros(n, np.float32)
    bias[2] = 2.0
    model.graph.initializer.append(numpy_helper.from_array(bias, "head_bias"))
    while len(node.input) < 5:
        node.input.append("")
    node.input.append("head_bias")


@pytest.fixture(scope="module")
def lfm2_reference():
    from edgekit.checkpoint import open_checkpoint
    from edgekit.reference import load_reference

    return load_reference(open_checkpoint(SOURCE), None, None)


@pytest.mark.parametrize("quant", ["fp32", "int4", "fp16"])
def test_correct_export_matches_the_exporters_graph(export_cache, lfm2_reference, quant):
    """int4: the default's mixed precision (MatMulNBits of several bits and blocks) included."""
    from edgekit.checkpoint import open_checkpoint
    from edgekit.exporters.onnx import lfm2

    bundle = exported(export_cache, SOURCE, "onnx", quant, verify=False)
    assert lfm2.file_structure(bundle, read_manifest(bundle), open_checkpoint(SOURCE), lfm2_reference) == []


def test_remapped_token_is_refused_by_verify(export_cache, tmp_path):
    """The trial's case end to end (``edgekit verify``'s path)."""
    bundle = _bundle(export_cache, tmp_path, "int4")
    _rewrite(bundle, _remap_token)
    fails = _failures(bundle)
    assert any("node 'remap/Equal' (Equal) is not one the exporter writes" in f for f in fails), fails


@pytest.mark.parametrize("edit,says", [
    (_reslice_rope, "(GroupQueryAttention) reads"),
    (_layer_norm, "node 'final_norm' is SkipLayerNormalization, the exporter writes SkipSimplifiedLayerNormalization"),
    (_keep_all_logits, "structure: constant 'logits_to_keep' is [0], the exporter writes [1]"),
    (_head_bias, "(MatMulNBits) has inputs ['head_bias'] that the exporter does not write (at most 4)"),
    (_mid_graph_cast, "Cast 'graph_input_cast90' (['mask/Gather/out0/raw'] -> ['mask/Gather/out0/f16']) is not at "
                      "the graph's boundary"),
])
def test_graph_edit_is_refused(export_cache, tmp_path, lfm2_reference, edit, says):
    from edgekit.checkpoint import open_checkpoint
    from edgekit.exporters.onnx import lfm2

    bundle = _bundle(export_cache, tmp_path, "int4")
    _rewrite(bundle, edit)
    fails = lfm2.file_structure(bundle, read_manifest(bundle), open_checkpoint(SOURCE), lfm2_reference)
    assert any(says in f for f in fails), fails


# BitNet: the graph ``bitnet.build`` makes from the reference's ternary weights and activation mode (a4.8: its
# quantisers as graph ops), with the bundle's recorded ternary bits, block and accuracy level
BITNET = "builtin:bitnet-tiny"


def _bitnet(export_cache, quant: str, options: dict | None = None) -> tuple[Path, list[str]]:
    """A BitNet export (not verified) and its structure check against the reference verification builds."""
    from edgekit.export import export, make_plan
    from edgekit.exporters.onnx import bitnet
    from edgekit.reference import load_reference

    key = ("bitnet-structure", quant, tuple(sorted((options or {}).items())))
    prep = make_plan(BITNET, "onnx", quant, None, options)
    if key not in export_cache:
        export_cache[key] = export_cache["root"] / f"bitnet-{quant}-{len(export_cache)}"
        export(prep, export_cache[key], verify=False, progress=lambda _m: None)
    bundle = export_cache[key]
    reference = load_reference(prep.checkpoint, None, prep.plan.options)
    return bundle, bitnet.file_structure(bundle, read_manifest(bundle), prep.checkpoint, reference)


@pytest.mark.parametrize("quant, options", [("int2", None), ("int4", {"bitnet_activations": "a4.8"}),
                                            ("fp32", None)])
def test_correct_bitnet_export_matches_the_exporters_graph(export_cache, quant, options):
    assert _bitnet(export_cache, quant, options)[1] == []


def test_bitnet_graph_edit_is_refused(export_cache, tmp_path):
    from edgekit.checkpoint import open_checkpoint
    from edgekit.exporters.onnx import bitnet
    from edgekit.reference import load_reference

    bundle = tmp_path / "b"
    shutil.copytree(_bitnet(export_cache, "int2")[0], bundle)
    _rewrite(bundle, _remap_token)
    ckpt = open_checkpoint(BITNET)
    fails = bitnet.file_structure(bundle, read_manifest(bundle), ckpt, load_reference(ckpt, None, None))
    assert any("node 'remap/Equal' (Equal) is not one the exporter writes" in f for f in fails), fails


def test_bitnet_separate_adapters_pass_verification(tmp_path):
    """--lora-mode separate: the export verifies (raises ParityError otherwise), and the structure check allows
    the ``lora/`` branches."""
    from edgekit.export import export, make_plan
    from edgekit.exporters.onnx import bitnet
    from edgekit.reference import load_reference

    prep = make_plan(BITNET, "onnx", "int2", ["builtin:bitnet-tiny-lora"], {"lora_mode": "separate"})
    bundle = export(prep, tmp_path / "b", verify=True, progress=lambda _m: None)
    manifest = read_manifest(bundle)
    assert any(n.startswith("lora/") for n in _node_names(bundle))
    reference = load_reference(prep.checkpoint, None, prep.plan.options)
    assert bitnet.file_structure(bundle, manifest, prep.checkpoint, reference) == []
    # a fifth trial dropped every branch's lora_scale Mul (the adapter then ignores its run-time scale): refused
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    _rewrite(edited, _drop_lora_scale)
    fails = bitnet.file_structure(edited, read_manifest(edited), prep.checkpoint, reference)
    assert fails and all("has nodes" in f and "'scale': 'Mul'" in f for f in fails[:-1]), fails


def _drop_lora_scale(model) -> None:
    g = model.graph
    for node in [n for n in g.node if n.name.startswith("lora/") and n.name.endswith("/scale")]:
        prefix = node.name.rpartition("/")[0]
        b = next(n for n in g.node if n.name == prefix + "/B")
        b.input[0] = node.input[0]
        g.node.remove(node)


def _node_names(bundle: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(bundle / "model.onnx"), load_external_data=False).graph.node]
