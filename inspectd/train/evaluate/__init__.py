"""Judging a version: metrics, reports, scoring as the daemon scores, and the promotion gate."""
