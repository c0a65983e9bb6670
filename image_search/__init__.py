"""image-search: semantic image search over folders of images with CLIP, FAISS and a metadata store."""

__version__ = "1.0.0"
