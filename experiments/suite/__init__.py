"""Studies over many runs: sweeps and the results table."""
