"""edgekit profile on this machine, against real llama.cpp: the method, the values, the renderings, the CLI.

No timing is asserted (these machines are shared and noisy); what is asserted is that every test ran the
requested work, the numbers are consistent with each other, and results survive interruptions and failures.
"""

from __future__ import annotations

import csv
import io
import json
import random
import statistics
import sys
from pathlib import Path

import pytest

from conftest import exported
from edgekit.errors import EdgekitError, UnsupportedError
from edgekit.profiling.values import PP, TG, BundleResult, Case, CaseResult, ProfileReport, ProfileSpec, Sample, parse_counts

SMALL = ProfileSpec(prompts=(32,), gens=(8,), threads=(1,), repetitions=2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bandwidth probe's cache goes to a temporary directory (local runner processes inherit the env)."""
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def q8(rand_lfm2: Path, export_cache: dict) -> Path:
    return exported(export_cache, str(rand_lfm2), "gguf", "q8_0", verify=False)


# -- values -----------------------------------------------------------------------------------------------
def test_spec_cases_follow_llama_bench_order() -> None:
    spec = ProfileSpec(prompts=(128, 512), gens=(64,), depths=(0, 256))
    assert [c.name for c in spec.cases()] == ["pp128", "pp512", "tg64", "pp128 @ d256", "pp512 @ d256", "tg64 @ d256"]
    assert spec.max_context == 768
    assert [c.name for c in ProfileSpec(prompts=(0,), gens=(16,)).cases()] == ["tg16"]


@pytest.mark.parametrize(
    "kwargs", [dict(repetitions=0), dict(prompts=(0,), gens=(0,)), dict(threads=(0,)), dict(depths=(-1,))]
)
def test_spec_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(EdgekitError):
        ProfileSpec(**kwargs)


def test_parse_counts() -> None:
    assert parse_counts("128,512", "-p") == (128, 512)
    with pytest.raises(EdgekitError, match="comma-separated"):
        parse_counts("12x", "-p")
    with pytest.raises(EdgekitError, match="positive"):
        parse_counts("0", "-t", allow_zero=False)


def test_case_statistics_are_llama_bench_s() -> None:
    r = CaseResult(Case(TG, 100), 2, (Sample(0.5, 0.6), Sample(1.0, 1.1), Sample(0.25, 0.3)), 1_000_000, 10.0)
    assert r.rates == [200.0, 100.0, 400.0]
    assert r.tps_mean == pytest.approx(statistics.fmean([200, 100, 400]))
    assert r.tps_std == pytest.approx(statistics.stdev([200, 100, 400]))  # sample, not population
    assert r.roofline_tps == pytest.approx(10_000.0)
    assert r.roofline_fraction == pytest.approx(r.tps_mean / 10_000)
    assert r.ttft_s is None and CaseResult(Case(PP, 8), 1, (Sample(1, 2),)).ttft_s == 2


def test_report_round_trips_through_json() -> None:
    case = CaseResult(Case(PP, 8, 4), 1, (Sample(0.1, 0.2),))
    res = BundleResult("b", "gguf", "q8_0", "llama.cpp", 1, 10, 5, 0.1, 50.0, (case,), None, False)
    rep = ProfileReport("local", {"cpu_model": "x"}, SMALL, (res,), False, "0")
    assert ProfileReport.from_dict(json.loads(json.dumps(rep.to_dict()))) == rep


# -- weights (roofline denominator) -----------------------------------------------------------------------
def test_gguf_weight_bytes_cover_the_tensor_data(q8: Path) -> None:
    from edgekit.bundle import read_manifest
    from edgekit.profiling.weights import gguf_tensor_bytes, kv_bytes_per_position, weight_bytes

    sizes = gguf_tensor_bytes(q8 / "model.gguf")
    total = (q8 / "model.gguf").stat().st_size
    assert "token_embd.weight" in sizes and "output.weight" not in sizes  # LFM2 ties embedding and output
    assert 0.8 * total < sum(sizes.values()) < total  # header (vocab strings) excluded
    m = read_manifest(q8)
    assert weight_bytes(q8, m) == sum(sizes.values())
    # one attention layer, 2 KV heads of 64, K and V in f16
    assert kv_bytes_per_position(m) == 1 * 2 * 2 * 64 * 2


# -- the method against real llama.cpp ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt, quant", [("gguf", "q8_0"), ("onnx", "int4")])
def test_steppable_session_measures_depth(rand_lfm2: Path, export_cache: dict, fmt: str, quant: str) -> None:
    import edgekit
    from edgekit.profiling.method import run_case
    from edgekit.runtimes.protocol import SteppableSession

    s = edgekit.load(exported(export_cache, str(rand_lfm2), fmt, quant, verify=False), n_threads=1)
    try:
        assert isinstance(s, SteppableSession)
        for case in (Case(PP, 16, 8), Case(TG, 4, 8)):
            r = run_case(s, case, 2, True, random.Random(0), 1)
            assert len(r.samples) == 2 and all(0 < x.engine_s <= x.wall_s for x in r.samples)
        s.reset()
        s.feed([1, 2, 3])
        with pytest.raises(EdgekitError, match="exceed the context"):
            s.feed([1] * s.n_ctx)
    finally:
        s.close()


class _GenerateOnly:
    """A real llama.cpp session seen through the base protocol only (what an engine without reset/feed offers)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.engine = inner.engine
        self.manifest = inner.manifest
        self.vocab_size = inner.vocab_size

    def generate(self, prompt, params):
        return self._inner.generate(prompt, params)


def test_engines_without_feed_are_profiled_through_generate(q8: Path) -> None:
    import edgekit
    from edgekit.profiling.method import run_case

    s = edgekit.load(q8, n_threads=1)
    try:
        g = _GenerateOnly(s)
        pp = run_case(g, Case(PP, 16), 2, False, random.Random(0), 1)
        tg = run_case(g, Case(TG, 8), 2, False, random.Random(0), 1)
        assert pp.tps_mean > 0 and tg.tps_mean > 0 and pp.ttft_s and pp.ttft_s > 0
        with pytest.raises(UnsupportedError, match="depth"):
            run_case(g, Case(PP, 16, 8), 1, False, random.Random(0), 1)
    finally:
        s.close()


def test_local_profile_end_to_end(q8: Path) -> None:
    from edgekit.devices import parse
    from edgekit.profiling.session import profile

    spec = ProfileSpec(prompts=(16, 32), gens=(8,), depths=(0, 16), threads=(1,), repetitions=2)
    rep = profile([q8], spec, parse("local"))
    assert not rep.partial and rep.inventory["machine"] and rep.inventory["engines"]["llama-cpp-python"]
    (r,) = rep.results
    assert r.error is None and r.load_s and r.peak_rss_mb and r.file_size > (q8 / "model.gguf").stat().st_size
    assert [c.case.name for c in r.cases] == [c.name for c in spec.cases()]
    for c in r.cases:
        assert len(c.samples) == 2 and c.tps_mean > 0
        if c.case.kind == TG:
            assert c.bandwidth_gbs and c.bytes_per_token and c.roofline_fraction and c.roofline_fraction > 0
            assert c.bytes_per_token >= r.weight_bytes


# -- failures and interruptions ------------------------------------------------------------------------------
class _ScriptDevice:
    """This machine, but the 'device side' is a given Python snippet: for runs that die half-way."""

    name = "script"

    def __init__(self, script: str) -> None:
        self.script = script

    def check(self) -> None:
        return None

    def python_command(self, module, args=(), cwd=None):
        if module == "edgekit.profiling.runner":
            return [sys.executable, "-c", self.script]
        raise AssertionError(module)

    def stage_bundle(self, root):
        return str(root)

    def stage_dir(self, local, name):
        return str(local)

    def install_hint(self, reqs):
        return "pip install " + " ".join(reqs)


DIES_AFTER_ONE_TEST = r"""
import json, sys
req = json.loads(sys.stdin.read())
def out(**e): print(json.dumps(e), flush=True)
if req["op"] == "inventory": out(event="inventory", inventory={"machine": "test"})
elif req["op"] == "bandwidth": out(event="bandwidth", gbs=10.0, threads=1)
else:
    out(event="start", format="gguf", quant="q8_0", engine="llama.cpp", threads=1, file_size=1, load_s=0.1)
    out(event="case", result={"case": {"kind": "pp", "n": 32, "depth": 0}, "threads": 1,
                              "samples": [{"engine_s": 0.01, "wall_s": 0.011}]})
    sys.stderr.write("Segmentation fault in the engine\n"); sys.exit(139)
"""


def test_a_run_that_dies_keeps_its_finished_tests(q8: Path) -> None:
    from edgekit.profiling import report
    from edgekit.profiling.session import profile

    rep = profile([q8], SMALL, _ScriptDevice(DIES_AFTER_ONE_TEST))
    (r,) = rep.results
    assert r.partial and rep.partial and [c.case.name for c in r.cases] == ["pp32"]
    assert "exit 139" in r.error and "Segmentation fault" in r.error
    assert "PARTIAL" in report.table(rep) and "(partial)" in report.table(rep)
    assert json.loads(report.render(rep, "json"))["partial"] is True


def test_missing_runtime_names_the_install_command(q8: Path) -> None:
    from edgekit.errors import RuntimeMissingError
    from edgekit.profiling.session import profile

    script = DIES_AFTER_ONE_TEST.replace(
        'out(event="start"', 'out(event="missing", engine="llama.cpp", modules=["llama_cpp"], extra="gguf"); sys.exit(0)\n    out(event="start"'
    )
    with pytest.raises(RuntimeMissingError, match=r"pip install .*llama-cpp-python==0\.3\.36"):
        profile([q8], SMALL, _ScriptDevice(script))


def test_interrupt_marks_the_report_partial(q8: Path) -> None:
    from edgekit.profiling.session import profile

    spec = ProfileSpec(prompts=(8,), gens=(0,), threads=(1, 1), repetitions=1, warmup=False)

    def stop(_result: BundleResult) -> None:
        raise KeyboardInterrupt

    rep = profile([q8], spec, _ScriptDevice(DIES_AFTER_ONE_TEST), on_result=stop)
    assert rep.interrupted and rep.partial and len(rep.results) == 1


def test_a_bundle_that_fails_on_the_device_brings_its_error_back(q8: Path, tmp_path: Path) -> None:
    import shutil

    from edgekit.devices import parse
    from edgekit.profiling.session import profile

    broken = tmp_path / "broken"
    shutil.copytree(q8, broken)
    size = (broken / "model.gguf").stat().st_size
    (broken / "model.gguf").write_bytes(b"\0" * size)  # right size, wrong bytes: refused by the bundle's sha256
    rep = profile([broken, q8], SMALL, parse("local"), bandwidth=False)
    bad, good = rep.results
    assert bad.partial and "sha256 differs from the manifest" in bad.error and not bad.cases
    assert not good.partial and good.cases  # the run went on with the next bundle


# -- renderings and the CLI ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_report(q8: Path) -> ProfileReport:
    from edgekit.devices import parse
    from edgekit.profiling.session import profile

    return profile([q8], SMALL, parse("local"))


def test_renderings(small_report: ProfileReport, tmp_path: Path) -> None:
    from edgekit.profiling import report
    from edgekit.profiling.plot import write_png

    table = report.render(small_report, "table")
    assert "pp32" in table and "tg8" in table and "±" in table and "roofline" in table
    md = report.render(small_report, "md").splitlines()
    assert md[0].startswith("| bundle") and md[1].startswith("|---")
    rows = list(csv.DictReader(io.StringIO(report.render(small_report, "csv"))))
    assert [r["test"] for r in rows] == ["pp32", "tg8"] and float(rows[0]["tps_mean"]) > 0
    lines = [json.loads(line) for line in report.render(small_report, "jsonl").splitlines()]
    assert [line["test"] for line in lines] == ["pp32", "tg8"] and lines[1]["roofline"] > 0
    png = write_png(small_report, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_profile(q8: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgekit.cli import main

    out = tmp_path / "r.json"
    rc = main(["profile", str(q8), "-p", "16", "-n", "4", "-r", "1", "-t", "1", "--no-warmup", "-o", "json",
               "--file", str(out), "--plot", str(tmp_path / "r.png"), "-q"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["results"][0]["cases"]] == ["pp16", "tg4"]
    assert (tmp_path / "r.png").is_file()
    assert main(["profile", str(q8), "-p", "x"]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert main(["profile", str(q8), "--device", "telnet://pi"]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_bench_matrix_writes_table_and_plot(rand_lfm2: Path, tmp_path: Path) -> None:
    from edgekit.devices import parse
    from edgekit.matrix import run_matrix

    source = str(rand_lfm2)
    spec = ProfileSpec(prompts=(16,), gens=(4,), threads=(1,), repetitions=1, warmup=False)
    report, table, png = run_matrix(source, None, tmp_path, spec, parse("local"), formats="gguf",
                                    quants="q8_0,q4_0", progress=lambda _m: None)
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| format | quant |") and "pp16 t/s" in lines[0]
    assert [ln.split("|")[2].strip() for ln in lines[2:4]] == ["q8_0", "q4_0"]
    assert png.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "bench.json").is_file()
    # a second run reuses the bundles (same source, same plan) and only measures
    mtime = (tmp_path / "bundles" / "gguf-q8_0" / "model.gguf").stat().st_mtime
    run_matrix(source, None, tmp_path, spec, parse("local"), formats="gguf", quants="q8_0", progress=lambda _m: None)
    assert (tmp_path / "bundles" / "gguf-q8_0" / "model.gguf").stat().st_mtime == mtime


def test_peak_rss_is_the_runner_s_own_not_its_parent_s(q8: Path) -> None:
    """A profiler started from a big process (here: pytest holding torch) must not report that process's memory."""
    import numpy as np

    from edgekit.devices import parse
    from edgekit.profiling.session import profile

    ballast = np.ones(400 * 1024 * 1024 // 8)  # 400 MB resident in the parent
    rep = profile([q8], ProfileSpec(prompts=(8,), gens=(0,), threads=(1,), repetitions=1, warmup=False), parse("local"))
    assert rep.results[0].peak_rss_mb < 300, rep.results[0].peak_rss_mb
    del ballast


def test_one_repetition_prints_no_spread() -> None:
    """`edgekit profile -r 1`: a stddev of one sample is undefined, so the table prints the rate alone."""
    from dataclasses import replace

    from edgekit.profiling import report

    one = CaseResult(Case(TG, 8), 1, (Sample(0.5, 0.6),))
    two = CaseResult(Case(TG, 8), 1, (Sample(0.5, 0.6), Sample(0.25, 0.3)))
    assert one.tps_text() == "16.0" and two.tps_text() == "24.0 ± 11.3"
    res = BundleResult("b", "gguf", "q8_0", "llama.cpp", 1, 10, 5, 0.1, 50.0, (one,), None, False)
    rep = ProfileReport("local", {"cpu_model": "x"}, replace(SMALL, repetitions=1), (res,), False, "0")
    table = report.render(rep, "table")
    assert "±" not in table and "16.00" in table and "no spread" in table
