"""Tuneyard: one place for the lifecycle of fine-tuned language models."""

__version__ = "0.1.0"
