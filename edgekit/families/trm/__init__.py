"""TRM (Tiny Recursive Model, arXiv 2510.04871): typed config, official-checkpoint loader, PyTorch reference.

``config`` and the config half of ``checkpoint`` import no torch; ``reference`` and the weight loader do.
"""
