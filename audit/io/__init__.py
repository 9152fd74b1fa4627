"""Sources: turn user files into a model adapter and a batched, annotated dataset."""
