"""What start-up made is set aside from the garbage collector: a full collection then
walks only what the daemon made since, and stops its threads for milliseconds, not for
the tenths of a second that walking the modules, schema and rules took."""

from __future__ import annotations

import gc
import weakref

from middleware.daemon import set_aside_what_start_up_made


class _Node:
    other: object = None


def test_what_start_up_made_is_no_longer_walked_by_a_full_collection() -> None:
    made = [[n] for n in range(10_000)]  # lists: objects the collector tracks
    left_behind = _Node()
    left_behind.other = left_behind  # a cycle: collected first, not set aside
    gone = weakref.ref(left_behind)
    del left_behind
    try:
        set_aside_what_start_up_made()
        assert gone() is None
        assert gc.get_freeze_count() >= len(made)
        walked = {id(o) for o in gc.get_objects(generation=2)}
        assert id(made) not in walked and id(made[0]) not in walked
        later = [[1]]
        gc.collect(1)  # survivors of the younger collections reach the walked generation
        assert id(later) in {id(o) for o in gc.get_objects(generation=2)}
    finally:
        gc.unfreeze()
