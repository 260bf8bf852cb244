"""Knowledge bases: documents, chunking, embeddings, the index, search and grounded chat."""
