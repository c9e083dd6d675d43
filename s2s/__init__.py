"""s2s: sequence-to-sequence models from raw parallel text to a registered model (see README.md)."""
