"""Turning the plan's files into vectors, on this machine: reader processes decode while the model embeds.

An ingest calls its embedding step through one signature, EmbedFiles, so that a runner which embeds elsewhere
(a Ray cluster, say) can replace embed_locally. The step gets the loaded model (its name, device and
preprocessing) and the files' paths, and yields EmbeddedBatch-es (image_search/embedding.py): the vectors of the
files it could read, by their position in `paths`, the positions it could not read with the reason, and the
positions that are not images. Every position comes back exactly once, in any order; the ingest gives each
vector its id as its batch arrives, so memory does not grow with the number of files.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from ..pipeline.batches import EmbeddedBatch, embed_files
from ..models import Embedder

EmbedFiles = Callable[..., Iterator[EmbeddedBatch]]  # (embedder, paths, *, batch_size, workers, progress)


def embed_locally(embedder: Embedder, paths: Sequence[str], *, batch_size: int | None = None,
                  workers: int | None = None, progress: bool = True) -> Iterator[EmbeddedBatch]:
    """batch_size: images per model batch; workers: decoding processes (None: the defaults for the device)."""
    return embed_files(embedder, paths, batch_size=batch_size, workers=workers, progress=progress)
