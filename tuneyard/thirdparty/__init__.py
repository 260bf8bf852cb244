"""Third-party models: external chat and embedding endpoints, with their keys kept encrypted."""
