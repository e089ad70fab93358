"""Throughput of training, prediction and data loading, measured beside the seed's per-frame fp32 step.

Every arm steps with ``svg.step.train_step``, the trainer's step, so what is timed is what trains:
``machine`` (CPU, peaks, memory), ``arms`` (the timed steps, FLOPs), ``loaders`` (data), ``report``
(``run`` and the summary).
"""

from svg.bench.report import BenchOptions, run, summary_lines

__all__ = ["BenchOptions", "run", "summary_lines"]
