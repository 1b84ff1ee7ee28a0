"""Developer tools: benchmarks and FLOP counts."""
