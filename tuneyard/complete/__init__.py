"""Complete models: adapters merged into their base (saved), or full fine-tunes."""
