"""User code run inside TFX components, split by TFX contract (given to TFX by module path)."""
