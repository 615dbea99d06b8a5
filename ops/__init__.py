"""Operator commands around the pipeline, each a thin CLI over a function (``python -m ops.X``)."""
