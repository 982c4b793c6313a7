"""GPTQ vs round-to-nearest for ONNX int4 (MatMulNBits, symmetric blocks), measured in PyTorch (issue 15).

    .venv/bin/python bench/gptq_probe.py [--modes rtn,gptq-seq,gptq-float] [--head rtn|gptq] [--mixed]
        [--scan rtn|gptq] [--scan-method estimate|exact]

The merged reference (built-in LFM2 + LoRA) with every linear, the tied embedding / LM head included, quantised and
dequantised the way the ONNX int4 export stores it (onnxruntime's block quantiser: ``exporters.onnx.mixed
.fake_quant``, bit-identical to the file) against the float model on the held-out text (parity's windows: 2,048
tokens in windows of 512): top-1 agreement and mean KL(float || quantised).  No ONNX engine: the run-time int8
activation quantisation (accuracy_level 4) is left out, as the mixed-precision scan leaves it out.

- ``rtn``: the file as written today.
- ``gptq-seq`` / ``gptq-float``: GPTQ (``exporters.onnx.gptq``) with RTN's own scales (static groups: the file layout
  and bytes unchanged), Hessians from the calibration text (never the held-out text); ``seq``: layer by layer, each
  linear's inputs from the model whose earlier linears are already quantised; ``float``: every Hessian from the float
  model.
- ``--head``: the tied table's codes by RTN or by GPTQ on the LM head's inputs (the embedding lookup reads the same
  codes either way).
- ``--mixed``: the types the default mixed-precision scan picks (at 0.625 bytes per weight) instead of int4 block 32
  everywhere.
- ``--scan gptq`` (with ``--mixed``): the scan (``edgekit.mixed.scan`` + ``select`` at the same default budget: the
  bytes of int4_b32 everywhere) prices each candidate type by the KL of that tensor alone holding GPTQ's codes at
  that type (RTN's scales, float-model Hessians over the calibration text, computed once: gptq-float's) instead of
  round-to-nearest's; ``--scan-method``: the scan's ``estimate`` (one measured type per linear, the rest carried
  by the diagonal input-power error ratio, the tied table measured at every type) or ``exact`` (every type
  measured).  Prints the rtn-priced (default) types too and which tensors changed.

Measured 2026-12-01 (2 shared cores; calibration 11,264 tokens in 22 windows; held-out 2,048 tokens), top-1 / mean KL:

| types | rtn | gptq-float, head rtn | gptq-float, head gptq | gptq-seq, head rtn | gptq-seq, head gptq |
|---|---|---|---|---|---|
| int4_b32 everywhere | 0.8594 / 2.77e-2 | 0.8799 / 2.31e-2 | 0.8726 / 2.19e-2 | 0.8813 / 2.30e-2 | 0.8799 / 2.20e-2 |
| mixed (`--mixed`, 0.625 B/w) | 0.8770 / 2.29e-2 | 0.8989 / 1.79e-2 | **0.8931 / 1.67e-2** | 0.8950 / 1.78e-2 | 0.8955 / 1.69e-2 |

int4_b32, gptq-float: ``--act-order`` 0.8760 / 2.50e-2 (head rtn), 0.8784 / 2.27e-2 (head gptq); ``--dynamic``
0.8804 / 2.32e-2, 0.8755 / 2.31e-2 (block scales from the error-updated weights; that option and its code path were
removed after this measurement, commit 6990229); ``--damp 0.1`` 0.8711 / 2.36e-2, 0.8789 / 2.13e-2.  Mixed, gptq-float, head
gptq: ``--dynamic`` 0.8984 / 1.81e-2, ``--damp 0.1`` 0.8975 / 1.61e-2 (-4 %: left at the paper's 1 %, not tuned on
the held-out text).  Sequential Hessians buy
nothing over the float model's here, so the export takes them all from the float reference in one pass (gptq-float,
head included, static scales, no act-order: the last bold cell, -27 % KL against the mixed RTN it replaces).

GPTQ-priced scan, measured 2026-12-01 (same data; gptq-float, head gptq, every row 0.6250 bytes per weight; wall
times on 2 cores with nothing else running: the same runs under contention from another job took 53-60 s /
363 s / 766 s for the scans):

    .venv/bin/python bench/gptq_probe.py --mixed --modes gptq-float --head gptq
    .venv/bin/python bench/gptq_probe.py --mixed --scan gptq --scan-method estimate --modes gptq-float --head gptq
    .venv/bin/python bench/gptq_probe.py --mixed --scan gptq --scan-method exact --modes gptq-float --head gptq

| scan pricing | top-1 / mean KL | scan time | types changed against the default |
|---|---|---|---|
| rtn, estimate (the export's) | 0.8931 / 1.671e-2 | 4 s | - |
| gptq, estimate | 0.8931 / 1.670e-2 | 21 s | 6 (L2/L4 attn out_proj down to b256; L3 w1, w2 b256->b128; L5 w1 b64->b128, w2 b128->b64) |
| gptq, exact | 0.8911 / 1.667e-2 | 36 s | 11, all int4 block-size moves (e.g. L0 conv.in_proj b64->b32, L3/L5 conv.in_proj b64->b128) |
| rtn, exact (``--mixed --scan-method exact``) | 0.8945 / 1.646e-2 | 19 s | 14 int4 block-size moves |

No gain (0.002 top-1 is 4 of 2,048 tokens): GPTQ lowers a tensor's costs at its int4 types by similar factors, so
the selection barely moves: the int8 picks are the same in all four, only int4 block sizes trade places.  What
dominates is the tied table at int4_b32 in every plan: alone it costs 1.05e-2 (rtn) / 7.83e-3 (gptq) of the scan's
KL, about half the final KL, against 4.8e-5 at int8_b256, but int8 needs 410 KB more and the greedy never affords
it.  Forcing it (table int8_b256, every other linear int4_b256: 0.6237 B/w) measured worse: rtn 0.8643 / 2.69e-2,
gptq-float head gptq 0.8838 / 1.96e-2 (the per-tensor costs are not additive at that scale of change).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit import calibration  # noqa: E402
from edgekit import gptq as core_gptq  # noqa: E402
from edgekit import reference as ref_mod  # noqa: E402
from edgekit.export import make_plan  # noqa: E402
from edgekit.kinds.language import parity  # noqa: E402
from edgekit.exporters.onnx import gptq  # noqa: E402
from edgekit.exporters.onnx import mixed as onnx_mixed  # noqa: E402

SOURCE, ADAPTER = "builtin:lfm2-tiny", "builtin:lfm2-tiny-lora"
HEAD = "model.embed_tokens.weight"


def linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """Every nn.Linear in forward order (module order is forward order in LFM2's blocks), lm_head last."""
    out = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" not in n]
    out.sort(key=lambda nm: nm[0] == "lm_head")
    return out


def hessians(model, mods, windows) -> dict[str, torch.Tensor]:
    """H = 2/n X^T X (float64) of each named module's input over the calibration windows."""
    hs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, mod in mods:
        def hook(_m, args, _o, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            hs[name] = hs.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for k in range(0, len(windows), 8):
                model(input_ids=torch.tensor(windows[k:k + 8], dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return {n: 2.0 * hs[n] / counts[n] for n in hs}


def evaluate(model, windows, ref_logp) -> tuple[float, float]:
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor(windows, dtype=torch.long)).logits.double(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    agree = (ref_logp.argmax(-1) == logp.argmax(-1)).double()
    return float(agree.mean()), float(kl.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="rtn,gptq-seq,gptq-float")
    ap.add_argument("--head", default="rtn,gptq", help="comma-separated: rtn, gptq")
    ap.add_argument("--mixed", action="store_true", help="the default mixed-precision types instead of int4_b32")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--act-order", action="store_true", help="GPTQ columns by descending Hessian diagonal")
    ap.add_argument("--scan", choices=("rtn", "gptq"), default="rtn",
                    help="with --mixed: price each candidate type by the KL of round-to-nearest (the export's scan) "
                         "or of GPTQ's codes at that type (float-model Hessians over the calibration text)")
    ap.add_argument("--scan-method", choices=("estimate", "exact"), default=None,
                    help="with --mixed: edgekit.mixed.scan's method (default: its SCAN_METHOD)")
    args = ap.parse_args()
    if (args.scan != "rtn" or args.scan_method) and not args.mixed:
        ap.error("--scan / --scan-method need --mixed")
    torch.set_num_threads(2)
    prep = make_plan(SOURCE, "onnx", "int4", ADAPTER, {})
    model = ref_mod.load_reference(prep.checkpoint, prep.adapter, prep.plan.options).float().eval()
    bos = getattr(model.config, "bos_token_id", None)
    tok = prep.checkpoint.path / "tokenizer.json"
    calib = calibration.token_windows(calibration.default_text(), tok, bos)
    calib = [w for w in calib if len(w) == len(calib[0])]
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tok)).encode(parity.heldout_text(), add_special_tokens=False).ids
    held = parity.windows(ids, bos, parity.WINDOW, parity.MIN_TOKENS)
    print(f"calibration: {sum(map(len, calib))} tokens in {len(calib)} windows; held-out: {sum(map(len, held))} tokens")
    with torch.inference_mode():
        ref_logp = torch.log_softmax(model(input_ids=torch.tensor(held, dtype=torch.long)).logits.double(), -1)

    mods = linears(model)
    types = {n: "int4_b32" for n, _ in mods}
    if args.mixed:
        t0 = time.perf_counter()
        # with --scan gptq the rtn-priced types are the export's default (its SCAN_METHOD), for the comparison
        types = mixed_types(prep, model, mods, "rtn", args.scan_method if args.scan == "rtn" else None, calib,
                            args.damp)
        print(f"rtn-priced scan: {time.perf_counter() - t0:.0f} s", flush=True)
        print("mixed types:", {n: t for n, t in types.items() if t != "int4_b32"})
        if args.scan == "gptq":
            t0 = time.perf_counter()
            rtn_types = types
            types = mixed_types(prep, model, mods, "gptq", args.scan_method, calib, args.damp)
            print(f"gptq-priced scan: {time.perf_counter() - t0:.0f} s", flush=True)
            print("gptq-priced mixed types:", {n: t for n, t in types.items() if t != "int4_b32"})
            print("changed (rtn-priced -> gptq-priced):",
                  {n: f"{rtn_types[n]} -> {t}" for n, t in types.items() if t != rtn_types[n]} or "none")
    originals = {n: m.weight.detach().clone() for n, m in mods}

    def restore():
        with torch.no_grad():
            for n, m in mods:
                m.weight.copy_(originals[n])

    def rtn(name) -> np.ndarray:
        return onnx_mixed.fake_quant(originals[name].numpy(), types[name])

    for mode in args.modes.split(","):
        for head in args.head.split(",") if mode != "rtn" else ["rtn"]:
            restore()
            t0 = time.perf_counter()
            worst = []
            if mode == "rtn":
                with torch.no_grad():
                    for n, m in mods:
                        m.weight.copy_(torch.from_numpy(rtn(n)))
            else:
                todo = [(n, m) for n, m in mods if n != "lm_head" or head == "gptq"]
                hs = hessians(model, todo, calib) if mode == "gptq-float" else {}
                for n, m in todo:
                    h = hs[n] if n in hs else hessians(model, [(n, m)], calib)[n]
                    bits, block = onnx_mixed.parse_type(types[n])
                    w = originals[n].numpy()
                    _codes, scales = gptq.rtn_codes(w, bits, block)
                    deq = gptq_deq(w, h.numpy(), scales, bits, block, args.damp, args.act_order)
                    q_rtn = rtn(n)
                    worst.append((n, float(np.abs(deq - w).max() / np.abs(q_rtn - w).max())))
                    with torch.no_grad():
                        m.weight.copy_(torch.from_numpy(deq))
                if head != "gptq":
                    with torch.no_grad():
                        model.lm_head.weight.copy_(torch.from_numpy(rtn("lm_head")))
            top1, kl = evaluate(model, held, ref_logp)
            kind = f"mixed({args.scan}-priced, {args.scan_method or 'default'})" if args.mixed else "int4_b32"
            print(f"{mode:11s} head={head:4s} types={kind} damp={args.damp} "
                  f"act_order={args.act_order}: "
                  f"top-1 {top1:.4f}  mean KL {kl:.3e}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    restore()


def gptq_deq(w: np.ndarray, h: np.ndarray, scales: np.ndarray, bits: int, block: int, damp: float,
             act_order: bool) -> np.ndarray:
    """The export's GPTQ (``exporters.onnx.gptq.gptq``), or with act-order: columns by descending Hessian diagonal,
    each keeping its own block's scale (static groups), then put back in place."""
    if not act_order:
        return gptq.gptq(w, h, scales, bits, block, damp)
    cols = w.shape[1]
    col_scale = np.repeat(scales.astype(np.float32), block, axis=1)[:, :cols]
    perm = np.argsort(-np.diag(h), kind="stable")
    codes = core_gptq.gptq_codes(w[:, perm], h[np.ix_(perm, perm)], col_scale[:, perm], float(1 << (bits - 1)),
                                 (1 << bits) - 1, damp=damp)
    out = np.empty_like(codes)
    out[:, perm] = codes
    return gptq.dequantize(out, scales, bits, block)


def mixed_types(prep, model, mods, price: str = "rtn", method: str | None = None, calib=None,
                damp: float = core_gptq.DAMP) -> dict[str, str]:
    """ONNX int4 mixed-precision types by module name: the export's own scan (``edgekit.mixed.scan``) and selection
    at the default budget (the bytes of int4_b32 everywhere, as ``exporters.onnx.mixed.plan`` / ``edgekit.mixed
    .plan`` set it).  ``price``: the scan's ``fake`` quantises a tensor by round-to-nearest (the export's) or by
    GPTQ's codes under RTN's scales at that type (Hessians of the float model over ``calib``, computed once, the
    same as gptq-float's; the tied table under the LM head's); ``method``: the scan's, default its SCAN_METHOD."""
    from edgekit import mixed as mixed_mod

    weights = {n + ".weight": n for n, _ in mods if n != "lm_head"}
    weights[HEAD] = "lm_head"
    cands = []
    for pname in weights:
        shape = tuple(dict(model.named_parameters(remove_duplicate=False))[pname].shape)
        kinds = [k for k in onnx_mixed.CANDIDATES if onnx_mixed.fits(shape, k)]
        sizes = dict(sorted(((k, onnx_mixed.nbytes(shape, k)) for k in kinds), key=lambda kv: kv[1]))
        cands.append(mixed_mod.Candidate(pname, int(np.prod(shape)), sizes))
    # q|k|v are one matrix (one type) in the file: group them as the export does
    grouped = []
    names = {c.name: c for c in cands}
    for c in cands:
        if c.name.endswith(".self_attn.q_proj.weight"):
            p = c.name.removesuffix("q_proj.weight")
            ks, vs = names[p + "k_proj.weight"], names[p + "v_proj.weight"]
            rows = sum(int(model.get_parameter(x.name).shape[0]) for x in (c, ks, vs))
            shape = (rows, int(model.get_parameter(c.name).shape[1]))
            kinds = [k for k in onnx_mixed.CANDIDATES if onnx_mixed.fits(shape, k)]
            sizes = dict(sorted(((k, onnx_mixed.nbytes(shape, k)) for k in kinds), key=lambda kv: kv[1]))
            grouped.append(mixed_mod.Candidate(c.name, int(np.prod(shape)), sizes, (ks.name, vs.name)))
        elif not (c.name.endswith(".self_attn.k_proj.weight") or c.name.endswith(".self_attn.v_proj.weight")):
            grouped.append(c)
    defaults = {c.name: "int4_b32" for c in grouped}
    text = calibration.load_text(None)
    windows = calibration.token_windows(text.text, prep.checkpoint.path / "tokenizer.json", model.config.bos_token_id)
    method = method or mixed_mod.SCAN_METHOD
    if price == "rtn":
        def fake(_n, w, t):
            return onnx_mixed.fake_quant(w, t)
    else:
        mod_of = dict(weights)  # parameter name -> module whose input the weight sees (the tied table: lm_head's)
        hs = hessians(model, [(m, model.get_submodule(m)) for m in sorted(set(mod_of.values()))], calib)

        def fake(n, w, t):
            bits, block = onnx_mixed.parse_type(t)
            _codes, scales = gptq.rtn_codes(w, bits, block)
            return gptq.gptq(w, hs[mod_of[n]].numpy(), scales, bits, block, damp)
    total = sum(c.numel for c in grouped)
    budget = float(sum(c.sizes[defaults[c.name]] for c in grouped))  # edgekit.mixed.plan's default budget
    costs = mixed_mod.scan(model, mixed_mod.scan_windows(windows), grouped, fake, method=method)
    chosen = mixed_mod.select(grouped, costs, budget)
    used = sum(c.sizes[chosen[c.name]] for c in grouped)
    out = {}
    for c in grouped:
        for member in (c.name, *c.group):
            out[weights[member]] = chosen[c.name]
    print(f"mixed ({price}-priced scan, {method}): {used / total:.4f} bytes per weight (default {budget / total:.4f})")
    print("  scan KL at the chosen / int4_b32 type:",
          {weights[c.name]: f"{costs[c.name][chosen[c.name]]:.2e}/{costs[c.name]['int4_b32']:.2e}" for c in grouped})
    print("  tied table scan KL per type:", {t: f"{v:.2e}" for t, v in costs[HEAD].items()})
    return out


if __name__ == "__main__":
    main()
