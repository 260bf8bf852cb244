"""Knowledge bases: documents chunked and embedded for grounded chat and retrieval."""
