"""Tokenizers and languages (synthetic with exact truth, or text)."""
