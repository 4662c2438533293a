"""`kielo push`: a run's adapter, model card and optional GGUF uploaded to a hub model repository."""
