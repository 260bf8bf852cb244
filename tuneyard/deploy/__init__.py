"""Deploying models to serving tools, where they become live models."""
