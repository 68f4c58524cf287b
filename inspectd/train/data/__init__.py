"""What training sees: labeled images gathered and split, as arrays, augmented, and composited."""
