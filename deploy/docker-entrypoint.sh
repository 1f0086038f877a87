#!/bin/sh
# Container entry point: a fresh Prometheus multiprocess folder (files of dead processes would be
# summed into the metrics), then the command, as PID 1's only child of importance.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
exec "$@"
