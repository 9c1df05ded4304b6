"""Test and benchmark harness, never installed: private Redis servers for the suite (``tests/``)
and the benchmarks (``bench/``) to run against - a Redis Cluster of any shape
(``harness.cluster``) and a Sentinel group with replicas (``harness.ha``).

It is not in the wheel (pyproject.toml's ``[tool.setuptools] packages`` leaves it out;
``tests/test_packaging.py`` checks): import it from a checkout (``python -m pytest`` and
``python -m bench`` run from the repository's root; pytest's ``pythonpath`` adds the root).
Runtime code never imports it. ``shared.servers`` (one ``redis-server``, the demo's fake)
stays in the package: the demo starts servers with it."""
