"""Process concerns: metrics, the health endpoint, JSON logs, console output, GC tuning and signals."""
