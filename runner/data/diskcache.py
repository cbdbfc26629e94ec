"""What the runner keeps between runs under `$XDG_CACHE_HOME/convnet-runner` (default
`~/.cache/convnet-runner`): arrays it derived from a dataset's files and can derive again,
each named by a key of those files' paths, sizes and modification times (`file_stamps`), so
a file changed, added or removed gives another key and a stale entry is never read.

- `tfrecord-index/`: the byte offset of every record of TFRecord shards (listings);
- `decoded/`: a split decoded into memory, so the next run that holds it reads it back in
  a second instead of decoding every image again (splits; issue 31, start-up).

Entries are written atomically; one that cannot be read is derived again and replaced.
The directory is only a cache: a machine where it cannot be written derives every time.
"""
import hashlib
import os
import zipfile

import numpy as np
import tensorflow as tf

# The decoded copies together stay under this size; the least recently used go first.
DECODED_LIMIT_BYTES = 8 * 2 ** 30


def cache_dir(kind):
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'convnet-runner', kind)


class Gone(Exception):
    """A file to stamp cannot be read: `path`, and the error `cause`."""

    def __init__(self, path, cause):
        super().__init__(f'{path}: {cause}')
        self.path, self.cause = path, cause


def file_stamps(paths):
    """[(path, size, modification time in ns)] of each file; Gone if one cannot be stat'ed."""
    stamps = []
    for f in paths:
        f = str(f)
        try:
            if '://' in f:
                st = tf.io.gfile.stat(f)
                stamps.append((f, st.length, st.mtime_nsec))
            else:
                # os.stat: tf.io.gfile.stat gives local times in whole seconds only, so a
                # file rewritten within the second at the same size kept its stale entry.
                st = os.stat(f)
                stamps.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
        except (tf.errors.OpError, OSError) as e:
            raise Gone(f, e) from None
    return stamps


def entry_path(kind, *key):
    """The entry of `kind` for a key (any repr-able values, file stamps among them)."""
    return os.path.join(cache_dir(kind), hashlib.sha1(repr(key).encode()).hexdigest() + '.npz')


def load(path):
    """{name: array} of an entry, or None if there is none or it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        os.utime(path)  # recently used: evicted last
        return arrays
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # cut short, damaged
        return None


def save(path, limit_bytes=None, **arrays):
    """Write an entry atomically; with `limit_bytes`, then remove the least recently used
    entries of its directory until they fit. A cache that cannot be written is skipped."""
    tmp = f'{path}.{os.getpid()}.tmp.npz'
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        return
    if limit_bytes is not None:
        evict(os.path.dirname(path), limit_bytes, keep=path)


def evict(directory, limit_bytes, keep=None):
    """Remove the least recently used entries of `directory` until the rest fit the limit."""
    entries = []
    for name in os.listdir(directory):
        p = os.path.join(directory, name)
        try:
            st = os.stat(p)
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= limit_bytes:
            break
        if p == keep:
            continue
        try:
            os.remove(p)
            total -= size
        except OSError:
            pass
