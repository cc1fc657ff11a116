"""Measurement: timing protocol (warm-up, synchronised timers, OOM back-off) and the throughput command."""
