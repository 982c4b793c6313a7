"""The files an export copies from the checkpoint (tokenizer.json, tokenizer_config.json, generation_config.json,
the chat template) must still equal the checkpoint's at verification: engines and apps read them, and the parity
check tokenizes with the bundle's own copy (a new-user trial: a tokenizer.json without its first merge, and a
generation_config.json with another eos and temperature, passed ``edgekit verify``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import exported

from edgekit.bundle import read_manifest, write_manifest
from edgekit.checkpoint import open_checkpoint
from edgekit.tensorcheck import copied_file_failures

SOURCE = "builtin:lfm2-tiny"


def _drop_first_merge(text: str) -> str:
    tok = json.loads(text)
    del tok["model"]["merges"][0]
    return json.dumps(tok)


def _edit_generation(text: str) -> str:
    cfg = json.loads(text)
    cfg.update(eos_token_id=[2, 7], temperature=1.7)
    return json.dumps(cfg)


def test_correct_bundle_copies_match(export_cache):
    bundle = exported(export_cache, SOURCE, "gguf", "q8_0", verify=False)
    checkpoint = open_checkpoint(SOURCE)
    assert {p.name for p in checkpoint.bundle_files} >= {"tokenizer.json", "generation_config.json"}
    assert copied_file_failures(bundle, checkpoint) == ()


def _edited_bundle(export_cache, tmp_path, name: str, edit) -> Path:
    """A copy of a correct bundle with ``name`` edited (or, with ``edit`` None, deleted), re-hashed: only the
    content checks can notice."""
    bundle = tmp_path / "b"
    shutil.copytree(exported(export_cache, SOURCE, "gguf", "q8_0", verify=False), bundle)
    path = bundle / name
    if edit is None:
        path.unlink()
    else:
        path.write_text(edit(path.read_text()))
    manifest = read_manifest(bundle)
    manifest["files"].pop(name, None) if edit is None else None
    write_manifest(bundle, manifest)
    return bundle


def _says(name: str, edit) -> str:
    return f"the bundle has no {name}" if edit is None else f"{name} in the bundle differs from the checkpoint's"


def test_edited_tokenizer_is_refused_by_verify(export_cache, tmp_path):
    """The trial's case end to end (``edgekit verify``'s path)."""
    from edgekit.export import verify_bundle

    bundle = _edited_bundle(export_cache, tmp_path, "tokenizer.json", _drop_first_merge)
    report = verify_bundle(bundle, progress=lambda _m: None)
    assert not report.passed
    assert any(f.startswith("tensor check: ") and _says("tokenizer.json", _drop_first_merge) in f
               for f in report.failures), report.failures


@pytest.mark.parametrize("name,edit", [
    ("generation_config.json", _edit_generation),
    ("chat_template.jinja", lambda t: t.replace("assistant", "user")),
    ("tokenizer_config.json", None),  # deleted
])
def test_edited_copy_is_refused(export_cache, tmp_path, name, edit):
    bundle = _edited_bundle(export_cache, tmp_path, name, edit)
    fails = copied_file_failures(bundle, open_checkpoint(SOURCE))
    assert len(fails) == 1 and fails[0].startswith("tensor check: ") and _says(name, edit) in fails[0], fails


def test_file_the_checkpoint_lacks_is_refused(export_cache, tmp_path):
    """A chat_template.jinja added to the bundle of a checkpoint without one: apps would read it (a new-user
    trial)."""
    src = open_checkpoint(SOURCE).path
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in src.iterdir():
        if f.name != "chat_template.jinja":
            (ckpt / f.name).symlink_to(f)
    bundle = exported(export_cache, SOURCE, "gguf", "q8_0", verify=False)
    fails = copied_file_failures(bundle, open_checkpoint(str(ckpt)))
    assert len(fails) == 1 and "the bundle has a chat_template.jinja that the checkpoint" in fails[0], fails


# the manifest's model section: what the runtimes read (eos ids, context, template, config)
@pytest.mark.parametrize("edit,says", [
    (lambda m: m.update(eos_ids=[2, 12, 203]), ".model.eos_ids is [2, 12, 203], expected [2]"),
    (lambda m: m.update(chat_template="User: {{ messages }}"), ".model.chat_template is 'User: {{ messages }}'"),
    (lambda m: m["config"].update(max_position_embeddings=600), ".model.config.max_position_embeddings is 600"),
    (lambda m: m.update(context_length=8192), ".model.context_length is 8192, expected 4096"),
])
def test_edited_manifest_model_is_refused(export_cache, edit, says):
    from edgekit.tensorcheck import manifest_failures

    bundle = exported(export_cache, SOURCE, "gguf", "q8_0", verify=False)
    manifest = read_manifest(bundle)
    checkpoint = open_checkpoint(SOURCE)
    assert manifest_failures(manifest, checkpoint) == ()
    edit(manifest["model"])
    fails = manifest_failures(manifest, checkpoint)
    assert len(fails) == 1 and fails[0].startswith("tensor check: edgekit.json: ") and says in fails[0], fails


def test_edited_eos_ids_are_refused_by_verify(export_cache, tmp_path):
    """The trial's case end to end: an eos id added to the re-hashed manifest stopped generation early."""
    from edgekit.export import verify_bundle

    bundle = tmp_path / "b"
    shutil.copytree(exported(export_cache, SOURCE, "gguf", "q8_0", verify=False), bundle)
    manifest = read_manifest(bundle)
    manifest["model"]["eos_ids"] = [2, 12, 203]
    write_manifest(bundle, manifest)
    report = verify_bundle(bundle, progress=lambda _m: None)
    assert not report.passed and any(".model.eos_ids is [2, 12, 203]" in f for f in report.failures), report.failures
