"""Views that write a run somewhere else: a report file, TensorBoard logs."""
