"""Customized models: the adapters trainings produce, tied to their base models."""
