"""The ImageNet-size training input alone: images per second read, decoded and augmented
(random resized crop to 224, flip, normalise) per CPU core, and resident memory while
streaming a dataset larger than the cache budget.

    python benchmarks/input_pipeline.py                       # 1500 generated JPEGs, ~1-2 min
    python benchmarks/input_pipeline.py --images 20000 --dir /tmp/bench-jpegs   # kept for reruns
    python benchmarks/input_pipeline.py --dir /data/imagenet --no-generate       # a real folder
    python benchmarks/input_pipeline.py --regularisers     # CIFAR-size: each regulariser's cost

The dataset is an image folder (<dir>/train/<class>/<image>.jpg) of ImageNet-like JPEGs:
sides of 300-500 px, aspect ratios 3:4 to 4:3, quality 90, CIFAR-10 pictures from
../shared upscaled with grain added (about 90 kB a file, as ImageNet's photographs), or grain alone
where ../shared is absent. The pipeline is the runner's own (runner.data.loader.train_input,
imagenet style, streamed because the dataset is larger than --budget-mb).

With --regularisers: the cifar-style input of 32x32 images held in memory (random pixels: the
cost does not depend on them), once plain (flips and crops) and once with each regulariser
of docs/techniques.md at its paper's setting, with tf.data's own threads; images/s and
images per CPU-second of each, to compare with a training step's images/s.

Per core: the pipeline runs once on a private thread pool of one thread, once on one of
every core; images per CPU-second is images / (user + system CPU time of the process),
which other work on a shared machine does not inflate. Memory: resident set size sampled
every 50 ms while streaming. A benchmark, not a test: it asserts nothing.
"""
import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CIFAR_JPEG = os.path.join(os.path.dirname(ROOT), 'shared', 'datasets', 'cifar10-jpeg')


def generate(root, n, classes=10, seed=0):
    """n ImageNet-like JPEGs under root/train/<class>/ and a few under root/test/."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 20, (520, 520, 3)).astype(np.float32)
    names = sorted(os.listdir(os.path.join(CIFAR_JPEG, 'train')))[:classes] \
        if os.path.isdir(CIFAR_JPEG) else [f'class{c}' for c in range(classes)]
    for split, count in (('train', n), ('test', classes)):
        for k in range(count):
            c = names[k % classes]
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            short = int(rng.integers(300, 501))
            ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            h, w = (short, int(short * ratio)) if ratio >= 1 else (int(short / ratio), short)
            h, w = min(h, 500), min(w, 500)
            if os.path.isdir(CIFAR_JPEG):
                src = Image.open(os.path.join(CIFAR_JPEG, split, c, f'{k // classes % 1000:04d}.jpg'))
                base = np.asarray(src.convert('RGB').resize((w, h), Image.BICUBIC), np.float32)
            else:
                base = np.full((h, w, 3), 128, np.float32)
            y, x = rng.integers(0, 520 - h + 1), rng.integers(0, 520 - w + 1)
            img = np.clip(base + grain[y:y + h, x:x + w], 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f'{k:06d}.jpg'), quality=90)


class RssSampler(threading.Thread):
    """Resident set size (MB) every `interval` seconds, from /proc/self/statm."""

    def __init__(self, interval=0.05):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop = interval, [], threading.Event()

    @staticmethod
    def now():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), self.now()))
            time.sleep(self.interval)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine():
    model = ''
    try:
        with open('/proc/cpuinfo') as f:
            model = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), '')
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return cores, model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--images', type=int, default=1500, help='training images to generate (default 1500)')
    p.add_argument('--dir', help='where the image folder is (generated there if missing; default: a '
                                 'temporary directory, deleted after)')
    p.add_argument('--no-generate', action='store_true', help='--dir is an existing image folder')
    p.add_argument('--size', type=int, default=224, help='model input side (default 224)')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--batches', type=int, default=30, help='timed batches per thread setting')
    p.add_argument('--warmup', type=int, default=5, help='untimed batches first')
    p.add_argument('--budget-mb', type=int, default=64,
                   help='dataset.cache_budget_mb (default 64: smaller than the generated dataset, '
                        'so it is streamed)')
    p.add_argument('--regularisers', action='store_true',
                   help='time each regulariser on CIFAR-size images instead (--batch 128 suits)')
    a = p.parse_args()

    cores, model = machine()
    if a.regularisers:
        return regularisers(a, cores, model)
    load_before = os.getloadavg()
    tmp = None
    root = a.dir
    if root is None:
        root = tmp = tempfile.mkdtemp(prefix='convnet-bench-jpegs-')
    try:
        if not a.no_generate and not os.path.isdir(os.path.join(root, 'train')):
            t = time.perf_counter()
            generate(root, a.images)
            print(f'generated {a.images} JPEGs in {root} ({time.perf_counter() - t:.0f} s)', flush=True)
        run(a, root, cores, model, load_before)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(a, root, cores, model, load_before):
    import tensorflow as tf
    from runner.data import loader as data_loader, source as data_source, splits as data_splits
    from runner.config.schema import DatasetConfig

    cfg = DatasetConfig(image_folder=root, image_size=[a.size, a.size], preprocessing='imagenet',
                        cache_budget_mb=a.budget_mb, mean_std='imagenet')
    rss_start = RssSampler.now()
    data = data_loader.load(cfg)
    rss_loaded = RssSampler.now()
    n = data_splits.size(data.train)
    items = data_source.listing(cfg, 'train')
    decoded_mb = data_splits.estimate_bytes(items, data.prep) / 2 ** 20
    files_mb = sum(os.path.getsize(p) for p in items.paths) / 2 ** 20
    print(f'{n} training images, {files_mb:.0f} MB of JPEG, about {decoded_mb:.0f} MB decoded; '
          f'cache budget {a.budget_mb} MB: {"held in memory" if data_splits.cached(data.train) else "streamed"}')
    print(f'{cores} CPU cores ({model}); load average before: {load_before[0]:.1f}', flush=True)

    sampler = RssSampler()
    sampler.start()
    rows = []
    start_batch = 0
    for threads in sorted({1, cores}):
        opts = tf.data.Options()
        opts.threading.private_threadpool_size = threads
        opts.threading.max_intra_op_parallelism = 1
        ds = data_loader.train_input(data, cfg, a.batch, seed=0, start_batch=start_batch).with_options(opts)
        it = iter(ds)
        for _ in range(a.warmup):
            next(it)
        c0, t0 = cpu_seconds(), time.perf_counter()
        images = 0
        for _ in range(a.batches):
            x, y = next(it)
            images += int(y.shape[0])
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        rows.append((threads, images, wall, cpu))
        start_batch += a.warmup + a.batches + 1  # other images for the next setting
        del it, ds
    sampler.stop.set()
    sampler.join()
    load_after = os.getloadavg()

    print(f'\nimagenet-style training input, {a.size}x{a.size}, batch {a.batch}, {a.batches} batches '
          f'after {a.warmup} warm-up; images read from disk and decoded every time')
    print('| threads | images/s | CPU cores busy | images per CPU-second (per core) |')
    print('| --- | --- | --- | --- |')
    for threads, images, wall, cpu in rows:
        print(f'| {threads} | {images / wall:.0f} | {cpu / wall:.2f} | {images / cpu:.0f} |')
    samples = [mb for _, mb in sampler.samples]
    half = samples[len(samples) // 2:] or samples
    epochs = sum(r[1] for r in rows) / n
    print(f'\nresident memory while streaming ({epochs:.1f} epochs of {n} images, about '
          f'{decoded_mb:.0f} MB decoded): before loading {rss_start:.0f} MB, loaded {rss_loaded:.0f} MB, '
          f'peak {max(samples):.0f} MB, '
          f'steady (median of the second half) {statistics.median(half):.0f} MB; '
          f'process peak (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB')
    print(f'load average after: {load_after[0]:.1f}')


# Each regulariser at its paper's CIFAR setting (docs/techniques.md), as dataset keys.
REGULARISERS = (
    ('flips and crops only', {}),
    ('Cutout 16', {'cutout_size': 16}),
    ('random erasing p=0.5', {'random_erasing_prob': 0.5}),
    ('AutoAugment cifar10', {'autoaugment': 'cifar10'}),
    ('RandAugment N=3 M=5', {'randaugment_ops': 3, 'randaugment_magnitude': 5}),
    ('mixup alpha=1', {'mixup_alpha': 1.0}),
    ('CutMix alpha=1', {'cutmix_alpha': 1.0}),
)


def regularisers(a, cores, model):
    """Images per second of the cifar-style training input with each regulariser."""
    from runner.config.schema import DatasetConfig
    from runner.data import loader as data_loader
    from runner.data.info import DataInfo, Prep
    from runner.data.splits import synthetic
    info = DataInfo('random 32x32 images', (32, 32, 3), 10)
    train = synthetic(info, max(a.images, a.batch), seed=0)
    data = data_loader.Data(info, train, train, train, [0.5] * 3, [0.25] * 3, Prep('cifar', (32, 32)))
    print(f'{cores} CPU cores ({model}); load average before: {os.getloadavg()[0]:.1f}')
    print(f'\ncifar-style training input, 32x32, batch {a.batch}, {a.batches} batches after '
          f'{a.warmup} warm-up, in memory, tf.data\'s own threads')
    print('| regulariser | images/s | CPU cores busy | images per CPU-second |')
    print('| --- | --- | --- | --- |')
    for name, keys in REGULARISERS:
        cfg = DatasetConfig(**keys)
        it = iter(data_loader.train_input(data, cfg, a.batch, seed=0))
        for _ in range(a.warmup):
            next(it)
        c0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(a.batches):
            next(it)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        images = a.batches * a.batch
        print(f'| {name} | {images / wall:.0f} | {cpu / wall:.2f} | {images / cpu:.0f} |', flush=True)
        del it
    print(f'load average after: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
