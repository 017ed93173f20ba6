"""Benchmark: run registration methods on sets of pairs and report accuracy, regularity, time, memory.

- :mod:`.methods`: the name -> method registry (``register_method``, ``get_method``).
- :mod:`.sources`: pair sets (generated pairs, DIR-Lab, Learn2Reg) as lazily loaded references.
- :mod:`.runner`: ``run_benchmark`` (one fresh process per run), ``summarize``, ``write_json``.
- :mod:`.table`: the plain-text table.
- :mod:`.peers`: elastix and ConvexAdam as methods (optional packages).
- :mod:`.commands`: the ``graphreg bench`` Typer app (``bench_app``).
"""

from graphreg.apps.bench.methods import (MethodResult, MethodUnavailableError, available_methods, get_method,
                      register_method, unregister_method)
from graphreg.apps.bench.runner import run_benchmark, summarize, write_json
from graphreg.apps.bench.sources import PairRef, detect_layout, open_pairs
from graphreg.apps.bench.table import format_table

__all__ = ["MethodResult", "MethodUnavailableError", "PairRef", "available_methods", "detect_layout",
           "format_table", "get_method", "open_pairs", "register_method", "run_benchmark", "summarize",
           "unregister_method", "write_json"]
