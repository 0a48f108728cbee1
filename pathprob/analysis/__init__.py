"""Analyses built on the engines: narrowing across prompts, training dynamics, embedding-space walks."""
