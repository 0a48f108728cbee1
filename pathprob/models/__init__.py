"""Language models behind one protocol: the Transformer and the exact truths."""
