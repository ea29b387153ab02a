"""Benchmarks (`mmrec bench NAME`, `make bench`): each measures one fast path beside its baseline or
the machine's measured limit, in the same run, and reports its configuration with the figures."""
