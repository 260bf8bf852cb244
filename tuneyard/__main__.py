"""`python -m tuneyard` runs the CLI."""

from tuneyard.cli import app

app()
