"""``edgekit profile``: llama-bench's method for every engine, on this machine or a device.

Host side: ``session.profile`` (stage bundles, run, collect), ``report`` (table, json, csv, md), ``plot``.
Device side (stdlib + numpy + the engine only): ``runner`` with ``method``, ``bandwidth``, ``inventory``,
``weights``.
"""

from __future__ import annotations

from .values import BundleResult, Case, CaseResult, ProfileReport, ProfileSpec, Sample

__all__ = ["BundleResult", "Case", "CaseResult", "ProfileReport", "ProfileSpec", "Sample"]
