"""Fitting a network: on frames (global head or MIL), on tiles; the callbacks they share."""
