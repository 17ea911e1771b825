"""The pipeline's stages: what each function does with one event."""
