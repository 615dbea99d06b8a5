"""Builders for the pipeline's TFX components and their configuration protos."""
