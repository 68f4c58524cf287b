"""The classifier at run time: the LiteRT runtime of a version and the station's active model."""
