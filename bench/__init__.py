"""The secretfs benchmark suite (bench/run)."""
