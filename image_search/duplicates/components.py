"""Connected components of a graph given as edges: which images end up in one group.

Union-find over numpy arrays, so that the millions of edges of a large dataset's neighbour graph are joined in a
few vectorised passes rather than one Python step per edge: each pass hooks the larger root of every edge under
the smaller one, then compresses every path to its root, until no edge joins two roots.
"""

from __future__ import annotations

import numpy as np


def component_labels(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For nodes 0..count-1 and the undirected edges (first[i], second[i]), each node's component label: the
    smallest node of its component."""
    parent = np.arange(count, dtype=np.int64)
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    while len(first):
        a, b = parent[first], parent[second]  # roots: every path is compressed below
        joining = a != b
        if not joining.any():
            break
        a, b = a[joining], b[joining]
        first, second = first[joining], second[joining]  # edges inside one component are done for good
        # hooking only ever points a root at a smaller node, so no pass can make a cycle
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
        while True:
            grandparent = parent[parent]
            if np.array_equal(grandparent, parent):
                break
            parent = grandparent
    return parent


def components(nodes: np.ndarray, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
    """The components of more than one node, as arrays of node values (nodes: the distinct values that edges
    name, e.g. vector ids, sorted; first/second: the edges' two ends as such values), largest first."""
    nodes = np.asarray(nodes, dtype=np.int64)
    if not len(nodes) or not len(first):
        return []
    labels = component_labels(len(nodes), np.searchsorted(nodes, first), np.searchsorted(nodes, second))
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    groups = [nodes[order[start:stop]] for start, stop in zip(starts, np.r_[starts[1:], len(order)])
              if stop - start > 1]
    groups.sort(key=lambda group: (-len(group), int(group[0])))
    return groups
