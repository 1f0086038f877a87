"""Benchmarks (`make bench`) and the load generator (`manage.py loadgen`).

The naive baseline task and the latency-floor view are reachable only through `benchmarks.settings`,
which `make bench` uses for the stack it starts.
"""
