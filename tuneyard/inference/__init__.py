"""Chat with local models in a process of their own that keeps them loaded between requests."""
