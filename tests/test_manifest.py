"""The manifest schema, artifact digests, stale staging directories and the CLI's one-line refusals
(issue 17 kinds 2, 3, 4, 7), on small bundles the tests write themselves: no export, no engine."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.bundle import MANIFEST, check_files, read_manifest, remove_stale_staging, staging, write_manifest
from edgekit.cli import main
from edgekit.errors import BundleError


def manifest_for(d: Path, artifact: str = "model.gguf") -> dict:
    (d / artifact).write_bytes(bytes(range(256)) * 64)
    (d / "tokenizer.json").write_text("{}")
    return {
        "family": "lfm2", "kind": "language", "format": "gguf", "engine": "llama.cpp", "edgekit_version": "0",
        "plan": {"quant": {"name": "q8_0"}, "options": {}}, "source": {"path": "src", "sha256": "0" * 64},
        "adapter": None, "artifact": {"file": artifact, "tensor_types": {"Q8_0": 1}},
        "model": {"vocab_size": 64, "context_length": 128, "bos_id": 1, "eos_ids": [2], "pad_id": 0,
                  "add_bos": True, "chat_template": None},
        "verification": None,
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "b"
    root.mkdir()
    write_manifest(root, manifest_for(root))
    return root


def damage(root: Path, edit) -> None:
    data = json.loads((root / MANIFEST).read_text())
    edit(data)
    (root / MANIFEST).write_text(json.dumps(data))


def _set(path: str, value):
    def edit(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        m[last] = value
    return edit


def _del(path: str):
    def edit(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        del m[last]
    return edit


DAMAGE = {
    "eos out of range": (_set("model.eos_ids", [99999]), r"model\.eos_ids\[0\] = 99999 is out of range"),
    "eos as string": (_set("model.eos_ids", ["2"]), r"model\.eos_ids\[0\] must be int"),
    "eos not a list": (_set("model.eos_ids", 2), r"model\.eos_ids must be list"),
    "bos negative": (_set("model.bos_id", -1), r"model\.bos_id = -1 is out of range"),
    "vocab bool": (_set("model.vocab_size", True), r"model\.vocab_size must be int"),
    "no model": (_del("model"), r"model is missing"),
    "no plan quant": (_del("plan.quant"), r"plan\.quant is missing"),
    "quant name int": (_set("plan.quant.name", 4), r"plan\.quant\.name must be str"),
    "unknown engine": (_set("engine", "tensorrt"), r"engine = 'tensorrt' does not run format gguf"),
    "unknown format": (_set("format", "tflite"), r"format = 'tflite' is unknown"),
    "unknown kind": (_set("kind", "vision"), r"kind = 'vision' is unknown"),
    "unknown family": (_set("family", "lfmX"), r"family = 'lfmX' is unknown \(known: lfm2, bitnet"),
    "family of another kind": (_set("kind", "solver"), r"kind = 'solver', but family lfm2 is a language model"),
    "files a list": (_set("files", []), r"files must be dict"),
    "size negative": (lambda m: m["files"]["model.gguf"].update(size=-1), r"size = -1 is out of range"),
    "size string": (lambda m: m["files"]["model.gguf"].update(size="16384"), r"size must be int"),
    "digest short": (lambda m: m["files"]["model.gguf"].update(sha256="abc"), r"not 64 lowercase hex"),
    "file escapes": (lambda m: m["files"].update({"../x": m["files"]["model.gguf"]}), r"not a file inside"),
    "artifact not listed": (_set("artifact.file", "other.gguf"), r"artifact\.file = 'other.gguf' is not among"),
    "artifact absolute": (_set("artifact.file", "/etc/passwd"), r"not a file inside the bundle"),
    "verification str": (_set("verification", "PASS"), r"verification must be dict"),
    "passed missing": (_set("verification", {"metrics": {}}), r"verification\.passed is missing"),
    "adapter path int": (_set("adapter", {"path": 1, "sha256": "x"}), r"adapter\.path must be str"),
    "source list": (_set("source", ["a"]), r"source must be dict"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_manifest_is_one_line_bundle_error(bundle, case):
    edit, pattern = DAMAGE[case]
    damage(bundle, edit)
    with pytest.raises(BundleError, match=pattern) as err:
        read_manifest(bundle)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["[]", "null", '"x"', "{", "\xff", "[" * 100000])
def test_manifest_that_is_not_a_json_object_is_refused(bundle, text):
    (bundle / MANIFEST).write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff" else b"\xff{")
    with pytest.raises(BundleError):
        read_manifest(bundle)


def test_manifest_of_a_real_export_passes_its_schema(bundle):
    m = read_manifest(bundle)
    check_files(bundle, m, hashes=True)


def test_info_on_damaged_manifest_is_one_line_exit_2(bundle, capsys):
    damage(bundle, _set("model.eos_ids", [99999]))
    assert main(["info", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgekit: error:") and "eos_ids" in err


def test_info_on_damaged_metrics_is_one_line_exit_2(bundle, capsys):
    damage(bundle, _set("verification", {"passed": True, "metrics": {"top1": "x"}}))
    assert main(["info", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "verification.metrics" in err


def flip_byte(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_same_size_byte_flip_is_refused_before_the_engine_maps_the_file(bundle, capsys):
    import edgekit

    flip_byte(bundle / "model.gguf")
    with pytest.raises(BundleError, match="sha256 differs"):
        edgekit.load(bundle)
    assert main(["info", str(bundle)]) == 2
    assert "sha256 differs" in capsys.readouterr().err
    assert main(["info", str(bundle), "--no-check"]) == 0  # sizes only: the user asked to skip the digest
    assert main(["run", str(bundle), "--prompt", "x"]) == 2
    assert "sha256 differs" in capsys.readouterr().err


def test_verify_refuses_damaged_files_and_keeps_the_recorded_digests(bundle, capsys):
    before = (bundle / MANIFEST).read_bytes()
    flip_byte(bundle / "model.gguf")
    assert main(["verify", str(bundle)]) == 2
    assert "sha256 differs" in capsys.readouterr().err
    assert (bundle / MANIFEST).read_bytes() == before


def test_stale_staging_of_a_killed_export_is_removed_on_the_next_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited: its staging directories are stale
    stale = tmp_path / f".out.partial-{pid}-abc123"
    old = tmp_path / f".other.old-{pid}-x_y"
    live = tmp_path / f".out.partial-{os.getpid()}-abc123"  # this process is alive: kept
    unrelated = tmp_path / ".out.partial-notapid"
    for d in (stale, old, live, unrelated):
        d.mkdir()
        (d / "model.gguf").write_bytes(b"x")
    with staging(tmp_path / "out") as d:
        assert d.name.startswith(f".out.partial-{os.getpid()}-")
        write_manifest(d, manifest_for(d))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name, "out"])
    assert remove_stale_staging(tmp_path) == []


def test_export_killed_with_sigkill_leaves_a_partial_that_the_next_export_removes(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from edgekit.bundle import staging\n"
        "with staging(Path(sys.argv[1])) as d:\n"
        "    (d / 'model.gguf').write_bytes(b'x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")])
    assert proc.returncode == -9
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == [".out.partial"]
    with staging(tmp_path / "out2") as d:
        write_manifest(d, manifest_for(d))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out2"]


def test_multi_line_error_is_one_line_unless_verbose(bundle, capsys, monkeypatch):
    import edgekit.cli as cli

    def boom(_args):
        raise BundleError("first line\nsecond line\nthird line")

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert main(["info", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "first line" in err and "--verbose" in err
    for argv in (["info", str(bundle), "--verbose"], ["--verbose", "info", str(bundle)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "second line" in err and "Traceback" in err


def test_a_moved_checkpoint_names_source(bundle, tmp_path):
    """The checkpoint a bundle records is gone (moved, or recorded relative to another directory): the error says
    how to point verify at it."""
    from edgekit.errors import CheckpointError
    from edgekit.export import recorded_reference

    manifest = read_manifest(bundle)
    manifest["source"]["path"] = str(tmp_path / "moved-away")
    with pytest.raises(CheckpointError, match="moved-away: not a directory .* pass --source DIR where it is now"):
        recorded_reference(manifest, lambda _m: None)
