"""Benchmarks (`make bench`). Not installed with the package; the platform imports from here only
when the benchmark switches in settings are on (CLOUDSCALE_BENCHMARK_TASKS / _VIEWS)."""
