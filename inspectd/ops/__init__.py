"""Operator and maintainer tools around the daemon: the command line, labels, explain, synthetic images."""
