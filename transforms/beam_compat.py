"""Work-arounds for Beam SDK behaviour that the pipelines depend on.

State-cache sizing (Beam 2.62 and 2.70, objsize 0.7; the SDK's statecache.py is
unchanged between the two): the SDK harness weighs every
value it puts into its user-state cache with ``objsize.get_deep_size``, which by
default first walks the globals of every loaded module to exclude them. With
the modules a pipeline worker has loaded (apache_beam, google-cloud, boto3 ...)
that walk costs about 2 ms per call, i.e. per state read or write: a stateful
step such as de-duplication ran at a few hundred elements per second on the
in-process runner. Cached user-state values are coders' decoded values (our
booleans and small dicts) that never reference module globals, and Beam's own
filter already skips modules, classes and functions, so weighing them without
the walk gives the same size at a fraction of the cost.

``use_fast_state_cache_sizing()`` is idempotent and process-wide; stateful DoFns
call it from ``setup()`` so it runs in whichever worker process hosts them.

Garbage collection (``relax_gc``): a worker allocates a dict per event per step
and keeps long-lived containers (bundle processors, caches, buffers), so
CPython's default generation-0 threshold (700 net container allocations)
starts a collection every few events; a py-spy profile of the frontend job's
SDK worker on Flink showed 11.5 % of its GIL time in ``gc_collect_main``.
Almost all of that garbage is freed by reference counting anyway; a higher
threshold only delays the collection of reference cycles.
"""
from __future__ import annotations

import gc

__all__ = ["use_fast_state_cache_sizing", "relax_gc", "WORKER_GC_THRESHOLD0"]

# Net container allocations between generation-0 collections in a worker.
WORKER_GC_THRESHOLD0 = 50_000


def relax_gc(threshold0: int = WORKER_GC_THRESHOLD0) -> int:
    """Raises CPython's generation-0 GC threshold to at least ``threshold0``.

    Process-wide and idempotent (never lowers a threshold someone set
    higher); the first DoFn of every pipeline calls it from ``setup()``.
    Returns the threshold in force.
    """
    current, gen1, gen2 = gc.get_threshold()
    if current < threshold0:
        gc.set_threshold(threshold0, gen1, gen2)
        return threshold0
    return current


def use_fast_state_cache_sizing() -> bool:
    """Makes the SDK state cache weigh values without the module-globals walk.

    Returns True when the replacement is (already) installed, False when this
    Beam version has no such hook (then nothing is changed).
    """
    try:
        import objsize
        from apache_beam.runners.worker import statecache
    except ImportError:  # pragma: no cover - both ship with apache-beam
        return False
    current = getattr(statecache, "get_deep_size", None)
    if current is None or not all(
        hasattr(statecache, name) for name in ("_size_func", "_get_referents_func", "_filter_func")
    ):
        return False
    if getattr(current, "_skips_module_globals", False):
        return True

    def get_deep_size(*objs):
        return objsize.get_deep_size(
            *objs,
            get_size_func=statecache._size_func,
            get_referents_func=statecache._get_referents_func,
            filter_func=statecache._filter_func,
            exclude_modules_globals=False,
        )

    get_deep_size._skips_module_globals = True
    statecache.get_deep_size = get_deep_size
    return True
