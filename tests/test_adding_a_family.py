"""A throwaway family (``tests/toy_family``) goes through the recipe table, export, verification and ``load``
without any edit to a generic edgekit file — the README's "Adding a family", done."""

from __future__ import annotations

import json
import shutil

import pytest

from edgekit.builtin import ROOT as BUILTIN
from edgekit.errors import UnsupportedError


@pytest.fixture()
def toy(tmp_path):
    import toy_family
    from toy_family.reference import save_random

    toy_family.register()
    try:
        ckpt = tmp_path / "toy"
        ckpt.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(BUILTIN / "lfm2-tiny" / name, ckpt / name)
        cfg = json.loads((BUILTIN / "lfm2-tiny" / "config.json").read_text())
        save_random(ckpt, vocab=cfg["vocab_size"])
        yield ckpt
    finally:
        toy_family.unregister()


def test_toy_family_exports_verifies_and_runs(toy, tmp_path, capsys):
    import edgekit
    from edgekit.bundle import read_manifest
    from edgekit.cli import main
    from edgekit.export import export, make_plan
    from edgekit.runtimes import SamplingParams

    prep = make_plan(toy, "onnx")
    assert prep.plan.family.value == "toymlp" and prep.plan.quant.name == "fp32"
    out = export(prep, tmp_path / "bundle", progress=lambda _m: None)
    m = read_manifest(out)
    assert m["family"] == "toymlp" and m["verification"]["passed"], m["verification"]
    assert m["verification"]["metrics"]["top1"] == 1.0
    session = edgekit.load(out)
    try:
        gen = session.generate("def f(", SamplingParams(max_tokens=8, stop_at_eos=False))
        assert len(gen.tokens) == 8
    finally:
        session.close()
    with pytest.raises(UnsupportedError, match="toymlp cannot be exported to gguf; formats that work for toymlp: onnx"):
        make_plan(toy, "gguf")
    assert main(["formats"]) == 0
    assert "toymlp" in capsys.readouterr().out
