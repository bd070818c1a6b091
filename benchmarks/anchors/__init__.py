"""Other libraries driven side by side with crosstask in the benchmarks (installed for the benchmark only)."""
