"""Input pipelines: TFDS, an image folder, list files or TFRecords, into tf.data.

The modules, bottom up:

- runner.data.listings: where a split's images are (a listing of items and labels, nothing
  decoded).
- runner.data.source: which source, TFDS builders (prepared, downloaded, manual archives),
  the listing of a split of any source.
- runner.data.transforms: decoding, the `cifar` and `imagenet` preprocessing styles,
  normalisation and augmentation (graph functions).
- runner.data.info: describing a dataset without reading it (DataInfo, Prep) and the size
  mistakes caught before step 1.
- runner.data.splits: splits held in memory when they fit `dataset.cache_budget_mb`, else
  streamed from disk; the held-out validation split; unreadable files skipped and named.
- runner.data.stats: per-channel mean and standard deviation.
- runner.data.pipeline: resumable training batches (a function of the seed alone, so
  `start_batch` resumes them exactly) and evaluation batches.
- runner.data.loader: everything one experiment reads (`load`), `train_input`, `eval_input`.
"""
