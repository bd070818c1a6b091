"""Benchmarks: reproductions of published numbers on real data, and speed against plain PyTorch."""
