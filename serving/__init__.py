"""Serving: the prediction gateway in front of the pushed model (``python -m serving``)."""
