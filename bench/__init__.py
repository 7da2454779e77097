"""Benchmarks of osnet-beam (not part of the installed package); see bench/README.md."""
