"""Reference research pipeline: market data research functions and their workers."""
