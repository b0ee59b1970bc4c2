"""Speed tools: the benchmark, the step breakdown, the shift-op timing, and what they run and count."""
