"""Bundles appear only when complete: refused, failed, interrupted or disk-full exports leave nothing."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.bundle import MANIFEST, check_files, read_manifest, staging, write_manifest
from edgekit.errors import BundleError, OutputExistsError, WriteError
from edgekit.export import export, make_plan


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def skeleton(d: Path, artifact: str = "model.gguf", data: bytes = b"x") -> dict:
    """The smallest manifest the schema accepts, for a bundle whose one file is ``artifact``."""
    if not (d / artifact).exists():
        (d / artifact).write_bytes(data)
    return {
        "family": "lfm2", "kind": "language", "format": "gguf", "engine": "llama.cpp",
        "plan": {"quant": {"name": "f16"}}, "source": {"path": "src", "sha256": "0" * 64},
        "artifact": {"file": artifact}, "model": {"vocab_size": 16, "eos_ids": [1]},
    }


def test_staging_commits_on_success(tmp_path):
    with staging(tmp_path / "out") as d:
        (d / "a.bin").write_bytes(b"x")
        write_manifest(d, skeleton(d, "a.bin"))
    assert leftovers(tmp_path) == ["out"]
    m = read_manifest(tmp_path / "out")
    assert m["files"]["a.bin"]["size"] == 1
    check_files(tmp_path / "out", m, hashes=True)


def test_staging_removes_everything_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with staging(tmp_path / "out") as d:
            (d / "a.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_output_written_by_another_export_meanwhile_is_not_replaced(tmp_path):
    """Two exports to one path: the one finishing second is refused unless forced (found by a new-user trial)."""
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="appeared while this export ran"):
        with staging(out) as d:
            (d / "a.bin").write_bytes(b"second")
            write_manifest(d, skeleton(d, "a.bin"))
            with staging(out) as first:  # the other export finishes first
                (first / "a.bin").write_bytes(b"first!")
                write_manifest(first, skeleton(first, "a.bin"))
    assert leftovers(tmp_path) == ["out"]
    assert (out / "a.bin").read_bytes() == b"first!"
    with staging(out, force=True) as d:  # forced: the later one replaces it
        (d / "a.bin").write_bytes(b"forced")
        write_manifest(d, skeleton(d, "a.bin"))
    assert (out / "a.bin").read_bytes() == b"forced" and leftovers(tmp_path) == ["out"]


def test_output_inside_another_bundle_is_refused(tmp_path):
    with staging(tmp_path / "out") as d:
        write_manifest(d, skeleton(d, "a.bin"))
    with pytest.raises(OutputExistsError, match="is inside the bundle"):
        with staging(tmp_path / "out" / "nested"):
            pytest.fail("must not start")
    assert leftovers(tmp_path / "out") == ["a.bin", MANIFEST]


def test_unwritable_output_is_not_blamed_on_free_space(tmp_path):
    with pytest.raises(WriteError, match="exists and is writable") as err:
        export(make_plan("builtin:lfm2-tiny", "gguf", "f32"), Path("/proc/edgekit-out"), progress=lambda _m: None)
    assert "MB free" not in str(err.value)


def test_existing_output_is_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        with staging(out):
            pytest.fail("must not start")
    assert (out / "keep.txt").exists()
    with pytest.raises(OutputExistsError, match="not an edgekit bundle"):  # --force never deletes user data
        with staging(out, force=True):
            pytest.fail("must not start")
    assert (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    with staging(out, force=True) as d:  # an empty directory may be replaced
        write_manifest(d, skeleton(d))
    with staging(out, force=True) as d:  # and so may an earlier bundle
        write_manifest(d, skeleton(d))
    assert leftovers(out) == [MANIFEST, "model.gguf"]


def test_damaged_bundle_is_reported(tmp_path):
    with staging(tmp_path / "out") as d:
        (d / "model.gguf").write_bytes(b"12345")
        write_manifest(d, skeleton(d))
    (tmp_path / "out" / "model.gguf").write_bytes(b"12")
    with pytest.raises(BundleError, match="damaged"):
        check_files(tmp_path / "out", read_manifest(tmp_path / "out"))
    with pytest.raises(BundleError, match="not a finished edgekit bundle"):
        read_manifest(tmp_path)


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    from edgekit.exporters.gguf import writer

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "requantize", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(make_plan("builtin:lfm2-tiny", "gguf", "q4_k_m"), tmp_path / "out", progress=lambda _m: None)
    assert leftovers(tmp_path) == []


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MB tmpfs: a real ENOSPC. Needs root (CI runs as root); skipped otherwise."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_export_leaves_nothing(small_fs):
    with pytest.raises(WriteError, match="MB free there"):
        export(make_plan("builtin:lfm2-tiny", "gguf", "f32"), small_fs / "out", progress=lambda _m: None)
    assert leftovers(small_fs) == []
    assert shutil.disk_usage(small_fs).used < 1 << 20
