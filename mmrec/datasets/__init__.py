"""Benchmark data sets built from real images that ship in registry packages."""
