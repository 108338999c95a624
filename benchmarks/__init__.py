"""Benchmarks of zf_kernels (see benchmarks/README.md). A package only so that its modules
import as ``benchmarks.common`` etc.: python/common.py (the example VAEs' helpers) owns the
top-level name ``common``."""
