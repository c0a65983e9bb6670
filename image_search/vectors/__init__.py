"""Vector indexes: one per dataset, searched by inner product on L2-normalised vectors (cosine similarity)."""
