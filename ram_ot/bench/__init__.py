"""Benchmarks (not tests): ``python -m ram_ot.bench <name> [options]``.

Each benchmark lives in its own module ``ram_ot.bench.<name>`` (dashes in ``<name>`` become
underscores) with a ``main(argv)`` function. Benchmarks print ratios against baselines
measured in the same process; their figures are recorded in ``docs/benchmarks.md``.
"""
