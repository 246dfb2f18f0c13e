"""Benchmarks: programs that print JSON, run on demand (`make bench`), compared as ratios."""
