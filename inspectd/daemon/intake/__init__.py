"""From a file event to a decoded frame in a micro-batch: watcher, readiness, claims, decode, batcher."""
