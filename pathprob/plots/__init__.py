"""Figures (matplotlib, Agg). Every figure is written as a PNG with the JSON of the data behind it."""
