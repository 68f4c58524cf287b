"""Publish stage: each committed result to the line's MQTT broker, from the outbox, at least once."""
