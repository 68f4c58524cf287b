"""Training, evaluation and export. Imports TensorFlow lazily; the daemon never imports this package."""
