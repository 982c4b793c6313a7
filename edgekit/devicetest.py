"""``edgekit device-test``: ship the bundle and ``device_tests/`` to a device and run pytest there.

The bundle must carry golden outputs (``golden.json``); they are written here when the host has the export
extra, otherwise the user is told to run ``edgekit golden`` where the model was exported.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .devices import Device, requirements_for
from .errors import BundleError, DeviceError, MissingDependencyError, RuntimeMissingError
from .golden import GOLDEN

RESULT_PREFIX = "EDGEKIT_DEVICE_RESULT "  # printed by device_tests/conftest.py


@dataclass(frozen=True)
class DeviceTestOutcome:
    device: str
    returncode: int
    output: str
    results: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    @property
    def summary(self) -> str:
        lines = [self.output.rstrip()]
        m = self.results.get("metrics")
        if m:
            lines.append(
                f"{self.device} ({self.results.get('machine')}): top-1 {m['top1']:.4f}, mean KL {m['mean_kl']:.2e}, "
                f"max |Δlogit| {m['max_abs_logit']:.2e}, greedy {m['greedy_prefix']}/{m['greedy_tokens']}, "
                f"agreement with the host engine {m['host_top1']:.4f}"
            )
        lines.append(f"device tests {'PASSED' if self.passed else 'FAILED'} on {self.device}")
        return "\n".join(lines)


def tests_dir() -> Path:
    """device_tests/: installed as ``edgekit.device_tests``; in a source checkout, beside the package."""
    try:
        return Path(importlib.import_module("edgekit.device_tests").__path__[0])
    except ImportError:
        here = Path(__file__).resolve().parent.parent / "device_tests"
        if here.is_dir():
            return here
        raise BundleError("device_tests/ is not installed with this edgekit") from None


def ensure_golden(bundle: Path, progress: Callable[[str], None]) -> None:
    if (bundle / GOLDEN).is_file():
        return
    from .golden import write_golden

    try:
        write_golden(bundle, progress=progress)
    except MissingDependencyError as exc:
        raise BundleError(
            f"{bundle} has no golden outputs and this host cannot compute them ({exc}); on the export host run: "
            f"edgekit golden {bundle}"
        ) from None


def parse_results(output: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                return {}
    return {}


def run_device_tests(
    bundle: str | Path,
    device: Device,
    progress: Callable[[str], None] = print,
    extra_args: list[str] | None = None,
    timeout: float | None = None,
) -> DeviceTestOutcome:
    bundle = Path(bundle)
    ensure_golden(bundle, progress)
    device.check()
    progress(f"staging {bundle} and device_tests/ on {device.name}")
    remote_bundle = device.stage_bundle(bundle)
    remote_tests = device.stage_dir(tests_dir(), "device_tests")
    argv = device.python_command(
        "pytest", ["-q", "-rfE", remote_tests, "--bundle", remote_bundle, *(extra_args or [])], cwd=remote_tests
    )
    progress(f"running device_tests on {device.name}")
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{device.name}: device tests did not finish within {timeout:.0f} s") from None
    out = done.stdout.decode(errors="replace")
    err = done.stderr.decode(errors="replace")
    if "No module named pytest" in err:
        raise RuntimeMissingError(
            f"{device.name} has no pytest; install it there with: {device.install_hint(['pytest'])}"
        )
    if done.returncode == 255 and not out:
        from .devices.ssh import SshDevice, explain_ssh_failure

        if isinstance(device, SshDevice):
            raise DeviceError(explain_ssh_failure(device.target, err))
    if done.returncode in (2, 3, 4) and not parse_results(out) and "ModuleNotFoundError" in out + err:
        reqs = requirements_for(_extra_of(bundle))
        raise RuntimeMissingError(
            f"{device.name} cannot import the bundle's engine:\n{(out + err).strip()[-1500:]}\n"
            f"install it there with: {device.install_hint(reqs)}"
        )
    output = out + (("\n" + err.strip()) if done.returncode not in (0, 1) and err.strip() else "")
    return DeviceTestOutcome(device=device.name, returncode=done.returncode, output=output, results=parse_results(out))


def _extra_of(bundle: Path) -> str:
    from .bundle import read_manifest
    from .runtimes.engines import ENGINES, Engine

    try:
        return ENGINES[Engine(read_manifest(bundle).get("engine"))].extra
    except ValueError:
        return "all"
