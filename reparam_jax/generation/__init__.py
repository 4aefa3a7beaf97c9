"""Generation from trained models: text from a decoder LM, sentences from a text VAE."""
