"""`python -m benchmarks`: passthrough, naive and the shipped scorer side by side on one embedded broker."""
