"""Performance tools: benchmarks, matmul roof, XLA op profile, TPU ahead-of-time plans, the allocator switch."""
