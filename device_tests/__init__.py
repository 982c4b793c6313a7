"""Tests that run ON a device against one bundle: ``pytest device_tests --bundle DIR``.

Shipped and run by ``edgekit device-test --device ...``; they need only edgekit's device side (shipped with
them), the bundle's engine and pytest.  Golden outputs come from the export host (``edgekit golden``).
"""
