"""`llamarun bench`: offline engine throughput (offline.py), server latency under concurrency (serving.py),
and the shared result type, percentiles, table and JSON record (report.py)."""
