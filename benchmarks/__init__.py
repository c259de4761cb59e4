"""Benchmarks of mtserve against Transformers and CTranslate2 (offline), and of the server under load.

``python -m benchmarks.offline`` and ``python -m benchmarks.serving``; see benchmarks/README.md.
"""
