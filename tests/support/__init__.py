"""Shared test harness: real mounts, real servers."""
