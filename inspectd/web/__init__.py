"""What the HTTP server serves beyond /metrics and the health checks: the results API (and, next, the
operators' pages). The daemon mounts it; ``inspectd serve`` serves it without a daemon."""
