"""Job bodies."""
