"""Sharding work across the processes of a Lightning run (a ``Trainer`` or a ``Fabric``).

Every helper takes the object that knows the process layout (anything with
``global_rank`` and ``world_size``: a Lightning ``Trainer``, a ``Fabric``; ``None`` is one
process) and uses ``torch.distributed`` only when a process group is initialized, so the
same code runs unchanged in one process.

- :func:`shard` / :func:`unshard`: rank ``r`` of ``w`` takes ``items[r::w]``, and back.
- :func:`gather_objects`: every rank's Python object, in rank order (a collective).
- :func:`broadcast_object`: rank zero's object on every rank.
- :func:`map_chunks`: ``fn`` over fixed chunks of a work list, chunk ``k`` on rank
  ``k mod w``, the results gathered in item order on every rank. The chunks do not depend
  on the number of processes, so a batched computation sees the same batch-mates (and gives
  the same bits) on one device or on eight. An exception on one rank is re-raised on every
  rank, naming the rank, instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def world(dist: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of ``dist`` (``(0, 1)`` for ``None``)."""
    return int(getattr(dist, "global_rank", 0)), int(getattr(dist, "world_size", 1))


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shard(items: Sequence[T], dist: Any) -> list[T]:
    """This rank's share ``items[rank::world]`` of the work."""
    rank, size = world(dist)
    return list(items[rank::size])


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of :func:`shard`: interleave the ranks' lists back into item order."""
    out: list[T] = []
    longest = max((len(p) for p in parts), default=0)
    for i in range(longest):
        for p in parts:
            if i < len(p):
                out.append(p[i])
    return out


def gather_objects(dist: Any, obj: T) -> list[T]:
    """All ranks' ``obj`` in rank order (a collective: every rank must call it)."""
    _, size = world(dist)
    if size == 1 or not _initialized():
        return [obj]
    out: list[Any] = [None] * size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(dist: Any, obj: T) -> T:
    """Rank zero's ``obj`` on every rank (a collective)."""
    _, size = world(dist)
    if size == 1 or not _initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def chunked(items: Sequence[T], chunk_size: int | None) -> list[list[T]]:
    """``items`` in the fixed chunks ``items[k·c:(k+1)·c]`` (``c = chunk_size``; ``None``:
    one chunk) that :func:`map_chunks` deals out; chunk ``k`` belongs to rank ``k mod world``."""
    c = max(1, int(chunk_size or len(items) or 1))
    return [list(items[s:s + c]) for s in range(0, len(items), c)]


def owned_items(items: Sequence[T], chunk_size: int | None, dist: Any) -> list[T]:
    """The items this rank computes in :func:`map_chunks` (its chunks, in order)."""
    rank, size = world(dist)
    return [x for chunk in chunked(items, chunk_size)[rank::size] for x in chunk]


def map_chunks(fn: Callable[[list[T]], list[R]], items: Sequence[T], dist: Any,
               chunk_size: int | None = None) -> tuple[list[R], list[list[T]]]:
    """``fn`` over the chunks ``items[k·c:(k+1)·c]`` (``c = chunk_size``, ``None``: one chunk),
    chunk ``k`` on rank ``k mod world``; every rank gets all results in item order.

    ``fn`` takes a chunk and returns one result per item (e.g. CPU tensors; they travel
    through ``all_gather_object``). Returns ``(results, shards)``, ``shards[r]`` being the
    items rank ``r`` computed. A collective: every rank must call it with the same items.
    """
    rank, size = world(dist)
    chunks = chunked(items, chunk_size)
    shards = [[x for chunk in chunks[r::size] for x in chunk] for r in range(size)]
    if size == 1 or not _initialized():  # one process: errors propagate as they are
        return [r for chunk in chunks for r in _checked(fn, chunk, rank)], shards
    mine: list[tuple[int, list[R]]] = []
    error = None
    for k in range(rank, len(chunks), size):
        try:
            mine.append((k, _checked(fn, chunks[k], rank)))
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            error = f"rank {rank}: {type(err).__name__}: {err}"
            break
    parts = gather_objects(dist, {"done": mine, "error": error})
    errors = [p["error"] for p in parts if p["error"]]
    if errors:
        raise RuntimeError("; ".join(errors))
    by_chunk = {k: out for p in parts for k, out in p["done"]}
    return [r for k in range(len(chunks)) for r in by_chunk[k]], shards


def _checked(fn: Callable[[list[T]], list[R]], chunk: list[T], rank: int) -> list[R]:
    out = list(fn(chunk))
    if len(out) != len(chunk):
        raise ValueError(f"rank {rank}: {getattr(fn, '__name__', 'fn')} returned {len(out)} "
                         f"results for a chunk of {len(chunk)} items")
    return out


__all__ = ["broadcast_object", "chunked", "gather_objects", "map_chunks", "owned_items", "shard",
           "unshard", "world"]
