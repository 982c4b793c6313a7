"""BitNet b1.58 (and the a4.8 activation mode): ternary-weight Llama-like decoders (``BitNetForCausalLM``).

Files: ``config.py`` (``BitNetConfig``, read from ``config.json`` incl. its ``quantization_config``),
``weights.py`` (packed / unpacked / master checkpoints -> ternary codes + per-tensor scales; ``pack``; writers for
both layouts), ``reference.py`` (the W1.58A8 / a4.8 PyTorch reference, plus a float-activation mode that is what
llama.cpp computes; imports torch), ``lora.py`` (merging a PEFT LoRA into ternary weights with re-ternarisation,
and the error that costs), ``synthetic.py`` (random-weight models for tests and full-size speed benchmarks).  Per-format code:
``exporters/<format>/bitnet.py``.  The registry row (``SPEC``) is added with the recipe table.
"""
