"""HRM -> ExecuTorch: the same step program as TRM's (``trm.py``); HRM's reference updates z_H with its own H
network."""

from .trm import export, file_structure, file_weights, record_build

__all__ = ["export", "file_structure", "file_weights", "record_build"]
