"""Deleting an input iterator a run has finished with on a thread of its own.

Deleting a tf.data iterator joins its autotuning thread (tf.data's model thread). In
TensorFlow 2.21 that thread can miss the cancellation and sleep out its optimisation period
first, which grows to a minute: while another process trained, a search's processes waited
20-57 s between trials in `keras.backend.clear_session()`'s collection, in
`RootDataset::Iterator::~Iterator`. TensorFlow releases the GIL while it waits, so the
deletion can wait here while the run evaluates and the next one starts.
(docs/benchmarks.md, Hyperparameter search, has the measurements.)

Only iterators come here: the model, its variables and everything else of a run are still
freed by the caller's collection, before the next run builds its own.
"""
import gc
import threading
import time
import weakref

# A collection asked for while another thread collects returns at once without freeing
# anything; the thread tries again this many times, a second apart.
COLLECT_TRIES = 3


def delete_in_background(owner, attribute):
    """Take the iterator `owner.<attribute>` (set to None) and delete it on a new thread, which
    collects it too if a reference cycle holds it. The owner's reference must be the last one
    outside cycles. The thread is not a daemon: the interpreter's exit waits for it rather
    than unloading TensorFlow under it. Returns the thread, or None if there was nothing."""
    held = [getattr(owner, attribute)]
    setattr(owner, attribute, None)
    if held[0] is None:
        return None
    try:
        alive = weakref.ref(held[0])
    except TypeError:  # no weak references: collected once, whatever it was
        alive = None

    def delete():
        held.clear()  # the deletion, unless a cycle holds the iterator
        for _ in range(COLLECT_TRIES):
            if alive is not None and alive() is None:
                return
            if gc.collect() or alive is None:
                return  # a collection ran; an iterator it left is held elsewhere
            time.sleep(1.0)

    thread = threading.Thread(target=delete, name=f'delete-{attribute}')
    thread.start()
    return thread
