"""TensorBoard writing (one event per step, checked) and reading it back in a browser."""
