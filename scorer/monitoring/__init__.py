"""Data and model health: input checks, drift, live quality from delayed labels (`scorer monitor`), the report."""
