"""The long-running service: its lifecycle, periodic jobs, health, HTTP endpoints and metrics.

Data flows one way through its two stage packages: ``intake`` (file event -> readiness -> claim ->
decode -> batch) and ``commit`` (infer -> persist -> archive), then metrics."""
