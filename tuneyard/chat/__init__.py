"""Chat with any model in the yard (DeepText), and the OpenAI-compatible gateway."""
