"""Shared domain: the records between stages, the configuration tree, the database schema, the model
registry and which version a station runs, the one preprocessing function and the view of a frame."""
