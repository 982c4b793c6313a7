"""HRM (Hierarchical Reasoning Model, sapientinc/HRM): typed config, official-checkpoint loader, PyTorch reference.

HRM is TRM's predecessor: the same blocks, embeddings, heads and ACT loop, with a separate high-level network
(``H_level``) for the z_H update.  ``config`` and ``checkpoint.load_config`` import no torch.
"""
