"""The shared domain: facts several processes agree on (no TensorFlow, TFX or Beam)."""
