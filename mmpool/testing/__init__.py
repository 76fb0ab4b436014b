"""Synthetic data in the engines' real layouts, for tests, benchmarks and the demo."""
