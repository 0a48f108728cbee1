"""Path algorithms, written once against the LanguageModel protocol."""
