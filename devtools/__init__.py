"""Tooling for tests, benchmarks and the demo, never installed with govrisk: a server launcher, a
client that builds request bodies, and a simulated decision system. Run from the repository root."""
