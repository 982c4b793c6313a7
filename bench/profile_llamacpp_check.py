"""Are edgekit's profile numbers llama.cpp's?  edgekit profile vs llama.cpp's own llama-bench on the same GGUF
files, with the same library binary, threads, batch and tests, measured alternately in one run.

    bench/profile_build_llama_bench.sh              # once: builds llama-bench from the vendored llama.cpp
    .venv/bin/python bench/profile_llamacpp_check.py [-t 1,2] [-r 5] [--rounds 2] [--model builtin 350m] [--write]

llama-bench is run with LD_LIBRARY_PATH pointing at the installed llama-cpp-python's libllama/libggml, so both
columns time the very same machine code; ``-fa 0 -b 512 -ub 512`` matches edgekit's llama.cpp context.  Each
(file, threads) pair is measured ``--rounds`` times, alternating the two tools, so that drift of a shared
machine hits both.  ``--write`` replaces the ``## Profiler`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from common import cpu_name, random_350m  # noqa: E402  (bench/ is on sys.path)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = Path(os.environ.get("EDGEKIT_BENCH_DIR", "/tmp/edgekit-bench-profile"))
LLAMA_BENCH = Path(os.environ.get("LLAMA_BENCH", Path.home() / ".cache/edgekit/llama-bench/bin/llama-bench"))
SECTION = "## Profiler"


def bundle(source: str, quant: str, name: str) -> Path:
    from edgekit.export import export, make_plan

    out = WORK / f"{name}-{quant}"
    if not (out / "edgekit.json").exists():
        export(make_plan(source, "gguf", quant), out, force=True, verify=False, progress=lambda _m: None)
    return out


def llama_bench(model: Path, p: int, n: int, reps: int, threads: int) -> dict[str, tuple[float, float]]:
    import llama_cpp

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(Path(llama_cpp.__file__).parent / "lib")
    argv = [str(LLAMA_BENCH), "-m", str(model), "-p", str(p), "-n", str(n), "-r", str(reps), "-t", str(threads),
            "-fa", "0", "-b", "512", "-ub", "512", "-o", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    out = {}
    for row in json.loads(done.stdout):
        name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        out[name] = (float(row["avg_ts"]), float(row["stddev_ts"]))
    return out


def edgekit_profile(b: Path, p: int, n: int, reps: int, threads: int) -> tuple[dict[str, tuple[float, float, float]], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        subprocess.run(
            [sys.executable, "-m", "edgekit.cli", "profile", str(b), "-p", str(p), "-n", str(n), "-r", str(reps),
             "-t", str(threads), "-o", "json", "--file", str(out), "-q"],
            check=True,
        )
        data = json.loads(out.read_text())
    r = data["results"][0]
    return {c["name"]: (c["tps_mean"], c["tps_std"], c["wall_tps_mean"]) for c in r["cases"]}, r


def render(rows: list, args: argparse.Namespace) -> list[str]:
    # per (model, quant, threads, test): the median over rounds of each tool's mean, which a noisy shared
    # machine disturbs far less than any single round
    groups: dict[tuple, list] = {}
    for name, quant, t, _rnd, test, lb, e in rows:
        groups.setdefault((name, quant, t, test), []).append((lb[0], e[0]))
    summary = [
        "| model | quant | threads | test | llama-bench (median of rounds) | edgekit (median) | ratio | llama-bench (best round) | edgekit (best) | ratio |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, quant, t, test), pairs in groups.items():
        lb_med = statistics.median(p[0] for p in pairs)
        ek_med = statistics.median(p[1] for p in pairs)
        lb_best = max(p[0] for p in pairs)
        ek_best = max(p[1] for p in pairs)
        summary.append(f"| {name} | {quant} | {t} | {test} | {lb_med:.1f} | {ek_med:.1f} | {ek_med / lb_med:.3f} | "
                       f"{lb_best:.1f} | {ek_best:.1f} | {ek_best / lb_best:.3f} |")
    ratios = [e[0] / lb[0] for *_, lb, e in rows]
    wall = [e[2] / e[0] for *_, lb, e in rows]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    lines = [
        SECTION,
        "",
        f"edgekit profile vs llama.cpp's own `llama-bench` on the same GGUF files, same libllama binary "
        f"(LD_LIBRARY_PATH), `-fa 0 -b 512 -ub 512`, pp{args.p} / tg{args.n}, {args.r} repetitions after a warm-up, "
        f"{args.rounds} alternating rounds; {cpu_name()}, {os.cpu_count()} cores (shared machine), commit {commit}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. t/s = mean ± sample stddev. Reproduce: "
        "`bench/profile_build_llama_bench.sh && .venv/bin/python bench/profile_llamacpp_check.py --write`.",
        "",
        *summary,
        "",
        "Every round:",
        "",
        "| model | quant | threads | round | test | llama-bench t/s | edgekit t/s (engine) | edgekit t/s (wall) | edgekit / llama-bench |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, quant, t, rnd, test, lb, e in rows:
        lines.append(f"| {name} | {quant} | {t} | {rnd} | {test} | {lb[0]:.1f} ± {lb[1]:.1f} | {e[0]:.1f} ± {e[1]:.1f} | "
                     f"{e[2]:.1f} | {e[0] / lb[0]:.3f} |")
    lines += [
        "",
        f"Ratio edgekit / llama-bench over all {len(ratios)} single rounds: median {statistics.median(ratios):.3f}, "
        f"min {min(ratios):.3f}, max {max(ratios):.3f}; rows within 5 %: "
        f"{sum(abs(r - 1) <= 0.05 for r in ratios)}/{len(ratios)}. Wall-clock rate / engine rate (Python overhead "
        f"around the engine calls): median {statistics.median(wall):.3f}.",
        "",
        "The format x quant table of the built-in model (`edgekit bench`) is in bench/profile_matrix.md, its plot in "
        "bench/profile_matrix.png.",
        "",
    ]
    return lines


LOG_LINE = re.compile(
    r"^(\S+) (\S+) t(\d+) round (\d+) (\S+): llama-bench ([\d.]+) ± ([\d.]+), edgekit ([\d.]+) ± ([\d.]+) \(wall ([\d.]+)\)"
)


def rows_from_log(path: Path) -> list:
    """Re-render a previous run from the lines it printed (``--from-log``)."""
    rows = []
    for line in path.read_text().splitlines():
        m = LOG_LINE.match(line)
        if m:
            name, quant, t, rnd, test = m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), m.group(5)
            f = [float(m.group(i)) for i in range(6, 11)]
            rows.append((name, quant, t, rnd, test, (f[0], f[1]), (f[2], f[3], f[4])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["builtin"], choices=["builtin", "350m"])
    ap.add_argument("--quants", default="q8_0,q4_0")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("-t", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of bench/RESULTS.md")
    ap.add_argument("--from-log", type=Path, help="re-render the rounds a previous run printed instead of measuring")
    args = ap.parse_args()
    if args.from_log:
        return publish(render(rows_from_log(args.from_log), args), args.write)
    if not LLAMA_BENCH.exists():
        sys.exit(f"{LLAMA_BENCH} not found; build it with bench/profile_build_llama_bench.sh")
    WORK.mkdir(parents=True, exist_ok=True)
    sources = {"builtin": ("builtin:lfm2-tiny", "lfm2-tiny"), "350m": (None, "lfm2-350m-random")}
    rows = []
    for model in args.model:
        src, name = sources[model]
        src = src or str(random_350m(WORK))
        for quant in args.quants.split(","):
            b = bundle(src, quant, name)
            gguf = b / "model.gguf"
            for t in (int(x) for x in args.t.split(",")):
                for rnd in range(args.rounds):
                    lb = llama_bench(gguf, args.p, args.n, args.r, t)
                    ek, raw = edgekit_profile(b, args.p, args.n, args.r, t)
                    for test in lb:
                        e = ek[test]
                        rows.append((name, quant, t, rnd + 1, test, lb[test], e))
                        print(f"{name} {quant} t{t} round {rnd + 1} {test}: llama-bench {lb[test][0]:.1f} ± {lb[test][1]:.1f}, "
                              f"edgekit {e[0]:.1f} ± {e[1]:.1f} (wall {e[2]:.1f}) ratio {e[0] / lb[test][0]:.3f}", flush=True)
    publish(render(rows, args), args.write)


def publish(lines: list[str], write: bool) -> None:
    text = "\n".join(lines)
    print(text)
    if write:
        path = HERE / "RESULTS.md"
        old = path.read_text() if path.exists() else "# Benchmark results\n\n"
        start = old.find(SECTION + "\n")
        if start >= 0:
            end = old.find("\n## ", start + len(SECTION))
            old = old[:start] + old[end + 1:] if end >= 0 else old[:start]
        path.write_text(old.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
