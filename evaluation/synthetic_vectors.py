"""Synthetic embeddings shaped like a photo collection's, for index benchmarks at sizes no test folder reaches.

Real CLIP image embeddings are not uniform on the sphere: they sit in a narrow cone (every pair of photos has a
positive cosine), they form topic clusters that themselves group into broader themes, and the variation inside a
theme spans far fewer dimensions than 512. Uniform random vectors would make every approximate index look bad
(nearest neighbours in isotropic 512-d noise are barely nearer than anything else) and one tight blob per cluster
would make them all look perfect; this generator sits in between on purpose:

    x = normalise(cone * shared + topic centre + spread * theme_basis @ z + noise * e)

with 64 themes of 16 topics each, a 48-d basis per theme (so topics of a theme blend into each other, as real
subjects do) and isotropic noise. Nearest stored neighbours have a cosine of about 0.75 and unrelated photos about
0.35.
Queries are made the way text queries behave: not near-copies of a stored image but a blend of one or two topics
plus noise, so their neighbours straddle clusters (the hard case for IVF and HNSW).

Everything is generated in chunks from fixed seeds, so 1,000,000 x 512 vectors never need more than the output
array, and the same size always gives the same vectors.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

DIM = 512
THEMES = 64
TOPICS_PER_THEME = 16
THEME_RANK = 48
CONE = 0.9  # weight of the direction every embedding shares
SPREAD = 1.0  # within-theme variation along its low-dimensional basis
NOISE = 0.5  # isotropic noise


class SyntheticCollection:
    def __init__(self, dim: int = DIM, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.shared = _unit(rng.standard_normal(dim, dtype=np.float32))
        theme_centres = _unit(rng.standard_normal((THEMES, dim), dtype=np.float32))
        topic_offsets = _unit(rng.standard_normal((THEMES, TOPICS_PER_THEME, dim), dtype=np.float32))
        # topics of one theme are related: their centres lean towards the theme's centre
        self.topics = _unit(theme_centres[:, None, :] + 0.7 * topic_offsets).reshape(-1, dim).astype(np.float32)
        # scaled so that theme_basis @ z has about unit length for z ~ N(0, I)
        self.bases = rng.standard_normal((THEMES, THEME_RANK, dim), dtype=np.float32) / np.sqrt(THEME_RANK * dim)
        # topics are not equally popular (a few subjects dominate a real case)
        weights = rng.pareto(1.5, THEMES * TOPICS_PER_THEME) + 0.05
        self.topic_p = (weights / weights.sum()).astype(np.float64)
        self.seed = seed

    def _points(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        n = len(topics)
        themes = topics // TOPICS_PER_THEME
        z = rng.standard_normal((n, THEME_RANK), dtype=np.float32)
        x = CONE * self.shared + self.topics[topics]
        # one matrix product per theme over a contiguous block (many tiny products are slow on a busy machine)
        order = np.argsort(themes, kind="stable")
        bounds = np.searchsorted(themes[order], np.arange(THEMES + 1))
        variation = np.empty_like(x)
        for theme in range(THEMES):
            rows = order[bounds[theme]:bounds[theme + 1]]
            if len(rows):
                variation[rows] = z[rows] @ self.bases[theme]
        x += SPREAD * variation
        x += (NOISE / np.sqrt(self.dim)) * rng.standard_normal((n, self.dim), dtype=np.float32)
        return _unit(x)

    def vectors(self, count: int, chunk: int = 250_000) -> Iterator[np.ndarray]:
        """The collection's first `count` vectors, in chunks (float32, L2-normalised)."""
        for start in range(0, count, chunk):
            rng = np.random.default_rng((self.seed, 1, start))
            n = min(chunk, count - start)
            topics = rng.choice(len(self.topics), size=n, p=self.topic_p)
            yield self._points(rng, topics)

    def all_vectors(self, count: int) -> np.ndarray:
        out = np.empty((count, self.dim), dtype=np.float32)
        position = 0
        for block in self.vectors(count):
            out[position:position + len(block)] = block
            position += len(block)
        return out

    def queries(self, count: int) -> np.ndarray:
        """Text-like queries: one or two topics blended, further from any stored vector than stored vectors are
        from each other."""
        rng = np.random.default_rng((self.seed, 2))
        first = rng.choice(len(self.topics), size=count, p=self.topic_p)
        second = rng.choice(len(self.topics), size=count, p=self.topic_p)
        blend = np.where(rng.random(count) < 0.5, 0.0, rng.uniform(0.3, 0.5, count)).astype(np.float32)[:, None]
        a = self._points(rng, first)
        b = self._points(rng, second)
        noise = rng.standard_normal((count, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        return _unit((1 - blend) * a + blend * b + 0.5 * noise)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
