"""Memory budget of alpha-CROWN's slope optimisation: estimate before allocating, keep what fits.

Optimising the intermediate bounds of a node gives every one of its unstable neurons (two rows
each) its own slopes on every ReLU below it: on a convolutional graph of ~15k ReLUs that is
tens of GB. :func:`fit_budget` keeps the nodes whose estimated working set fits the memory
limit (earliest first) and leaves the others at their starting bounds, which are sound.
"""

from __future__ import annotations

import warnings

from torch import Tensor

from advrobust.core.memory import default_memory_limit
from advrobust.errors import MemoryLimitError
from advrobust.network.graph import Graph
from advrobust.relax.dag import GraphBounds

__all__ = ["ancestors", "fit_budget", "sloped_nodes", "workset_bytes"]


def sloped_nodes(graph: Graph, best: GraphBounds) -> list[int]:
    """The nodes whose op has optimisable slopes (ReLU, LeakyReLU: ``init_slopes``)."""
    return [i for i, node in enumerate(graph.nodes) if node.op is not None
            and len(node.inputs) == 1
            and node.op.init_slopes(*best[node.inputs[0]], 1) is not None]


def ancestors(graph: Graph, index: int) -> set[int]:
    """Node ``index`` and every node it reads, directly or not."""
    seen, todo = set(), [index]
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(graph.nodes[i].inputs)
    return seen


def fit_budget(graph: Graph, best: GraphBounds, sloped: list[int], rows: int,
                targets: dict[int, tuple[Tensor, Tensor, list[int]]], budget: int | None
                ) -> dict[int, tuple[Tensor, Tensor, list[int]]]:
    """The targets whose optimisation fits ``budget`` bytes next to the final rows', earliest
    node first (a tighter early node tightens every later one); the others keep their
    (sound) starting bounds, with a warning naming the estimate. Raises
    :class:`~advrobust.errors.MemoryLimitError` if the final rows alone do not fit."""
    limit = default_memory_limit() if budget is None else budget
    final = workset_bytes(graph, best, sloped, set(range(len(graph.nodes))), rows)
    if final > limit:
        raise MemoryLimitError(
            f"alpha-CROWN: optimising the slopes of {rows} output rows needs about "
            f"{final / 2**20:.0f} MiB (estimated working set), above the memory limit of "
            f"{limit / 2**20:.0f} MiB; raise the limit or use CROWN.")
    kept: dict[int, tuple[Tensor, Tensor, list[int]]] = {}
    used, dropped, wanted = final, 0, 0
    for t, target in sorted(targets.items()):
        need = workset_bytes(graph, best, target[2], ancestors(graph, t), target[1].shape[1])
        if used + need <= limit:
            kept[t], used = target, used + need
        else:
            dropped, wanted = dropped + 1, wanted + need
    if dropped:
        warnings.warn(
            f"alpha-CROWN: the intermediate bounds of {dropped} of {len(targets)} nodes are not "
            f"optimised (they keep their CROWN bounds, still sound): optimising them needs "
            f"about {wanted / 2**20:.0f} MiB more than the memory limit of "
            f"{limit / 2**20:.0f} MiB allows (memory_limit / $ADVROBUST_MEMORY_LIMIT).",
            UserWarning, stacklevel=3)
    return kept


def workset_bytes(graph: Graph, best: GraphBounds, sloped: list[int], nodes: set[int],
                  rows: int) -> int:
    """Estimated bytes of optimising ``rows`` rows' slopes: each slope tensor with its
    gradient and Adam's two moments, and the coefficients autograd keeps at every node of the
    backward pass (about three node-sized tensors per row)."""
    lo = best[0][0]
    per_row = sum(4 * best[graph.nodes[j].inputs[0]][0].numel() for j in sloped if j in nodes)
    per_row += sum(3 * best[i][0].numel() for i in nodes)
    return per_row * rows * lo.element_size()
