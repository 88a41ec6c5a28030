"""adapterkit benchmarks: `make bench` (python -m bench.run). Ratios, not pass/fail timings."""
