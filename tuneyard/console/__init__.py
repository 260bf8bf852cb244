"""The web console: NiceGUI pages over the same services as the API, mounted at /console."""
