"""Images per second of this tool against the alternatives, side by side, in one run.

    python bench.py                  # the tables: about 10 minutes on 2 CPU cores
    python bench.py --json           # the same as one JSON object
    python bench.py --pairs 5 --steps 3 --precision fp32

1. input pipeline: data.train_pipeline against a naive one (serial map, whole-image decode, then
   resize and crop, no prefetch) on ~500 generated JPEGs 512 px on the long side;
2. training step: this tool's graph (model.classifier, momentum, --precision, --xla) against
   Keras 3's `keras.applications.VGG19(weights=None)` with a new head, SGD with momentum,
   `train_on_batch`, on the same batch;
3. inference: inference.Predictor against the Keras model's `predict_on_batch`;
4. the matrix-multiply ceiling of this machine in float32 and bfloat16, beside the training
   step's achieved GFLOP/s;
6. cache: head-only training (fc8, as the demo) on 300 images in 12 classes (the demo's photos,
   cat and brick) at --cache-image-size for
   --cache-epochs, from the same frozen weights (a random He-initialised VGG19 checkpoint, as no
   ImageNet one can be fetched here): train.py with the feature cache (building it included)
   against train.py without it, a second run with other head settings that reuses the cache,
   and Keras 3's frozen-base recipe (VGG19(include_top=False), trainable=False, a new dense
   head, image_dataset_from_directory, random crop and flip layers, `fit` for the same epochs,
   the same precision); the wall-clock of each whole command, and its validation accuracy, in
   the precision training picks (the last one measured), and each train.py run's accuracy on
   960 other crops of the same photos (evaluate.py), steadier than 60 validation images;
5. scale: what a run costs at two dataset sizes (--scale-images, synthetic: small JPEGs in 101
   class folders), one step of train.py each: the start-up to the first step, the image
   check's images/s, peak memory, graph.pbtxt and .meta size, the end of the run (from the
   final validation, the last hook to end after the final checkpoint, to train() returning),
   and their ratios.

Shared machines swing 2x from one minute to the next, so each comparison runs its two sides in
alternation (a warm-up of each, then A B A B ...) and reports the median of the pair-by-pair
ratios, with their min and max: a ratio of neighbours holds where an absolute time does not.
Steps 2 to 4 run once for each precision: fp32 always, and the mixed precision that training's
`--precision auto` picks where the machine runs it natively (bf16 on CPUs with AMX or
AVX512-BF16, fp16 on recent GPUs), each with a table of its own; Keras runs the same precision
through its matching mixed-precision policy. --precision X runs X alone. --xla compiles this
tool's side with XLA, --keras-xla the Keras side (whose default, jit_compile='auto', compiles
only on GPUs).
"""
import contextlib
import glob
import json
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import imageio.v3 as iio
import numpy as np
import skimage.data
import tensorflow as tf2
import tensorflow.compat.v1 as tf
import tf_slim as slim

import cli
import data
import demo
import inference
import model
import parallel
import rundir
import train

# VGG19 forward at 224 px: 19.6 G multiply-adds an image (2 FLOPs each); a training step
# (forward, gradients of activations and of weights) costs about three forwards. Convolutions
# scale with the image area; at other sizes the figure is that scaling, an estimate.
VGG19_MACS_224 = 19.6e9
TRAIN_STEP_FORWARDS = 3
PARTS = ('pipeline', 'train', 'inference', 'matmul', 'scale', 'cache')
DTYPES = {'fp32': tf.float32, 'bf16': tf.bfloat16, 'fp16': tf.float16}
KERAS_POLICY = {'fp32': 'float32', 'bf16': 'mixed_bfloat16', 'fp16': 'mixed_float16'}


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--images', type=int, default=500, help='generated JPEGs for the pipeline')
    p.add_argument('--long-side', type=int, default=512, help='of the generated JPEGs')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--classes', type=int, default=101, help='of the new head (Food-101: 101)')
    p.add_argument('--pairs', type=int, default=3, help='A-B pairs timed after the warm-up')
    p.add_argument('--steps', type=int, default=1, help='training steps in each timing')
    p.add_argument('--pipeline-batches', type=int, default=16, help='batches in each timing')
    p.add_argument('--skip', default='', help='comma-separated parts not to run: '
                                              'pipeline,train,inference,matmul,scale,cache')
    p.add_argument('--cache-image-size', type=int, default=128, help='of the cache part')
    p.add_argument('--cache-epochs', type=int, default=20, help='of the cache part')
    p.add_argument('--scale-images', default='2020,8080',
                   help='the two dataset sizes of the scale part (e.g. 101000,1000000: '
                        'Food-101 and ImageNet-sized, an hour and ~25 GB of disk)')
    p.add_argument('--json', action='store_true', help='print one JSON object, no table')
    p.add_argument('--precision', choices=('all',) + hardware.PRECISIONS, default='all',
                   help='all: fp32 and the mixed precision that training picks on this machine')
    p.add_argument('--xla', action=hardware.XlaFlag, help="compile this tool's side with XLA")
    p.add_argument('--keras-xla', action='store_true',
                   help="compile the Keras side with XLA (jit_compile=True); Keras' own default "
                        'compiles only on GPUs')
    args = p.parse_args(argv)
    unknown = set(cli.comma_list(args.skip)) - set(PARTS)
    if unknown:
        p.error('--skip %s: the parts are %s' % (','.join(sorted(unknown)), ','.join(PARTS)))
    for flag in ('images', 'batch_size', 'classes', 'pairs', 'steps', 'pipeline_batches',
                 'cache_epochs'):
        if getattr(args, flag) < 1:
            p.error('--%s must be at least 1' % flag.replace('_', '-'))
    try:
        args.scale_images = [int(n) for n in args.scale_images.split(',')]
    except ValueError:
        args.scale_images = []
    if len(args.scale_images) != 2 or min(args.scale_images) < 2 * SCALE_CLASSES:
        p.error('--scale-images must be two sizes of at least %d, e.g. 2020,8080'
                % (2 * SCALE_CLASSES))
    if min(args.image_size, args.cache_image_size) < 32 or args.long_side < args.image_size:
        p.error('--image-size and --cache-image-size must be at least 32, and --long-side at '
                'least --image-size')
    return args


# ---------------------------------------------------------------------------------------------
# Timing: alternate the sides, compare neighbours.

def paired(side_a, side_b, pairs):
    """Run side_a() and side_b() (each returns images/s) once each to warm up, then `pairs`
    times in alternation. Returns {a, b: median images/s; ratio, ratio_min, ratio_max: of a/b
    pair by pair}."""
    side_a(), side_b()
    rates = [(side_a(), side_b()) for _ in range(pairs)]
    ratios = [a / b for a, b in rates]
    return {'a': statistics.median(a for a, _ in rates),
            'b': statistics.median(b for _, b in rates),
            'ratio': statistics.median(ratios), 'ratio_min': min(ratios),
            'ratio_max': max(ratios)}


def seconds(run):
    """How long `run()` takes."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def images_per_second(run, images):
    """`run()` timed; `images` per call over its seconds."""
    return images / seconds(run)


# ---------------------------------------------------------------------------------------------
# 1. Input pipeline.

def make_jpegs(directory, count, long_side, seed=0):
    """`count` JPEGs (quality 90) `long_side` px on the long side, 3:4 or 4:3, cut from the
    scikit-image photos; their paths."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(getattr(skimage.data, name)()) for name in demo.PHOTOS]
    photos = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in photos]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)][..., :3]
        crop = demo.random_crops(photo, 1, rng, size=long_side)[0]
        short = long_side * 3 // 4
        crop = crop[:short] if i % 2 else crop[:, :short]
        paths.append(os.path.join(directory, '%04d.jpg' % i))
        iio.imwrite(paths[-1], crop, quality=90)
    return paths


def naive_pipeline(paths, image_size, batch_size):
    """The recipe this tool replaces: one image at a time, the whole JPEG decoded, resized, then
    cropped (the same augmentation as data.preprocess_for_train), no prefetch."""
    side_min, side_max = data.resize_side_range(image_size)

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        side = tf.random.uniform([], side_min, side_max + 1, dtype=tf.int32)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.cast(side, tf.float32) / tf.reduce_min(shape)
        size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), side)
        image = tf.image.resize(image, size)
        image = tf.image.random_crop(image, [image_size, image_size, 3])
        return tf.image.random_flip_left_right(image) - tf.constant(data.MEANS)
    ds = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths)).repeat()
    return ds.map(load).batch(batch_size, drop_remainder=True)


def bench_pipeline(args, directory):
    paths = make_jpegs(directory, args.images, args.long_side)
    split = data.Split(paths, [i % args.classes for i in range(len(paths))])
    sides = []
    for ds in (data.train_pipeline(split, args.image_size, args.batch_size, seed=0).map(
            lambda images, labels: images),
            naive_pipeline(paths, args.image_size, args.batch_size)):
        # A fresh iterator for each timing: what a prefetching pipeline buffered while the
        # other side was timed must not count, and its start-up must.
        iterator = tf.data.make_initializable_iterator(ds)
        batch = iterator.get_next()

        def side(batch=batch, initializer=iterator.initializer):
            def run():
                session.run(initializer)
                for _ in range(args.pipeline_batches):
                    session.run(batch)
            return images_per_second(run, args.pipeline_batches * args.batch_size)
        sides.append(side)
    with tf.Session() as session:
        return paired(sides[0], sides[1], args.pairs)


# ---------------------------------------------------------------------------------------------
# 2 and 3. Training step and inference: this tool's graph, and Keras.

def settings_for(args):
    return rundir.model_settings(['class_%d' % i for i in range(args.classes)],
                                 ['Class %d' % i for i in range(args.classes)], args.image_size)


class SlimTrainer:
    """train.py's step on a fixed batch, with its default flags: train.tower_loss (VGG19, cross
    entropy, weight decay), parallel.minimize with momentum 0.9 (loss-scaled for fp16),
    hardware.session_config."""

    def __init__(self, args, images, labels, precision):
        self.settings = settings_for(args)
        self.graph = tf.Graph()
        with self.graph.as_default():
            batch = tf.data.make_one_shot_iterator(
                tf.data.Dataset.from_tensors((images, labels)).repeat()).get_next()
            loss = train.tower_loss(batch[0], batch[1], self.settings)
            optimizer = hardware.loss_scaled(tf.train.MomentumOptimizer(1e-3, 0.9), precision)
            self.train_op = parallel.minimize(optimizer, [loss['total_loss']], [None], None,
                                              tf.trainable_variables(), None)
            self.saver = tf.train.Saver(slim.get_model_variables())
            init = tf.global_variables_initializer()
            self.graph.finalize()
        self.session = tf.Session(graph=self.graph,
                                  config=hardware.session_config(precision, args.xla))
        self.session.run(init)

    def step(self):
        self.session.run(self.train_op)

    def save(self, directory):
        """A checkpoint directory as training leaves one, for inference.Predictor."""
        rundir.save_settings(directory, self.settings)
        with self.graph.as_default():  # Keras keeps this process eager
            self.saver.save(self.session, os.path.join(directory, rundir.CHECKPOINT_PREFIX))


def keras_vgg19(args, precision):
    """Keras 3's VGG19 with a new head for --classes, compiled as its tutorials do."""
    import keras
    keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    base = keras.applications.VGG19(weights=None, include_top=False,
                                    input_shape=(args.image_size, args.image_size, 3))
    x = keras.layers.Flatten()(base.output)
    for _ in range(2):
        x = keras.layers.Dense(4096, activation='relu')(x)
        x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(args.classes, activation='softmax', dtype='float32')(x)
    net = keras.Model(base.input, outputs)
    net.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
                loss='sparse_categorical_crossentropy',
                jit_compile=True if args.keras_xla else 'auto')
    return net


def fixed_batch(args):
    """The batch both sides train and predict on, the same in every process."""
    rng = np.random.default_rng(0)
    images = (rng.uniform(0, 255, [args.batch_size, args.image_size, args.image_size, 3])
              - data.MEANS).astype(np.float32)
    return images, rng.integers(0, args.classes, args.batch_size).astype(np.int32)


def serve_side(connection, side, args, precision, directory):
    """A side of the comparison in a process of its own: answers each 'train' or 'inference'
    sent through `connection` with that side's images/s on the fixed batch.

    Each side has its own process because Keras needs TensorFlow's eager runtime, whose thread
    pools slow a graph session sharing the process (measured: the demo's steps 40% slower).
    """
    logging.basicConfig(level=logging.WARNING)
    tf.get_logger().setLevel(logging.ERROR)
    images, labels = fixed_batch(args)
    n, steps = args.batch_size, args.steps
    if side == 'ours':
        tf.disable_eager_execution()
        trainer, predictor = SlimTrainer(args, images, labels, precision), None
    else:
        net = keras_vgg19(args, precision)
    for task in iter(connection.recv, None):
        if side == 'ours' and task == 'train':
            rate = images_per_second(lambda: [trainer.step() for _ in range(steps)], n * steps)
        elif side == 'ours':
            if predictor is None:
                trainer.save(directory)
                trainer.session.close()  # its memory, before the Predictor loads the weights
                predictor = inference.Predictor(directory, precision=precision, xla=args.xla)
            rate = images_per_second(lambda: predictor.probabilities(list(images)), n)
        elif task == 'train':
            rate = images_per_second(
                lambda: [net.train_on_batch(images, labels) for _ in range(steps)], n * steps)
        else:
            rate = images_per_second(lambda: net.predict_on_batch(images), n)
        connection.send(rate)


def bench_model(args, directory, precision, skip):
    """{'train': paired, 'inference': paired} of this tool against Keras, on one batch, each
    side in a process of its own, the two alternating."""
    context = multiprocessing.get_context('spawn')  # a fresh TensorFlow in each
    sides = []
    for side in ('ours', 'keras'):
        here, there = context.Pipe()
        process = context.Process(target=serve_side, args=(there, side, args, precision,
                                                           directory), daemon=True)
        process.start()
        there.close()  # the child's end: a child that dies then reads as EOF here
        sides.append((here, process))

    def ask(index, task):
        def run():
            connection = sides[index][0]
            try:
                connection.send(task)
                return connection.recv()
            except (EOFError, BrokenPipeError):
                raise RuntimeError('the %s side of the benchmark died (out of memory?)'
                                   % ('Keras' if index else "this tool's"))
        return run
    try:
        return {task: paired(ask(0, task), ask(1, task), args.pairs)
                for task in ('train', 'inference') if task not in skip}
    finally:
        for connection, process in sides:
            with contextlib.suppress(BrokenPipeError):  # a side that died is gone already
                connection.send(None)
            process.join(60)


# ---------------------------------------------------------------------------------------------
# 4. The machine's matrix-multiply ceiling.

def matmul_gflops(dtype, n=2048, repeats=10, at_least=5.0):
    """Best GFLOP/s of an n x n matmul in `dtype` through TensorFlow, over `repeats` runs and
    at least `at_least` seconds: a ceiling has to outlast the bursts of a shared machine (five
    runs in a busy second once put bf16's below the training step it bounds)."""
    with tf.Graph().as_default():
        a = tf.Variable(tf.random.normal([n, n]), dtype=tf.float32)
        product = tf.reduce_sum(tf.matmul(tf.cast(a, dtype), tf.cast(a, dtype)))
        with tf.Session() as session:
            session.run(a.initializer)
            session.run(product)
            times, start = [], time.perf_counter()
            while len(times) < repeats or time.perf_counter() - start < at_least:
                times.append(seconds(lambda: session.run(product)))
    return 2 * n ** 3 / min(times) / 1e9


def train_gflop_per_image(image_size):
    return TRAIN_STEP_FORWARDS * 2 * VGG19_MACS_224 * (image_size / 224) ** 2 / 1e9


# ---------------------------------------------------------------------------------------------
# 5. What grows with the dataset.

SCALE_CLASSES = 101  # Food-101's
SCALE_FLAGS = ['--pretrained', 'none', '--max-steps', '1', '--image-size', '32',
               '--trainable-scopes', 'vgg_19/fc8', '--validate-every', '0']


class Marks(tf.train.SessionRunHook):
    """The times of the first step's end and of the end of the hooks before it (the final
    checkpoint's, then the final validation's)."""

    def __init__(self, times):
        self.times = times

    def after_run(self, run_context, run_values):
        self.times.setdefault('first_step', time.time())

    def end(self, session):
        self.times['end'] = time.time()


def scale_run(connection, root, out, started, flags=()):
    """One step of train.py on `root` into `out` (SCALE_FLAGS, then `flags`), in a process of
    its own (`started`: when the parent started it); sends its figures through `connection`."""
    import resource
    logging.basicConfig(level=logging.WARNING)
    tf.get_logger().setLevel(logging.ERROR)
    tf.disable_eager_execution()
    args = train.parse_args(['--dataset', root, '--checkpoint-dir', out] + SCALE_FLAGS +
                            list(flags))
    # The image check on its own, as train.py runs it; training then reuses its cache.
    dataset = data.load_dataset(root)
    os.makedirs(out)
    check = seconds(lambda: data.drop_unreadable(
        dataset, cache_file=os.path.join(out, rundir.UNREADABLE_FILE),
        resize_side=data.resize_side_range(args.image_size)[0]))
    times = {}
    with tf.Graph().as_default():
        train.train(args, [Marks(times)])
    done = time.time()
    meta = max(glob.glob(os.path.join(out, 'model.ckpt-*.meta')), key=os.path.getmtime)
    connection.send({
        'images': len(dataset.train.paths) + len(dataset.validation.paths),
        'startup_s': times['first_step'] - started, 'check_images_per_s': (
            len(dataset.train.paths) + len(dataset.validation.paths)) / check,
        'peak_memory_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        'graph_mb': os.path.getsize(os.path.join(out, 'graph.pbtxt')) / 1e6,
        'meta_mb': os.path.getsize(meta) / 1e6, 'end_s': done - times['end']})


def bench_scale(sizes, directory):
    """{'sizes': [figures of each size], 'ratio': {figure: larger / smaller}}: one step of
    train.py on a synthetic dataset of each size (demo.make_many, 101 classes), each in a
    fresh process; then, from the same frozen weights, one that builds the feature cache and
    one that reads it (its start-up: `reused_cache_startup_s`)."""
    context = multiprocessing.get_context('spawn')
    pretrained = random_vgg19(os.path.join(directory, 'random-vgg19', 'vgg_19.ckpt'))

    def one(count, root, out, flags=()):
        here, there = context.Pipe()
        process = context.Process(target=scale_run, args=(there, root, out, time.time(), flags))
        process.start()
        there.close()
        try:
            return here.recv()
        except EOFError:
            raise RuntimeError('the scale run on %d images died (its error above, or out of '
                               'memory)' % count)
        finally:
            process.join()
            shutil.rmtree(out, ignore_errors=True)

    results = []
    for count in sizes:
        root, out = os.path.join(directory, 'scale-%d' % count), os.path.join(
            directory, 'scale-%d-run' % count)
        cache = ['--pretrained', pretrained, '--feature-cache', 'on', '--cache-dir',
                 os.path.join(directory, 'scale-%d-cache' % count)]
        demo.make_many(root, count, SCALE_CLASSES)
        try:
            results.append(one(count, root, out))
            one(count, root, out, cache)  # builds it
            results[-1]['reused_cache_startup_s'] = one(count, root, out, cache)['startup_s']
        finally:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(cache[-1], ignore_errors=True)
    return {'sizes': results, 'ratio': {key: results[1][key] / results[0][key]
                                        for key in results[0]}}


# ---------------------------------------------------------------------------------------------
# The feature cache: the common job, a head on a frozen base, with and without it.

# The case: about 300 images in 12 classes (the demo's photos and two more), 128 px.
CACHE_PHOTOS, CACHE_PER_CLASS = demo.PHOTOS + ('cat', 'brick'), 25
CACHE_FLAGS = ['--trainable-scopes', 'vgg_19/fc8', '--dropout-keep-prob', '1', '--batch-size',
               '32', '--validate-every', '0', '--keep-checkpoints', '1', '--learning-rate', '0.01']
# He initialisation keeps a signal's scale through the layers for inputs of unit variance; these
# photos' pixels (0..255, means off) have a standard deviation of 59, so the random base's first
# layer is divided by it: the head then gets features of unit scale, as from trained weights, and
# its loss starts near ln(12). Without it the loss started in the thousands, and where a run
# ended was chance: held-out accuracy moved by 5 points and more from seed to seed. (At unit
# scale, train.py's default learning rate of 1e-3 left the head at 0.2 in 20 epochs; 0.01 trains
# it.)
PIXEL_STD = 59
# 60 validation images swing one run's accuracy by 5 to 10 points, more than the cache changes
# it: each side is also evaluated on other crops of the same photos, the 960 of the training
# split of 1200 (evaluate.py --split train).
HELD_OUT_PER_CLASS, HELD_OUT_SEED = 100, 7


def he_std(scope, kernel):
    """The standard deviation of random_vgg19's weights in layer `scope`: He's, and for pixels
    in the first layer (PIXEL_STD)."""
    return np.sqrt(2 / np.prod(kernel[:3])) / (PIXEL_STD if scope.endswith('conv1_1') else 1)


def random_vgg19(path, seed=0):
    """A VGG19 checkpoint of He-initialised random weights with slim's names, the first layer's
    for pixels (PIXEL_STD): the same frozen weights for every side of the cache part (and the
    scale part's cached runs: written once)."""
    if os.path.exists(path + '.index'):
        return path
    rng = np.random.default_rng(seed)
    weights = {}
    for scope, kernel in model.vgg19_shapes(1000).items():
        weights[scope + '/weights'] = rng.normal(0, he_std(scope, kernel), kernel).astype(
            np.float32)
        weights[scope + '/biases'] = np.zeros(kernel[-1], np.float32)
    return model.write_checkpoint(weights, path)


def run_script(name, *args):
    """The stdout of this project's script `name` run with `args` in a process of its own; a
    RuntimeError with the end of its stderr where it fails."""
    result = subprocess.run([sys.executable, os.path.join(
        os.path.dirname(os.path.abspath(__file__)), name)] + list(args),
        capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError('the cache part\'s %s failed: %s' % (name, result.stderr[-1000:]))
    return result.stdout


def timed_train(root, pretrained, out, cache_dir, args, precision, *flags):
    """(seconds, validation accuracy) of one whole train.py command."""
    os.sync()  # what the side before wrote reaches the disk before this one starts, not during
    started = time.time()
    run_script('train.py', '--dataset', root, '--pretrained', pretrained, '--checkpoint-dir', out,
               '--cache-dir', cache_dir, '--image-size', str(args.cache_image_size), '--epochs',
               str(args.cache_epochs), '--precision', precision, *CACHE_FLAGS, *flags)
    return time.time() - started, rundir.load_best(out)['accuracy']


def held_out_accuracy(out, root, precision):
    """evaluate.py's top-1 accuracy of the run in `out` on the training split of `root`."""
    return json.loads(run_script(
        'evaluate.py', '--checkpoint-dir', out, '--dataset', root, '--split', 'train',
        '--precision', precision, '--json', '--output-dir', os.path.join(out, 'held-out')))['top1']


def keras_frozen_fit(connection, root, args, precision):
    """Keras 3's frozen-base recipe on `root`, in a process of its own: sends its validation
    accuracy. (Its frozen weights are Keras' own random ones: its time compares, its accuracy
    only says that it learned.)"""
    sys.stdout = sys.stderr  # Keras prints what it found; stdout is the --json output's
    import keras
    keras.mixed_precision.set_global_policy(KERAS_POLICY[precision])
    size = args.cache_image_size
    resized = data.resize_side_range(size)[0]  # the short side slim's eval resize gives
    train_ds, val_ds = keras.utils.image_dataset_from_directory(
        root, validation_split=0.2, subset='both', seed=0, image_size=(resized, resized),
        batch_size=32)
    classes = len(train_ds.class_names)
    # Random crop and flip for training, the central crop for validation, as this tool does.
    train_ds = train_ds.map(lambda x, y: (tf2.image.random_flip_left_right(tf2.image.random_crop(
        x, [tf2.shape(x)[0], size, size, 3])), y)).prefetch(tf2.data.AUTOTUNE)
    val_ds = val_ds.map(lambda x, y: (tf2.image.resize_with_crop_or_pad(x, size, size), y))
    base = keras.applications.VGG19(weights=None, include_top=False, input_shape=(size, size, 3))
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = keras.applications.vgg19.preprocess_input(inputs)
    x = keras.layers.Flatten()(base(x, training=False))
    outputs = keras.layers.Dense(classes, dtype='float32')(x)
    net = keras.Model(inputs, outputs)
    net.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), metrics=['accuracy'],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = net.fit(train_ds, epochs=args.cache_epochs, validation_data=val_ds,
                      validation_freq=args.cache_epochs, verbose=0)
    connection.send(history.history['val_accuracy'][-1])


def bench_cache(args, directory, precision):
    """The wall-clock and validation accuracy of each side of the cache part, and the ratios."""
    root, cache_dir = os.path.join(directory, 'cache-demo'), os.path.join(directory, 'features')
    demo.make_dataset(root, CACHE_PER_CLASS, photos=CACHE_PHOTOS)
    pretrained = random_vgg19(os.path.join(directory, 'random-vgg19', 'vgg_19.ckpt'))
    runs = {}
    runs['cached'] = timed_train(root, pretrained, os.path.join(directory, 'c1'), cache_dir,
                                 args, precision, '--feature-cache', 'on')
    runs['reused'] = timed_train(root, pretrained, os.path.join(directory, 'c2'), cache_dir,
                                 args, precision, '--feature-cache', 'on', '--learning-rate',
                                 '0.02', '--label-smoothing', '0.1')
    runs['uncached'] = timed_train(root, pretrained, os.path.join(directory, 'c3'), cache_dir,
                                   args, precision, '--feature-cache', 'off')
    context = multiprocessing.get_context('spawn')
    here, there = context.Pipe()
    os.sync()
    started = time.time()
    process = context.Process(target=keras_frozen_fit, args=(there, root, args, precision))
    process.start()
    there.close()
    try:
        accuracy = here.recv()
    except EOFError:
        raise RuntimeError('the Keras side of the cache part died (its error above)')
    finally:
        process.join()
    runs['keras'] = (time.time() - started, accuracy)
    result = {side: {'seconds': t, 'accuracy': a} for side, (t, a) in runs.items()}
    held_out = os.path.join(directory, 'held-out')
    demo.make_dataset(held_out, HELD_OUT_PER_CLASS, HELD_OUT_SEED, photos=CACHE_PHOTOS)
    for side, out in (('cached', 'c1'), ('reused', 'c2'), ('uncached', 'c3')):
        result[side]['held_out'] = held_out_accuracy(os.path.join(directory, out), held_out,
                                                     precision)
    for side in ('uncached', 'keras'):
        result[side + '_over_cached'] = runs[side][0] / runs['cached'][0]
    result['uncached_over_reused'] = runs['uncached'][0] / runs['reused'][0]
    return result


# ---------------------------------------------------------------------------------------------

def precisions(requested):
    """The precisions to measure: fp32 and the one training's `auto` picks here, or the one
    asked for (refused where the machine cannot run it)."""
    if requested != 'all':
        return [hardware.resolve_precision(requested)]
    return sorted({'fp32', hardware.resolve_precision('auto')}, key=hardware.PRECISIONS.index)


def run(args):
    """Every measurement as one dict: what the --json output prints. The figures that depend on
    the precision are under 'precisions', one dict each."""
    skip = set(cli.comma_list(args.skip))
    result = {'machine': '%s, %d cores, %s' % (platform.processor() or platform.machine(),
                                               os.cpu_count(),
                                               hardware.cpu_info('model name') or 'unknown CPU'),
              'cpu_bf16': sorted(set(hardware.CPU_BF16_FLAGS) & hardware.cpu_flags()),
              'date': time.strftime('%Y-%m-%d'), 'tensorflow': tf2.__version__,
              'xla': args.xla, 'keras_xla': args.keras_xla, 'batch_size': args.batch_size,
              'image_size': args.image_size, 'pairs': args.pairs, 'precisions': {},
              'cache_image_size': args.cache_image_size, 'cache_epochs': args.cache_epochs}
    with tempfile.TemporaryDirectory(prefix='bench-') as directory:
        if 'scale' not in skip:
            result['scale'] = bench_scale(args.scale_images, directory)
        if 'pipeline' not in skip:
            with tf.Graph().as_default():
                result['pipeline'] = bench_pipeline(args, directory)
            result['pipeline_speedup'] = result['pipeline']['ratio']
        # The cache part runs whole commands: in the precision training picks alone.
        training_precision = precisions(args.precision)[-1]
        for precision in precisions(args.precision):
            figures = result['precisions'][precision] = {}
            if not {'train', 'inference'} <= skip:
                for name, measured in bench_model(args, directory, precision, skip).items():
                    figures[name], figures[name + '_speedup'] = measured, measured['ratio']
            if 'cache' not in skip and precision == training_precision:
                figures['cache'] = bench_cache(args, directory, precision)
            if 'matmul' not in skip:
                figures['matmul_gflops'] = matmul_gflops(DTYPES[precision])
                if 'train' in figures:
                    achieved = figures['train']['a'] * train_gflop_per_image(args.image_size)
                    figures['train_gflops'] = achieved
                    figures['train_share_of_ceiling'] = achieved / figures['matmul_gflops']
    return result


def table(result):
    """The measurements as Markdown, as the README shows them: a table per precision."""
    lines = ['%s (%s); TensorFlow %s; %s; XLA: %s; batch %d, %d px; median of %d pairs' % (
        result['machine'], ', '.join(result['cpu_bf16']) or 'no native bfloat16',
        result['tensorflow'], result['date'], {(False, False): 'no', (True, False): 'this tool',
                                               (False, True): 'Keras', (True, True): 'both'}[
                                                   result['xla'], result['keras_xla']],
        result['batch_size'], result['image_size'], result['pairs'])]
    rows = [('pipeline', 'naive tf.data', result)] if 'pipeline' in result else []
    for precision, figures in result['precisions'].items():
        keras = 'Keras 3 %s' % KERAS_POLICY[precision]
        measured = ['| %s (baseline: %s) | %.3g | %.3g | %.2fx (%.2f-%.2f) |' % (
            name, baseline, source[name]['a'], source[name]['b'], source[name]['ratio'],
            source[name]['ratio_min'], source[name]['ratio_max'])
            for name, baseline, source in rows + [('train', keras, figures),
                                                  ('inference', keras, figures)]
            if name in source]
        if measured:
            lines += ['', '| %s, images/s | this tool | baseline | speedup (min-max) |'
                      % precision, '|---|---|---|---|'] + measured
        rows = []  # the pipeline does not depend on the precision: in the first table only
        if 'cache' in figures:
            c = figures['cache']
            lines += ['', '| %s, head-only, %d images in %d classes, %d px, %d epochs | '
                      'wall-clock, s | validation accuracy | held-out accuracy (%d crops) | '
                      'against the cache |' % (
                          precision, len(CACHE_PHOTOS) * CACHE_PER_CLASS, len(CACHE_PHOTOS),
                          result['cache_image_size'], result['cache_epochs'],
                          len(CACHE_PHOTOS) * HELD_OUT_PER_CLASS * 4 // 5),
                      '|---|---|---|---|---|']
            for side, name, ratio, form in CACHE_ROWS:
                lines.append('| %s | %.1f | %.3f | %s | %s |' % (
                    name, c[side]['seconds'], c[side]['accuracy'],
                    '%.3f' % c[side]['held_out'] if 'held_out' in c[side] else '',
                    form % c[ratio] if ratio else ''))
        if 'matmul_gflops' in figures:
            lines.append('')
            lines.append('matmul ceiling %.0f GFLOP/s' % figures['matmul_gflops'] + (
                '; training step %.0f GFLOP/s, %.0f%% of it' % (
                    figures['train_gflops'], 100 * figures['train_share_of_ceiling'])
                if 'train_gflops' in figures else '') + (
                ' (above 100%: the ceiling was measured while the machine was busy; run again)'
                if figures.get('train_share_of_ceiling', 0) > 1 else ''))
    if 'scale' in result:
        lines += ['', '| one step of train.py (%s) | %s | ratio |' % (
            ' '.join(SCALE_FLAGS), ' | '.join('%d images' % r['images']
                                              for r in result['scale']['sizes'])),
                  '|---|---|---|---|']
        for key, name, form in SCALE_ROWS:
            lines.append('| %s | %s | %.2f |' % (name, ' | '.join(
                form % r[key] for r in result['scale']['sizes']), result['scale']['ratio'][key]))
    return '\n'.join(lines)


CACHE_ROWS = (('cached', 'train.py, feature cache built', None, ''),
              ('reused', 'train.py, other head settings, cache reused', 'uncached_over_reused',
               'the uncached run takes %.1fx its time'),
              ('uncached', 'train.py, --feature-cache off', 'uncached_over_cached',
               "%.1fx the cached run's time"),
              ('keras', "Keras 3's frozen-base recipe", 'keras_over_cached',
               "%.1fx the cached run's time"))
SCALE_ROWS = (('startup_s', 'start-up to the first step, s', '%.1f'),
              ('reused_cache_startup_s', 'the same, reading a built feature cache, s', '%.1f'),
              ('check_images_per_s', 'image check, images/s', '%.0f'),
              ('peak_memory_gb', 'peak memory, GB', '%.2f'),
              ('graph_mb', 'graph.pbtxt, MB', '%.2f'), ('meta_mb', '.meta, MB', '%.2f'),
              ('end_s', 'end of the run after the final validation, s', '%.1f'))


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format='%(asctime)s %(message)s', datefmt='%H:%M:%S', level=logging.INFO,
                        stream=sys.stderr)
    tf.get_logger().setLevel(logging.ERROR)
    try:
        result = run(args)
    except (hardware.HardwareError, RuntimeError) as e:
        print('bench.py: error: %s' % e, file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
