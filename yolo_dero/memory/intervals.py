"""Buffer lifetimes and arena placement: the interval core shared by the analyzer's engines and the offline planner.

A buffer is an *interval* ``(size bytes, first op, last op)``, lifetimes inclusive at both ends. Two buffers may
share arena bytes only if their lifetimes do not overlap. Pure Python (no torch): :mod:`yolo_dero.memory.engines`
places the buffers of a recorded trace with it, :mod:`yolo_dero.mcu.offline_plan` those of a ``.tflite`` graph.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

#: ``(size bytes, first operator, last operator)``, both ends inclusive
Interval = Tuple[int, int, int]


def overlap(a: Interval, b: Interval) -> bool:
    """True where the two lifetimes share an operator."""
    return a[1] <= b[2] and b[1] <= a[2]


def live_profile(intervals: Sequence[Interval], n_ops: int) -> List[int]:
    """Bytes live while each of ``n_ops`` operators runs (the sum of the intervals that contain it)."""
    delta = [0] * (n_ops + 1)
    for size, a, b in intervals:
        delta[a] += size
        delta[b + 1] -= size
    prof, run = [], 0
    for i in range(n_ops):
        run += delta[i]
        prof.append(run)
    return prof


def place(intervals: Sequence[Interval], order: Sequence[int], best_fit: bool = False) -> Tuple[int, List[int]]:
    """Place the intervals one by one in ``order``, each at an offset where it overlaps, in arena bytes, no already
    placed interval whose lifetime overlaps its own: the lowest such offset (first-fit) or the start of the smallest
    gap that holds it (best-fit; the top of the busy bytes when no gap does). Returns ``(arena head, offsets)``."""
    offs = [-1] * len(intervals)
    placed: List[int] = []
    head = 0
    for i in order:
        size, a, b = intervals[i]
        busy = sorted((offs[j], offs[j] + intervals[j][0]) for j in placed
                      if intervals[j][1] <= b and a <= intervals[j][2])
        cand, pos, best = None, 0, None
        for s, e in busy:
            if s - pos >= size:
                if not best_fit:
                    cand = pos
                    break
                if best is None or s - pos < best[0]:
                    best = (s - pos, pos)
            pos = max(pos, e)
        if cand is None:
            cand = best[1] if best is not None else pos
        offs[i] = cand
        placed.append(i)
        head = max(head, cand + size)
    return head, offs


def tflm_order(intervals: Sequence[Interval], tie: str = "reverse") -> List[int]:
    """TFLM's GreedyMemoryPlanner order: largest first; TFLM fills its online-planned list from the tail and sorts it
    with a stable descending bubble sort, so equal sizes go in *reverse* tensor order (``tie="reverse"``);
    ``tie="forward"`` breaks ties by tensor order instead."""
    order = list(range(len(intervals)))
    if tie == "reverse":
        order.reverse()
    elif tie != "forward":
        raise ValueError("tie must be 'reverse' or 'forward'")
    order.sort(key=lambda i: -intervals[i][0])  # stable
    return order


def greedy_arena(intervals: Sequence[Interval], tie: str = "reverse") -> Tuple[int, List[int]]:
    """TFLM's GreedyMemoryPlanner: place buffers largest first (:func:`tflm_order`) at the lowest offset that fits.

    ``intervals`` are in tensor order. Gaps left by first-fit can make the arena larger than the largest live set.
    Returns ``(arena bytes, offsets)``.
    """
    return place(intervals, tflm_order(intervals, tie), best_fit=False)
