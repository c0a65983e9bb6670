"""The index kinds a dataset can be stored in (the value stored as the dataset's index_kind).

Names only, importing nothing, so that settings can be checked (image_search.config) without loading an index
backend. All kinds use inner product on L2-normalised vectors, which is cosine similarity.
"""

FLAT = "flat"  # exact: every query scans every vector
IVF = "ivf"  # approximate: vectors grouped around k-means centroids, a query scans the nprobe nearest groups
IVF_SQ8 = "ivf-sq8"  # IVF storing each vector as 8-bit codes: a quarter of the memory, slightly lower recall
HNSW = "hnsw"  # approximate: a navigable graph; fastest queries, slow to build, a removal rebuilds the graph
AUTO = "auto"  # not a kind: the setting that lets the dataset's size choose one (image_search.vectors.policy)
KINDS = (FLAT, IVF, IVF_SQ8, HNSW)
