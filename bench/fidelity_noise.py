"""The engine's own error on a confident and on a flat model: what issue 11's fidelity bars are set from.

    .venv/bin/python bench/fidelity_noise.py [builtin|flat]:FORMAT:QUANT ... [--work DIR] [--out bench/RESULTS.md]

For each case the bundle is exported without verification (the built-in trained LFM2 + LoRA, or a random-weight
LFM2 of another shape: hidden 256, 8 heads of 32, attention first, 4 layers, seed 11 — the flat-distribution model
of tests/kinds/language/test_fidelity.py) and measured on the held-out text (2,048 tokens, windows of 512):

- fidelity: the engine vs the reference built from the file's own weights (``parity.file_reference``): top-1 over
  all positions, top-1 over the positions the reference has decided (``parity.decided_top1``: margin above 6x the
  engine's logit noise), mean KL, and that noise sigma = sqrt(2 KL / impurity) (nats);
- cost: the float reference vs the file reference (mean KL), and fidelity KL / cost KL (the share a recipe's
  ``fidelity_share`` bounds).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import cpu_name, git_commit  # noqa: E402


def measure(model: str, fmt: str, quant: str, work: Path) -> dict:
    from factory import make_lfm2
    from tokenizers import Tokenizer

    from edgekit import reference as ref_mod
    from edgekit import runtimes
    from edgekit.bundle import read_manifest
    from edgekit.export import export, make_plan, recorded_reference
    from edgekit.kinds.language import parity

    if model == "builtin":
        src, adapter = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"
    else:
        src, adapter = str(work / "flat"), None
        if not (work / "flat" / "model.safetensors").exists():
            make_lfm2(work / "flat", hidden=256, intermediate=512, heads=8, kv_heads=2,
                      layer_types=("full_attention", "conv", "full_attention", "conv"), seed=11)
    out = work / f"{model}-{fmt}-{quant}"
    if not (out / "edgekit.json").exists():
        export(make_plan(src, fmt, quant, adapter), out, verify=False, progress=lambda _m: None)
    manifest = read_manifest(out)
    float_model = recorded_reference(manifest, lambda _m: None)
    _, file_model = parity.file_reference(out, manifest, float_model)
    session = runtimes.load(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos = manifest["model"]["bos_id"] if manifest["model"]["add_bos"] else None
    wins = parity.windows(tok.encode(parity.heldout_text(), add_special_tokens=False).ids, bos, 512, 2048)
    fid: dict = {}
    cost: dict = {}
    stats = []
    for w in wins:
        r, e, f = ref_mod.logits(file_model, w), session.logits(w), ref_mod.logits(float_model, w)
        stats.append(parity.position_stats(r, e))
        fid = parity._pool(fid, parity.compare_logits(r, e, stats[-1]))
        cost = parity._pool(cost, parity.compare_logits(f, r))
    session.close()
    kl = fid["kl_sum"] / fid["n"]
    d = parity.decided_top1(stats, kl)
    cost_kl = cost["kl_sum"] / cost["n"]
    return {"case": f"{model} {fmt} {quant}", "top1": fid["agree"] / fid["n"], **d, "kl": kl, "cost_kl": cost_kl,
            "share": kl / cost_kl if cost_kl > 0 else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", help="MODEL:FORMAT:QUANT, MODEL builtin or flat")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit-fidelity-noise"))
    ap.add_argument("--out", type=Path, help="append the table to this file (bench/RESULTS.md)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = ["| model | format | quant | top-1 (all) | top-1 (decided) | decided | noise σ (nats) | fidelity KL | "
            "cost KL | fidelity / cost |", "|---|---|---|---|---|---|---|---|---|---|"]
    for case in args.cases:
        model, fmt, quant = case.split(":")
        r = measure(model, fmt, quant, args.work)
        rows.append(f"| {model} | {fmt} | {quant} | {r['top1']:.4f} | {r['top1_decided']:.4f} | {r['decided']:.0%} | "
                    f"{r['noise']:.3f} | {r['kl']:.2e} | {r['cost_kl']:.2e} | {r['share']:.3f} |")
        print(rows[-1], flush=True)
    head = (f"\n### Fidelity on a flat model ({datetime.date.today()}, {cpu_name()}, commit {git_commit()})\n\n"
            "`.venv/bin/python bench/fidelity_noise.py " + " ".join(args.cases) + "`\n\n")
    if args.out:
        with args.out.open("a") as fh:
            fh.write(head + "\n".join(rows) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
