"""Tools for tests, the demo and the benchmarks, built on the product's own stacks (not used by the agent)."""
