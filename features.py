"""Cached frozen features: the frozen part of VGG19 computed once per image view, not per step.

When training leaves a frozen prefix of the network (the layers below the first trainable one),
that prefix computes the same function every epoch; only augmentation changes its input. So
train.py runs it once over `--cache-views` augmented views of each training image (slim's random
crop and flip, as every step would), stores what comes out at the boundary, and trains the rest
of the graph, the same ops, from the stored features:

    trainable layers from   boundary (what is stored)                   per view, at 224 px
    fc8                     fc7's output (global-pooled below 224 px)   16 KB
    fc6 or fc7              pool5                                       100 KB
    conv5                   pool4                                       400 KB

Those are float32's sizes. bf16 and fp16 runs store half: their 16-bit type, the one that the
first layer above the boundary casts its input to anyway (STORED_AS).

Epoch e reads view e % views of every image, shuffled. Validation's view is always the same
(evaluate.py's central crop, no dropout), so it is stored once too, in a cache of its own, and
each validation pass runs only the layers above the boundary.

The cache lives in a directory named by the boundary and a key of everything that decides the
features: the frozen weights themselves (a digest of their values in the session), the image size
and preprocessing, the precision, dropout where the prefix holds it (fc6's, for the fc7
boundary), the number of views, and each training file's path, size, modification time and
label. Runs that differ in anything else (learning rate, epochs, optimizer, label smoothing,
checkpoint directory) reuse it. It is written in shards of TFRecords, each renamed into place
whole and then listed in index.json with its record count, so a killed build resumes at the first
missing shard and a shard cut short is built again; runs that build one cache at once each write
parts of their own and list each other's shards. Each record carries its CRC-32C, which
tf.data checks as it reads: a record whose bytes changed on disk is never trained on. The run
stops there in one line, the corrupted shards removed, and the next run builds them again. So a
start checks the shards' sizes alone, whatever the cache weighs.

The frozen weights are kept there too, once, as a checkpoint of their own (`weights-*/frozen`,
written while the first build runs), which each checkpoint of a run that never trains them
links rather than writes again (LinkingSaver).
"""
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time

import numpy as np
import tensorflow.compat.v1 as tf
import tf_slim as slim

import data
import model

log = logging.getLogger(__name__)

MODES = ('auto', 'on', 'off')
# The layers in network order, and the boundary below each one that can be the first trainable.
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
BOUNDARY_BELOW = {'conv5': 'pool4', 'fc6': 'pool5', 'fc7': 'pool5', 'fc8': 'fc7'}
SHARD_IMAGES = 256  # image views per shard file: what a killed build loses at most
INDEX_FILE = 'index.json'
FORMAT = 'tfrecord'  # in the key: a cache of another record format is another cache
LABEL_BYTES = 4  # a record: the label (int32), then the features
# What the features are stored as under each precision: the 16-bit type that the layer above
# the boundary casts its input to anyway in bf16 and fp16 (half the disk of float32).
STORED_AS = {'fp32': 'float32', 'bf16': 'bfloat16', 'fp16': 'float16'}
SHUFFLE_BYTES = 256 << 20  # the shuffle buffer of stored features, at most
WEIGHTS_DATA = '.data-00000-of-00001'  # the data file of the frozen weights' checkpoint


class CacheError(ValueError):
    """A --feature-cache setting this run cannot honour."""


def layer_of(variable_name):
    """'vgg_19/conv5/conv5_1/weights' -> 'conv5'; None for what is not a VGG19 layer."""
    parts = variable_name.split('/')
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def boundary(trainable_names):
    """The end point below the first layer that trains ('pool4', 'pool5' or 'fc7'), or None when
    a layer below conv5 trains (nothing frozen worth storing) or nothing does."""
    layers = [layer_of(name) for name in trainable_names]
    if not layers or None in layers:
        return None
    return BOUNDARY_BELOW.get(min(layers, key=LAYERS.index))


def frozen_layers(point):
    """The layers whose weights decide the features at `point`."""
    last = {'pool4': 'conv4', 'pool5': 'conv5', 'fc7': 'fc7'}[point]
    return LAYERS[:LAYERS.index(last) + 1]


def decide(mode, point, towers=1, cluster=False, remaining_images=0, train_images=0, views=1,
           after_head=False):
    """(use the cache, why): `auto` caches when there is a frozen prefix and the run still reads
    at least `views` epochs from it (else building costs more forward passes than it saves);
    `on` refuses with a CacheError what cannot use it; `off` is the uncached graph. With
    --head-steps, `point` and `remaining_images` are the head stage's, and a run that resumes
    `after_head` reads images alone."""
    if mode == 'off':
        return False, '--feature-cache off'
    if after_head:
        return False, 'the main stage of --head-steps trains the layers below the head'
    cannot = None
    if point is None:
        cannot = 'the layers below conv5 train, so nothing frozen is worth storing'
    elif towers > 1 or cluster:
        cannot = 'towers and clusters read images, not stored features'
    if cannot:
        if mode == 'on':
            raise CacheError('--feature-cache on: %s; use --feature-cache auto or off' % cannot)
        return False, cannot
    if mode == 'auto' and remaining_images < views * train_images:
        return False, ('the run reads %d images, fewer than its %d views of %d training images '
                       '(--cache-views %d)' % (remaining_images, views * train_images,
                                               train_images, views))
    return True, 'the layers up to %s are frozen' % point


def output(end_points, point, global_pool):
    """The tensor at `point` among vgg_19's `end_points`: what is stored, and what
    vgg_19(start=point) takes."""
    if point == 'fc7' and global_pool:
        return end_points['global_pool']
    return model.end_point(end_points, point)


def weights_fingerprint(variables):
    """{name: `variables`' values fingerprinted row by row (farmhash64)}: what the cache key
    holds of the frozen weights, computed where they live in 0.06 s for VGG19's 550 MB (a
    Python hash of the values fetched one by one took 2.7 s)."""
    return {v.op.name: tf.fingerprint(tf.reshape(v, [-1, v.shape[-1]])) for v in variables}


def weights_digest(fingerprints):
    """A digest of weights_fingerprint's values (run)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(fingerprints):
        digest.update(name.encode())
        digest.update(fingerprints[name].tobytes())
    return digest.hexdigest()


def files_digest(split):
    """A digest of each file's path, size, modification time and label, in the split's order."""
    digest = hashlib.blake2b(digest_size=16)
    for path, label in zip(split.paths, split.labels):
        stat = os.stat(path)
        digest.update(('%s\0%d\0%d\0%d\n' % (path, stat.st_size, stat.st_mtime_ns, label))
                      .encode())
    return digest.hexdigest()


def shuffled(split, seed):
    """`split` in a fixed random order, so that each shard holds images of many classes."""
    order = np.random.RandomState(seed).permutation(len(split.paths))
    return type(split)([split.paths[i] for i in order], [split.labels[i] for i in order])


def cache_dir(root, key):
    """Where the cache of `key` (a dict of what decides the features) lives under `root`."""
    text = json.dumps(key, sort_keys=True)
    return os.path.join(root, '%s-%s' % (key['boundary'],
                                         hashlib.sha256(text.encode()).hexdigest()[:16]))


def weights_whole(prefix, variables):
    """Whether checkpoint `prefix` is there whole with `variables`' values: its index, and data
    of their bytes (TensorFlow's bundle packs the values one after another)."""
    try:
        return os.path.isfile(prefix + '.index') and os.path.getsize(
            prefix + WEIGHTS_DATA) == sum(v.shape.num_elements() * v.dtype.base_dtype.size
                                          for v in variables)
    except OSError:
        return False


def write_weights(session, saver, prefix):
    """Save with `saver` as checkpoint `prefix`, whole or not at all: each writer writes a part
    of its own, then the data goes into place, then the index. Parts left by a writer that was
    killed are removed."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    remove_dead_parts(prefix + '.part*')
    part = _part(prefix)
    saver.save(session, part, write_meta_graph=False, write_state=False)
    os.replace(part + WEIGHTS_DATA, prefix + WEIGHTS_DATA)
    os.replace(part + '.index', prefix + '.index')


def _part(path):
    """Where this process writes `path` before renaming it into place: a name of its own, so
    that runs building the same cache at once never write into one file."""
    return '%s.part%d' % (path, os.getpid())


def remove_dead_parts(pattern):
    """Remove the files matching `pattern` that `_part` named for a process no longer running
    (a writer that was killed)."""
    for left in tf.io.gfile.glob(pattern):
        pid = re.search(r'\.part(\d+)', left)
        if pid and not _running(int(pid.group(1))):
            with contextlib.suppress(OSError):
                os.remove(left)


def _running(pid):
    """Whether process `pid` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's
        return True
    return True


def shard_name(view, shard):
    """The file name of a view's shard."""
    return 'view%d-%05d.tfrecord' % (view, shard)


def shard_files(directory, views, num_images):
    """[views][shards] paths of the cache's shard files."""
    shards = -(-num_images // SHARD_IMAGES)
    return [[os.path.join(directory, shard_name(v, s)) for s in range(shards)]
            for v in range(views)]


def read_index(directory):
    """The cache's index.json (its key and each finished shard's record count), or None."""
    try:
        with open(os.path.join(directory, INDEX_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _list_shard(directory, key, name, records):
    """Add shard `name` to the index of `directory`, read again first: another run building the
    same cache at once may have listed shards of its own since."""
    index = read_index(directory)
    if not index or index.get('key') != key:
        index = {'key': key, 'shards': {}}
    index['shards'][name] = {'records': records}
    _write_index(directory, index)


def _write_index(directory, index):
    path = os.path.join(directory, INDEX_FILE)
    part = _part(path)
    with open(part, 'w') as f:
        json.dump(index, f, indent=1, sort_keys=True)
    os.replace(part, path)


def payload_bytes(shape, dtype):
    """Bytes a record holds: the label (int32, little-endian), then the features as `dtype`."""
    return LABEL_BYTES + int(np.prod(shape)) * tf.as_dtype(dtype).size


def record_bytes(shape, dtype):
    """Bytes a record takes in a shard: its payload framed as a TFRecord (the length and the
    data, each followed by its CRC-32C)."""
    return payload_bytes(shape, dtype) + 16


def missing_shards(directory, key, views, num_images):
    """The (view, shard) pairs still to build: not listed in the index, or not of the size it
    lists, so a shard cut short is built again, never read (bytes changed in place are caught
    by the records' checksums as they are read: see `drop_corrupted`)."""
    index = read_index(directory)
    listed = index['shards'] if index and index.get('key') == key else {}
    size = record_bytes(key['shape'], key['dtype'])
    missing = []
    for v, files in enumerate(shard_files(directory, views, num_images)):
        for s, path in enumerate(files):
            entry = listed.get(os.path.basename(path))
            try:
                whole = isinstance(entry, dict) and os.path.getsize(path) == entry['records'] * size
            except OSError:
                whole = False
            if not whole:
                missing.append((v, s))
    return missing


def stale_caches(root):
    """[(directory, bytes)] of the caches under `root` that this version no longer reads: those
    written in another record format (before TFRecord shards, `view*.rec`)."""
    found = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        directory = os.path.join(root, name)
        index = read_index(directory)
        if isinstance(index, dict) and index.get('key', {}).get('format') != FORMAT:
            found.append((directory, sum(entry.stat().st_size for entry in os.scandir(directory)
                                         if entry.is_file())))
    return found


def drop_corrupted(directory):
    """Reads every shard the index of `directory` lists, and removes those with a record whose
    checksum fails (from the index, then from the disk); returns their paths."""
    index = read_index(directory) or {'shards': {}}
    bad = []
    for name in sorted(index['shards']):
        path = os.path.join(directory, name)
        try:
            for _ in tf.io.tf_record_iterator(path):
                pass
        except (tf.errors.DataLossError, tf.errors.NotFoundError):
            bad.append(path)
    if bad:
        for path in bad:
            del index['shards'][os.path.basename(path)]
        _write_index(directory, index)
        for path in bad:
            with contextlib.suppress(OSError):
                os.remove(path)
    return bad


def build(directory, key, split, views, run_shard):
    """Compute and store the shards that `missing_shards` names; returns the image views built.

    `split`: the training split, in the order the shards take it (shuffled: see `shuffled`);
    `run_shard(view, paths, labels)` runs the prefix over those images, augmented afresh for
    each view, and returns (features, labels) arrays.
    """
    shape, stored_as = key['shape'], tf.as_dtype(key['dtype']).as_numpy_dtype
    todo = missing_shards(directory, key, views, len(split.paths))
    if not todo:
        return 0
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise _unwritable(directory, e)
    remove_dead_parts(os.path.join(directory, '*.part*'))
    total = len(todo)
    done_images, read, started = 0, 0, time.time()
    log.info('feature cache: building %d of %d shards (%d view%s of %d images) in %s', total,
             views * -(-len(split.paths) // SHARD_IMAGES), views, 's' if views > 1 else '',
             len(split.paths), directory)
    for n, (v, s) in enumerate(todo):
        chunk = slice(s * SHARD_IMAGES, (s + 1) * SHARD_IMAGES)
        features, labels = run_shard(v, split.paths[chunk], split.labels[chunk])
        heads = np.asarray(labels, '<i4')
        stored = features.reshape(len(labels), int(np.prod(shape))).astype(stored_as)
        path = os.path.join(directory, shard_name(v, s))
        part = _part(path)
        try:  # whole or not at all: the index lists a shard only once it is in place
            with tf.io.TFRecordWriter(part) as writer:
                for head, record in zip(heads, stored):
                    writer.write(head.tobytes() + record.tobytes())
            os.replace(part, path)
            _list_shard(directory, key, shard_name(v, s), len(labels))
        except (OSError, tf.errors.OpError) as e:  # TensorFlow's writer raises its own errors
            with contextlib.suppress(OSError):
                os.remove(part)
            raise _unwritable(directory, e)
        done_images, read = done_images + len(labels), read + len(split.paths[chunk])
        rate = read / max(time.time() - started, 1e-9)
        left = (total - n - 1) * SHARD_IMAGES / rate
        log.info('feature cache: %d/%d shards, %d image views, %.1f/s, %dm%02ds left', n + 1,
                 total, done_images, rate, left // 60, left % 60)
    return done_images


def _unwritable(directory, error):
    why = getattr(error, 'strerror', None) or getattr(error, 'message', None) or error
    return CacheError('cannot write the feature cache in %s (%s): free disk space, pass another '
                      '--cache-dir, or --feature-cache off' % (directory, why))


def pipeline(files, shape, dtype, batch_size, num_images, seed=None):
    """Endless shuffled batches of (features, int32 labels) from the shard files `files`, a
    [views, shards] string tensor fed at the iterator's initializer: epoch e reads view
    e % views, its shards in a new order and the records shuffled."""
    views = tf.shape(files, out_type=tf.int64)[0]
    buffer = min(num_images, max(8 * batch_size, SHUFFLE_BYTES // payload_bytes(shape, dtype)))

    def epoch(e):  # shuffled within the epoch, so that it holds each image once
        order = None if seed is None else seed * 1000003 + e  # a new order every epoch
        shards = tf.data.Dataset.from_tensor_slices(files[e % views]).shuffle(1 << 16, order)
        records = shards.interleave(tf.data.TFRecordDataset, cycle_length=4)
        return records.shuffle(buffer, order)
    ds = tf.data.Dataset.range(1 << 62).flat_map(data.as_written(epoch))
    return _decoded(ds.batch(batch_size, drop_remainder=True), shape, dtype, batch_size)


def in_order(files, shape, dtype, batch_size):
    """One pass over the shard files `files` (a string vector fed at the iterator's
    initializer), in order, as batches of (features, int32 labels); the last partial batch
    included: validation's stored evaluation view."""
    ds = tf.data.Dataset.from_tensor_slices(files).flat_map(tf.data.TFRecordDataset)
    return _decoded(ds.batch(batch_size), shape, dtype, -1)


def _decoded(batches, shape, dtype, batch_size):
    """Batches of records as (float32 features, int32 labels), `batch_size` rows (-1: as they
    come)."""
    def decode(records):
        labels = tf.io.decode_raw(tf.strings.substr(records, 0, LABEL_BYTES), tf.int32)
        values = tf.io.decode_raw(tf.strings.substr(
            records, LABEL_BYTES, payload_bytes(shape, dtype) - LABEL_BYTES), dtype)
        return (tf.reshape(tf.cast(values, tf.float32), [batch_size] + list(shape)),
                tf.reshape(labels, [batch_size]))
    batches = batches.map(data.as_written(decode), num_parallel_calls=tf.data.AUTOTUNE)
    return data.bounded_close(batches.prefetch(tf.data.AUTOTUNE))


class Cache:
    """A cached run's input: the frozen prefix on augmented views of the training images and on
    the evaluation view of the validation images, run once by `fill`, and what is stored read
    back after it: `features`, `labels` for training, `validation_batches` for validation.

    `network(images, is_training, frozen)` builds the network as training (or evaluation) runs
    it, the layers `frozen` (vgg_19's) taking no gradient, and returns its end points (the first
    call creates the variables, so the head built on the stored features afterwards reuses
    them); `key` holds what else decides the training features (image size, preprocessing,
    precision, dropout).
    """

    def __init__(self, split, validation, point, network, global_pool, key, image_size,
                 batch_size, build_batch_size, views, root, seed=0):
        self.split, self.point, self.views, self.root = shuffled(split, seed), point, views, root
        self.validation = validation
        self._views_in = data.split_placeholders('cache_views')
        self._views = tf.data.make_initializable_iterator(
            data.views_pipeline(self._views_in, image_size, build_batch_size))
        self.view_images, self._view_labels = self._views.get_next()
        frozen = frozen_layers(point)
        self._prefix = output(network(self.view_images, True, frozen), point, global_pool)
        self.shape = self._prefix.shape.as_list()[1:]
        # Validation's view is evaluate.py's: the central crop, no dropout.
        self._eval_in = data.split_placeholders('cache_validation')
        self._eval = tf.data.make_initializable_iterator(
            data.eval_pipeline(self._eval_in, image_size, build_batch_size))
        eval_images, self._eval_labels, _ = self._eval.get_next()
        self._eval_prefix = output(network(eval_images, False, frozen), point, global_pool)
        self.frozen_variables = [v for v in slim.get_model_variables()
                                 if layer_of(v.op.name) in frozen]
        self._frozen = weights_fingerprint(self.frozen_variables)
        self._weights_saver = tf.train.Saver(self.frozen_variables, sharded=False)
        self.weights_prefix = None  # the frozen weights' checkpoint, once filled (LinkingSaver)
        self.dtype = STORED_AS[key['precision']]
        self._key = dict(key, boundary=point, shape=self.shape, dtype=self.dtype, views=views,
                         format=FORMAT)
        self._files = tf.placeholder(tf.string, [None, None], name='feature_files')
        self._stored = tf.data.make_initializable_iterator(
            pipeline(self._files, self.shape, self.dtype, batch_size, len(self.split.paths),
                     seed=seed))
        self.features, self.labels = self._stored.get_next()
        self._eval_files = tf.placeholder(tf.string, [None], name='validation_feature_files')
        self._eval_feed = {}  # the shard files, once fill knows where they are
        self._directories = []  # the training cache's and validation's, once fill has them

    def validation_batches(self, batch_size):
        """(features, labels, initializer, feed): one pass over the validation split's stored
        features per run of `initializer` with `feed` (which `fill` completes)."""
        iterator = tf.data.make_initializable_iterator(in_order(
            self._eval_files, self.shape, self.dtype, batch_size))
        stored, labels = iterator.get_next()
        return stored, labels, iterator.initializer, self._eval_feed

    def fill(self, session, first_fetch=None):
        """Build what the cache of this session's frozen weights lacks, then start reading it;
        returns `first_fetch` run with the first batch built (None when nothing was built)."""
        stale = stale_caches(self.root)
        if stale:
            log.info('feature cache: %d cache%s of an earlier version in %s (%.0f MB) no longer '
                     'read: delete %s to free the disk', len(stale), 's' if len(stale) > 1 else '',
                     self.root, sum(size for _, size in stale) / 1e6, ', '.join(
                         os.path.basename(directory) for directory, _ in stale))
        weights = weights_digest(session.run(self._frozen))
        prefix = os.path.join(self.root, 'weights-%s' % weights[:16], 'frozen')
        # The frozen weights themselves, for the checkpoints to link (LinkingSaver): written
        # while the features are computed, the disk busy while the cores are.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            writing = None if weights_whole(prefix, self.frozen_variables) else pool.submit(
                write_weights, session, self._weights_saver, prefix)
            first = self._build(session, weights, first_fetch)
            try:
                if writing:
                    writing.result()
                self.weights_prefix = prefix
            except (OSError, tf.errors.OpError) as e:
                log.info('feature cache: cannot write the frozen weights in %s (%s): each '
                         'checkpoint holds them in full', prefix,
                         getattr(e, 'strerror', None) or getattr(e, 'message', e))
        return first

    def _build(self, session, weights, first_fetch):
        """fill's builds and start, the training split's then validation's."""
        key = dict(self._key, weights=weights, files=files_digest(self.split))
        first = []

        def run_shard(iterator, placeholders, fetches, extra=None):
            """build's run_shard over `iterator`'s images; `extra` is run with the first
            batch, into `first`."""
            def run(view, paths, labels):
                session.run(iterator.initializer, {placeholders.paths: paths,
                                                   placeholders.labels: labels})
                batches = []
                while True:
                    try:
                        fetched = session.run(list(fetches) + (
                            [extra] if extra is not None and not first else []))
                    except tf.errors.OutOfRangeError:
                        break
                    first.extend(fetched[2:])
                    batches.append(fetched[:2])
                if not batches:  # not one image of the shard decoded
                    return np.zeros([0] + self.shape, np.float32), np.zeros([0], np.int64)
                return (np.concatenate([b[0] for b in batches]),
                        np.concatenate([b[1] for b in batches]))
            return run

        directory = self._stored_in(key, self.split, self.views, run_shard(
            self._views, self._views_in, [self._prefix, self._view_labels], first_fetch))
        session.run(self._stored.initializer, {self._files: shard_files(
            directory, self.views, len(self.split.paths))})
        # Validation's: one view, without training's dropout.
        key = dict(self._key, weights=weights, files=files_digest(self.validation), views=1,
                   dropout6=None, split='validation')
        directory = self._stored_in(key, self.validation, 1, run_shard(
            self._eval, self._eval_in, [self._eval_prefix, self._eval_labels]))
        self._eval_feed[self._eval_files] = shard_files(
            directory, 1, len(self.validation.paths))[0]
        return first[0] if first else None

    @contextlib.contextmanager
    def dropping_corrupted(self):
        """Turns a record that fails its checksum as it is read (bytes changed on disk) into a
        CacheError naming the shards that hold one, removed so that the next run builds them
        again."""
        try:
            yield
        except tf.errors.DataLossError:
            log.info('feature cache: a record did not read back whole; checking each shard in %s',
                     ', '.join(self._directories) or 'none')
            bad = [path for directory in self._directories for path in drop_corrupted(directory)]
            if not bad:
                raise
            raise CacheError('the feature cache changed on disk since it was written (%s): '
                             'removed; run the same command again to resume from the last '
                             'checkpoint (it builds what it needs again)' % ', '.join(bad)
                             ) from None

    def _stored_in(self, key, split, views, run_shard):
        """The directory of `key`'s cache, built first where it lacks shards."""
        directory = cache_dir(self.root, key)
        self._directories.append(directory)
        built = build(directory, key, split, views, run_shard)
        log.info('feature cache: %s %d view%s of %d %s images from %s (%s per view), in %s',
                 'built' if built else 'reused', views, 's' if views > 1 else '',
                 len(split.paths), key.get('split', 'training'), self.point,
                 'x'.join(map(str, self.shape)), directory)
        return directory


class LinkingSaver(tf.train.Saver):
    """A tf.train.Saver (its arguments) whose checkpoints share one file of the weights that do
    not change in the run, `frozen` (the layers below the cache's boundary): `shared()` names
    the checkpoint that holds their values alone (Cache.fill writes it), or None.

    Each save links its data file (a hard link; a copy on another file system) into the
    checkpoint beside a shard of the rest, which TensorFlow's MergeV2Checkpoints joins into one
    checkpoint of two data shards, read by any Saver. A save of VGG19 trained from fc8 up
    writes fc8 and its slots (0.4 MB for 12 classes), not 559 MB (6 s on a disk of 90 MB/s),
    and takes no more disk; deleting the cache leaves it whole. Where the shared file is not
    there whole, the save writes everything, as tf.train.Saver does.
    """

    def __init__(self, frozen, shared, var_list=None, **kwargs):
        var_list = list(tf.global_variables() if var_list is None else var_list)
        super().__init__(var_list, **dict(kwargs, sharded=True))
        self._frozen, self._shared = frozen, shared
        names = {v.op.name for v in frozen}
        rest = sorted((v for v in var_list if v.op.name not in names), key=lambda v: v.op.name)
        prefix = tf.get_default_graph().get_tensor_by_name(self.saver_def.filename_tensor_name)
        with tf.name_scope('save_linking'):
            parts = tf.strings.join([prefix, ['_temp/part-00000-of-00002',
                                              '_temp/part-00001-of-00002']])
            written = tf.raw_ops.SaveV2(prefix=parts[1], tensor_names=[v.op.name for v in rest],
                                        shape_and_slices=[''] * len(rest),
                                        tensors=[v.value() for v in rest])
            with tf.control_dependencies([written]):
                merged = tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts,
                                                       destination_prefix=prefix)
            with tf.control_dependencies([merged]):
                self._save_linking = tf.identity(prefix).name
        self._save_whole = self.saver_def.save_tensor_name

    def save(self, sess, save_path, global_step=None, *args, **kwargs):
        """tf.train.Saver.save, linking the frozen weights where it can."""
        if global_step is not None and not isinstance(global_step, (int, np.integer)):
            global_step = tf.train.global_step(sess, global_step)
        prefix = save_path if global_step is None else '%s-%d' % (save_path, global_step)
        linked = self._link(prefix + '_temp/part-00000-of-00002')
        self.saver_def.save_tensor_name = self._save_linking if linked else self._save_whole
        return super().save(sess, save_path, global_step, *args, **kwargs)

    def _link(self, part):
        """Link the shared checkpoint's files as checkpoint `part`; False where it is not there
        whole or cannot be linked nor copied."""
        shared = self._shared()
        if not shared or not weights_whole(shared, self._frozen):
            return False
        try:
            os.makedirs(os.path.dirname(part), exist_ok=True)
            for suffix in (WEIGHTS_DATA, '.index'):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(part + suffix)  # what a killed save left
                try:
                    os.link(shared + suffix, part + suffix)
                except OSError:  # another file system, or none with hard links
                    shutil.copyfile(shared + suffix, part + suffix)
        except OSError:
            return False
        return True
