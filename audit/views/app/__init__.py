"""The Streamlit app: browse one results store, or compare two. Reads stores only (no TensorFlow)."""
