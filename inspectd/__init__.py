"""inspectd: the inspection daemon for microchip images."""

__version__ = "0.1.0"
