"""The TFX image-classification pipeline: one definition, thin runners."""
