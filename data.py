"""Datasets from disk, into tf.data pipelines, through the one VGG preprocessing.

Two layouts are read: Food-101 (images/<class>/<id>.jpg with meta/classes.txt, labels.txt,
train.txt, test.txt) and class folders (root/<class>/*, with train/ and validation/ (or val/,
test/) above the classes when the user split them, else a stratified split with a fixed seed).

What a pixel means is decided here once: RGB, 0..255 floats, slim's ImageNet means subtracted,
no division by a standard deviation; training, validation and inference all come through
`preprocess_for_train` / `preprocess_for_eval`.
"""
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import random
import sys
import zlib

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import numpy as np
import PIL.Image
import tensorflow.compat.v1 as tf

log = logging.getLogger(__name__)

# slim vgg_preprocessing: the means the ImageNet checkpoint was trained with, RGB order.
R_MEAN, G_MEAN, B_MEAN = 123.68, 116.78, 103.94
MEANS = (R_MEAN, G_MEAN, B_MEAN)
# Short-side resize range at 224 px input, scaled by image_size / 224 for other sizes.
RESIZE_SIDE_MIN = 256
RESIZE_SIDE_MAX = 512
REFERENCE_SIZE = 224

# Images with more pixels are refused from their header, undecoded: TensorFlow's decoders accept
# up to 2^29 pixels, and a 388 KB PNG can decode into 1.2 GB.
MAX_PIXELS = 50_000_000

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
VALIDATION_DIRS = ('validation', 'val', 'test')

Split = collections.namedtuple('Split', 'paths labels')
Dataset = collections.namedtuple('Dataset', 'root layout class_ids class_names train validation')


class DatasetError(ValueError):
    """A dataset root that cannot be read as any known layout."""


# ---------------------------------------------------------------------------------------------
# Reading a dataset root: pure Python, no session.

def load_dataset(root, val_fraction=0.2, seed=0):
    """Detect the layout under `root` and read it into a Dataset of train and validation Splits.

    Files that are listed but missing are left out and reported once, with a count.
    """
    if not os.path.isdir(root):
        raise DatasetError('dataset %s not found: expected a directory' % root)
    if os.path.isfile(os.path.join(root, 'meta', 'classes.txt')):
        dataset = read_food101(root)
    else:
        dataset = read_class_folders(root, val_fraction, seed)
    for name, split in (('train', dataset.train), ('validation', dataset.validation)):
        if not split.paths:
            raise DatasetError('dataset %s has no %s images' % (root, name))
    return dataset


def check_classes(dataset):
    """Refuse a dataset a classifier cannot learn and be validated on: fewer than two classes,
    or a class without training or without validation images (a DatasetError naming it)."""
    if len(dataset.class_ids) < 2:
        raise DatasetError('dataset %s has %d class (%s): a classifier needs two or more, one '
                           'folder of images each' % (dataset.root, len(dataset.class_ids),
                                                      ', '.join(dataset.class_ids)))
    for name, split in (('training', dataset.train), ('validation', dataset.validation)):
        present = set(split.labels)
        empty = [c for i, c in enumerate(dataset.class_ids) if i not in present]
        if empty:
            raise DatasetError(
                'class%s %s of %s ha%s no %s images left: add images (the automatic split needs '
                'two or more a class) or remove the class' % (
                    'es' if len(empty) > 1 else '', ', '.join(empty[:5]), dataset.root,
                    've' if len(empty) > 1 else 's', name))


def _read_lines(path):
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def read_food101(root):
    """Food-101: meta/classes.txt, labels.txt and train.txt/test.txt entries `<class>/<id>`."""
    meta = os.path.join(root, 'meta')
    class_ids = _read_lines(os.path.join(meta, 'classes.txt'))
    labels_file = os.path.join(meta, 'labels.txt')
    class_names = _read_lines(labels_file) if os.path.isfile(labels_file) else list(class_ids)
    if len(class_names) != len(class_ids):
        raise DatasetError('%s has %d lines, classes.txt has %d: they must match line for line'
                           % (labels_file, len(class_names), len(class_ids)))
    index = {c: i for i, c in enumerate(class_ids)}
    images = os.path.realpath(os.path.join(root, 'images'))
    splits = []
    for list_name in ('train.txt', 'test.txt'):
        list_file = os.path.join(meta, list_name)
        if not os.path.isfile(list_file):
            raise DatasetError('%s not found: a Food-101 layout needs meta/train.txt and '
                               'meta/test.txt' % list_file)
        paths, labels, missing = [], [], []
        for entry in _read_lines(list_file):
            class_id = entry.split('/', 1)[0]
            path = os.path.realpath(os.path.join(images, entry + '.jpg'))
            if class_id not in index:
                raise DatasetError('%s: entry %s names class %s, which is not in classes.txt'
                                   % (list_file, entry, class_id))
            if not path.startswith(images + os.sep):
                raise DatasetError('%s: entry %s points outside %s' % (list_file, entry, images))
            if os.path.isfile(path):
                paths.append(path)
                labels.append(index[class_id])
            else:
                missing.append(path)
        _report(missing, 'listed in %s but missing' % list_file)
        splits.append(Split(paths, labels))
    return Dataset(root, 'food-101', class_ids, class_names, splits[0], splits[1])


def _image_files(directory):
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(directory, f)))


def _class_dirs(directory):
    return sorted(d for d in os.listdir(directory)
                  if not d.startswith('.') and os.path.isdir(os.path.join(directory, d)))


def _files_by_class(directory, class_ids):
    return {c: _image_files(os.path.join(directory, c)) for c in class_ids
            if os.path.isdir(os.path.join(directory, c))}


def read_class_folders(root, val_fraction=0.2, seed=0):
    """root/<class>/*, or root/train/<class>/* with root/validation (val, test) beside it."""
    subdirs = _class_dirs(root)
    val_dir = next((d for d in VALIDATION_DIRS if d in subdirs), None)
    if 'train' in subdirs and val_dir:
        train_root, val_root = os.path.join(root, 'train'), os.path.join(root, val_dir)
        class_ids = _class_dirs(train_root)
        unknown = sorted(set(_class_dirs(val_root)) - set(class_ids))
        if unknown:
            raise DatasetError('%s has classes that %s lacks: %s'
                               % (val_root, train_root, ', '.join(unknown)))
        train = _files_by_class(train_root, class_ids)
        validation = _files_by_class(val_root, class_ids)
        layout = 'class folders, train/%s' % val_dir
    else:
        class_ids = [c for c in subdirs if _image_files(os.path.join(root, c))]
        train, validation = stratified_split(_files_by_class(root, class_ids), val_fraction, seed)
        layout = 'class folders, split %.0f%% for validation (seed %d)' % (100 * val_fraction, seed)
    if not class_ids:
        raise DatasetError(
            'no classes found in %s: found %s; expected meta/classes.txt (Food-101) or one folder '
            'of images (%s) per class' % (root, ', '.join(os.listdir(root)[:5]) or 'nothing',
                                          ' '.join(IMAGE_EXTENSIONS)))
    index = {c: i for i, c in enumerate(class_ids)}
    train, validation = _inside(root, train), _inside(root, validation)

    def split(files):
        pairs = [(p, index[c]) for c in class_ids for p in files.get(c, [])]
        return Split([p for p, _ in pairs], [label for _, label in pairs])
    return Dataset(root, layout, class_ids, list(class_ids), split(train), split(validation))


def _inside(root, files_by_class):
    """`files_by_class` without the files (links) whose real path lies outside `root`: a
    dataset from elsewhere must not make training read whatever its links point at."""
    real_root = os.path.realpath(root) + os.sep
    outside = [p for files in files_by_class.values() for p in files
               if not os.path.realpath(p).startswith(real_root)]
    _report(outside, 'that are links to files outside %s' % root)
    outside = set(outside)
    return {c: [p for p in files if p not in outside] for c, files in files_by_class.items()}


def stratified_split(files_by_class, val_fraction, seed=0):
    """Split each class's files into ({class: train files}, {class: validation files}).

    The same on every run: each class is shuffled with a seed of its own (from `seed` and its
    name), not by the order the classes or files were listed in. Every class with 2+ files has
    at least one file in each part.
    """
    if not 0 < val_fraction < 1:
        raise ValueError('--val-fraction must be between 0 and 1, got %s' % val_fraction)
    train, validation = {}, {}
    for class_id, files in files_by_class.items():
        files = sorted(files)
        random.Random(seed * 1000003 + zlib.crc32(class_id.encode())).shuffle(files)
        n_val = min(max(int(round(len(files) * val_fraction)), 1), len(files) - 1)
        if len(files) < 2:
            n_val = 0  # check_classes refuses a class with nothing for validation
        validation[class_id], train[class_id] = sorted(files[:n_val]), sorted(files[n_val:])
    return train, validation


def _report(paths, why):
    if paths:
        log.warning('skipping %d file(s) %s:\n  %s', len(paths), why, '\n  '.join(paths))


# ---------------------------------------------------------------------------------------------
# One preprocessing, in TF ops.

# JPEGs decode with the accurate integer DCT, which gives the same pixels as Pillow (and so
# imageio), whole or cropped.
JPEG_DCT = 'INTEGER_ACCURATE'


def _is_jpeg(contents):
    return tf.equal(tf.strings.substr(contents, 0, 3), b'\xff\xd8\xff')


def _decode_other(contents):
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_image(contents):
    """Encoded bytes (JPEG, PNG, GIF's first frame, BMP; whatever the file is named) -> RGB uint8.

    Grayscale is repeated into three channels, alpha dropped, CMYK converted.
    """
    image = tf.cond(_is_jpeg(contents),
                    lambda: tf.io.decode_jpeg(contents, channels=3, dct_method=JPEG_DCT),
                    lambda: _decode_other(contents))
    image.set_shape([None, None, 3])
    return image


def resize_side_range(image_size):
    """slim's short-side range [256, 512] at 224 px, scaled to `image_size`."""
    scale = image_size / REFERENCE_SIZE
    return int(round(RESIZE_SIDE_MIN * scale)), int(round(RESIZE_SIDE_MAX * scale))


def preprocessing_settings(image_size):
    """What the preprocessing does at `image_size`, for the settings saved with a checkpoint."""
    side_min, side_max = resize_side_range(image_size)
    return {'name': 'vgg', 'color': 'RGB 0..255', 'means': list(MEANS),
            'train_resize_side': [side_min, side_max], 'eval_resize_side': side_min}


def _aspect_preserving_resize(image, smallest_side):
    """slim's: the short side to `smallest_side`, the aspect kept, with TF1's bilinear resize
    (tf.image.resize_bilinear, align_corners=False: no half-pixel centres), the one vgg_19.ckpt's
    published accuracy was measured through."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.cast(smallest_side, tf.float32) / tf.minimum(height, width)
    size = tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32)
    # The max guards against a rounding that lands one pixel short of the crop.
    size = tf.maximum(size, smallest_side)
    resized = tf.raw_ops.ResizeBilinear(images=image[None], size=size, half_pixel_centers=False)
    return resized[0]


def _subtract_means(image):
    return image - tf.constant(MEANS, dtype=tf.float32)


def to_viewable(images):
    """Network inputs back to the RGB uint8 pixels they show (for TensorBoard)."""
    return tf.cast(tf.clip_by_value(images + tf.constant(MEANS, dtype=tf.float32), 0, 255),
                   tf.uint8)


def random_crop_window(height, width, image_size):
    """[top, left, size, size] of slim's training crop, in the pixels of the original image.

    slim resizes the short side to a random side in the scaled [256, 512], then takes a random
    `image_size` square. The same square, found in the original first, is image_size * short /
    side pixels wide at a random place: only it needs decoding and resizing.
    """
    side_min, side_max = resize_side_range(image_size)
    side = tf.random.uniform([], side_min, side_max + 1, dtype=tf.int32)
    short = tf.minimum(height, width)
    size = tf.cast(tf.round(image_size * tf.cast(short, tf.float32) / tf.cast(side, tf.float32)),
                   tf.int32)
    size = tf.clip_by_value(size, 1, short)
    top = tf.random.uniform([], 0, height - size + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, width - size + 1, dtype=tf.int32)
    return tf.stack([top, left, size, size])


def _augment(window, image_size):
    image = tf.raw_ops.ResizeBilinear(images=window[None], size=[image_size, image_size],
                                      half_pixel_centers=True)[0]
    image = tf.image.random_flip_left_right(image)
    image.set_shape([image_size, image_size, 3])
    return _subtract_means(image)


def preprocess_for_train(image, image_size):
    """Random short side in the scaled [256, 512], random square crop, random flip, means off."""
    shape = tf.shape(image)
    top, left, size, _ = tf.unstack(random_crop_window(shape[0], shape[1], image_size))
    return _augment(tf.slice(image, [top, left, 0], [size, size, 3]), image_size)


def decode_for_train(contents, image_size):
    """Encoded bytes -> preprocess_for_train(decode_image(bytes)), decoding of a JPEG only the
    pixels that its random crop keeps."""
    def jpeg():
        shape = tf.image.extract_jpeg_shape(contents)
        window = random_crop_window(shape[0], shape[1], image_size)
        return _augment(tf.image.decode_and_crop_jpeg(contents, window, channels=3,
                                                      dct_method=JPEG_DCT), image_size)
    return tf.cond(_is_jpeg(contents), jpeg,
                   lambda: preprocess_for_train(_decode_other(contents), image_size))


def preprocess_for_eval(image, image_size):
    """Short side to the scaled 256, central square crop, means off."""
    return eval_views(image, image_size, 'none')[0]


# Test-time augmentation: the views of an image whose predictions evaluation averages, by mode:
# how many eval_views makes (a test holds the two together).
TTA_VIEWS = {'none': 1, 'flip': 2, '10crop': 10}
TTA_MODES = tuple(TTA_VIEWS)


def eval_views(image, image_size, tta='none'):
    """The views of `image` that evaluation with test-time augmentation `tta` averages over,
    [views, size, size, 3], each made as preprocess_for_eval makes its one: 'none' the central
    crop alone; 'flip' it and its mirror image; '10crop' the central and the four corner crops
    and their mirror images (the multi-crop evaluation of VGG's and Inception's papers)."""
    image = _aspect_preserving_resize(image, resize_side_range(image_size)[0])
    shape = tf.shape(image)
    bottom, right = shape[0] - image_size, shape[1] - image_size
    corners = [(bottom // 2, right // 2)]  # the central crop first: 'none' is views[0]
    if tta == '10crop':
        corners += [(0, 0), (0, right), (bottom, 0), (bottom, right)]
    views = tf.stack([tf.slice(image, [top, left, 0], [image_size, image_size, 3])
                      for top, left in corners])
    if tta != 'none':
        views = tf.concat([views, tf.reverse(views, [2])], 0)
    return _subtract_means(views)


def evaluation_input(image, image_size, tta='none'):
    """What evaluation feeds the network for `image`: the one central crop (preprocess_for_eval)
    without test-time augmentation, else its eval_views."""
    return preprocess_for_eval(image, image_size) if tta == 'none' else eval_views(
        image, image_size, tta)


# ---------------------------------------------------------------------------------------------
# tf.data pipelines.

def split_placeholders(name):
    """A Split of placeholders (paths, int64 labels) to build a pipeline on, fed with
    `split_feed` to its iterator's initializer: a Split of lists would be written into the graph
    as constants, so the graph and every checkpoint's .meta would grow with the dataset."""
    with tf.name_scope(name):
        return Split(tf.placeholder(tf.string, [None], name='paths'),
                     tf.placeholder(tf.int64, [None], name='labels'))


def split_feed(placeholders, split):
    """The feed_dict that gives `placeholders` (split_placeholders) the lists of `split`."""
    return {placeholders.paths: split.paths, placeholders.labels: split.labels}


def as_written(fn):
    """`fn` for tf.data to trace as it is written, without AutoGraph's conversion: the
    pipelines' functions branch on tensors only through tf.cond, so the conversion changes
    nothing, and it cost 0.25 s at the first map of each function (AMX Xeon)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _train_example(image_size):
    """(path, label) -> (the image augmented for training, label): what training and the
    feature cache's views read."""
    return as_written(
        lambda path, label: (decode_for_train(tf.io.read_file(path), image_size), label))


def bounded_close(ds):
    """`ds` without tf.data's autotuning thread. Destroying an iterator waits for that thread's
    next wake-up, and its period grows to a minute over a long run: the end of a run on 20,200
    images took 7 to 11 s in five of nine runs, all in Session.close (TensorFlow 2.21). AUTOTUNE
    then means one call per core and a prefetch buffer that grows while its consumer waits."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def train_pipeline(split, image_size, batch_size, seed=None):
    """Endless shuffled batches of (images, labels) with training augmentation, fixed shapes.
    `split` holds lists, or tensors (split_placeholders)."""
    ds = tf.data.Dataset.from_tensor_slices((split.paths, split.labels))
    # The whole split is one shuffle buffer of (path, label): a few MB even for ImageNet.
    ds = ds.shuffle(tf.size(split.paths, out_type=tf.int64), seed=seed,
                    reshuffle_each_iteration=True).repeat()
    # Images come out as they are ready, not in file order: the order is random anyway.
    ds = ds.map(_train_example(image_size), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=False)
    # A file that went bad after the check drops itself here, before batching, not its batch.
    ds = ds.ignore_errors()
    return bounded_close(ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def views_pipeline(split, image_size, batch_size):
    """One pass over `split` (lists, or tensors) as batches of (images, labels), each image
    augmented as for training: the views that features.py stores."""
    ds = tf.data.Dataset.from_tensor_slices((split.paths, split.labels))
    ds = ds.map(_train_example(image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return bounded_close(ds.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE))


def eval_pipeline(split, image_size, batch_size, tta='none'):
    """One pass over every example of `split` (lists, or tensors), in order, as batches of
    (images, labels, paths); the last partial batch included. With test-time augmentation
    `tta`, each image is its eval_views, [batch, views, size, size, 3], and `batch_size` counts
    the views: a batch holds batch_size // views images (one at least), the memory of a batch
    of `batch_size` network inputs."""
    batch_size = max(1, batch_size // TTA_VIEWS[tta])
    ds = tf.data.Dataset.from_tensor_slices((split.paths, split.labels))
    # The path travels with its image, so a report can name the files it got wrong.
    ds = ds.map(as_written(lambda path, label: (evaluation_input(
        decode_image(tf.io.read_file(path)), image_size, tta), label, path)),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors()
    return bounded_close(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


# ---------------------------------------------------------------------------------------------
# Files that cannot be used.

def find_unreadable(paths):
    """The paths among `paths` that TensorFlow cannot decode as images (check_images)."""
    return check_images(paths)[0]


def check_images(paths):
    """(the paths among `paths` that TensorFlow cannot decode as images, {path: a 64-bit digest
    of its bytes} of the others): the training decoder run over every file (full decode,
    parallel) in a graph of its own. A file that fails is recognised by its absence from what
    comes out, so no error message needs to name it."""
    paths = list(paths)
    if not paths:
        return [], {}
    with tf.Graph().as_default():
        ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()

        def check(i, path):
            contents = tf.io.read_file(path)
            return i, tf.shape(decode_image(contents)), tf.fingerprint(contents[None])[0]
        ds = ds.map(as_written(check), num_parallel_calls=tf.data.AUTOTUNE)
        ds = bounded_close(ds.ignore_errors().batch(256))
        index, _, digest = tf.data.make_one_shot_iterator(ds).get_next()
        digests = {}
        with tf.Session() as session:
            try:
                while True:
                    found = session.run([index, digest])
                    digests.update((paths[i], d.tobytes().hex()) for i, d in zip(*found))
            except tf.errors.OutOfRangeError:
                pass
    return [p for p in paths if p not in digests], digests


def copies_across(dataset, digests):
    """[(validation path, training path)] of the validation images of `dataset` whose bytes are
    those of a training image ({path: digest}, from check_images; compared byte for byte)."""
    training = {}
    for path in dataset.train.paths:
        if path in digests:
            training.setdefault(digests[path], path)
    return [(path, training[digests[path]]) for path in dataset.validation.paths
            if digests.get(path) in training and _same_bytes(path, training[digests[path]])]


def _same_bytes(a, b):
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        return fa.read() == fb.read()


def size_problem(width, height, max_pixels=MAX_PIXELS, resize_side=0):
    """Why an image of `width` x `height` is too large to decode, or None: over `max_pixels`
    itself, or once its short side is resized to `resize_side` (a 1 x 100000 strip would be
    resized to 256 x 25600000)."""
    if width * height > max_pixels:
        return '%dx%d pixels is over the limit of %d' % (width, height, max_pixels)
    resized = resize_side * resize_side * max(width, height) // max(min(width, height), 1)
    if resized > max_pixels:
        return ('%dx%d pixels: its short side resized to %d would give %d pixels, over the limit '
                'of %d' % (width, height, resize_side, resized, max_pixels))
    return None


@contextlib.contextmanager
def limits_of_our_own():
    """Pillow without its own pixel limit while this code opens images: the limit here
    (MAX_PIXELS, inference's --max-pixels) is checked from the header before anything decodes,
    with a message that says what to do, where Pillow's would raise its DecompressionBombError
    (at 179 M pixels) before the header could be read. Entered by the thread that starts the
    work, so the process's setting is put back once it is done."""
    saved = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = saved


def header_problem(path, max_pixels=MAX_PIXELS, resize_side=0):
    """size_problem of the image in `path`, read from its header alone (Pillow decodes no pixel
    to open it); a file without a readable header is left to the decoder to refuse."""
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError):
        return None
    return size_problem(width, height, max_pixels, resize_side)


def find_oversized(paths, max_pixels=MAX_PIXELS, resize_side=0):
    """{path: why} of the images among `paths` too large to decode (header_problem), read in
    parallel threads."""
    with limits_of_our_own(), concurrent.futures.ThreadPoolExecutor(8) as pool:
        problems = pool.map(lambda p: header_problem(p, max_pixels, resize_side), paths)
        return {p: why for p, why in zip(paths, problems) if why}


def _fingerprint(paths, *options):
    digest = hashlib.sha1(repr(options).encode())
    for p in paths:
        st = os.stat(p)
        digest.update(('%s\0%d\0%d\n' % (p, st.st_size, st.st_mtime_ns)).encode())
    return digest.hexdigest()


def drop_unreadable(dataset, cache_file=None, max_share=1.0, max_pixels=MAX_PIXELS,
                    resize_side=0, write_cache=True):
    """The dataset without the files that cannot be used, each reported once by path: files too
    large to decode (find_oversized, from their headers), then the ones that do not decode
    (find_unreadable). More than `max_share` of the dataset unusable is a DatasetError.

    The check decodes every image once; its result is kept in `cache_file` and reused while no
    file of the dataset changed (same paths, sizes and modification times); with `write_cache`
    false it is only read (a cluster's other workers read what the chief wrote).
    """
    paths = dataset.train.paths + dataset.validation.paths
    fingerprint = _fingerprint(paths, max_pixels, resize_side)
    bad = None
    if cache_file and os.path.isfile(cache_file):
        try:
            with open(cache_file) as f:
                cached = json.load(f)
            if cached.get('fingerprint') == fingerprint:
                bad, copies = dict(cached['unreadable']), [tuple(c) for c in cached['copies']]
        except (ValueError, KeyError, TypeError, OSError):
            bad = None  # a damaged cache is only a cache: check again
    if bad is None:
        log.info('checking that all %d images decode (once per dataset)', len(paths))
        bad = find_oversized(paths, max_pixels, resize_side)
        unreadable, digests = check_images([p for p in paths if p not in bad])
        bad.update((p, 'cannot be decoded') for p in unreadable)
        copies = copies_across(dataset, digests)
        if cache_file and write_cache:
            tmp = cache_file + '.tmp'
            with open(tmp, 'w') as f:
                json.dump({'fingerprint': fingerprint, 'unreadable': bad, 'copies': copies}, f)
            os.replace(tmp, cache_file)
    if copies:
        log.warning('%d validation image(s) are copies of training images (the first: %s, of '
                    '%s), so validation accuracy overstates what the model does on new photos: '
                    '%spython data.py audit --dataset %s lists them, and near copies too',
                    len(copies), *copies[0], 'the pairs are under "copies" in %s; ' % cache_file
                    if cache_file else '', dataset.root)
    _report([p for p, why in bad.items() if why == 'cannot be decoded'],
            'that cannot be decoded as images')
    _report(['%s (%s)' % (p, why) for p, why in bad.items() if why != 'cannot be decoded'],
            'too large to decode')
    if paths and len(bad) > max_share * len(paths):
        raise DatasetError(
            '%d of the %d images of %s (%.1f%%) cannot be used, more than --max-unreadable %g '
            'allows (the first: %s, %s): repair or remove them, or raise --max-unreadable'
            % (len(bad), len(paths), dataset.root, 100 * len(bad) / len(paths), max_share,
               *next(iter(bad.items()))))

    def keep(split):
        pairs = [(p, label) for p, label in zip(split.paths, split.labels) if p not in bad]
        return Split([p for p, _ in pairs], [label for _, label in pairs])
    return dataset._replace(train=keep(dataset.train), validation=keep(dataset.validation))


# ---------------------------------------------------------------------------------------------
# The dataset audit: python data.py audit --dataset ROOT

# Two images are near copies when the perceptual hashes of one and of the other or its mirror
# image differ in at most this many of their 63 bits. Measured on 72 crops of 12 scikit-image
# photos: their copies resized to half, re-encoded at JPEG quality 30, mirrored, brightened,
# or all at once differed by 0-12 bits (all but 1 of 360 by at most 6); two different crops by
# at least 12 (1 of 2,556 pairs at 12, 1% under 22).
NEAR_COPY_BITS = 10
HASH_SIDE = 32  # the grayscale thumbnail whose 8x8 lowest spatial frequencies make the hash
EXIF_ORIENTATION = 0x0112


def _dct_matrix(n):
    """The orthonormal DCT-II as an n x n matrix (what scipy.fft.dct(norm='ortho') applies)."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


def perceptual_hash(image):
    """pHash of a PIL `image`: the signs of its 63 lowest spatial frequencies (the 8x8 corner of
    the DCT of a 32x32 grayscale thumbnail, less the mean) against their median, as an int.
    Resizing, recompression and small changes of brightness move few bits."""
    thumbnail = np.asarray(image.convert('L').resize((HASH_SIDE, HASH_SIDE),
                                                     PIL.Image.BILINEAR), np.float64)
    dct = _dct_matrix(HASH_SIDE)
    low = (dct @ thumbnail @ dct.T)[:8, :8].ravel()[1:]
    median = np.median(low)
    return int(''.join('1' if v > median else '0' for v in low), 2)


def rgb_of(image):
    """A Pillow image as RGB; a 16-bit grayscale one by its high byte, as TensorFlow's decoder
    reads it in training (Pillow's own conversion would clip it to white)."""
    if image.mode.startswith('I;16'):
        gray = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return PIL.Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
    return image.convert('RGB')


def _look(path):
    """(width, height, EXIF orientation, pHash, pHash of the mirror image) of the image in
    `path`, or None when Pillow cannot read it or it is too large to decode (size_problem)."""
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
            if size_problem(width, height):
                return None
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image.draft('RGB', (4 * HASH_SIDE, 4 * HASH_SIDE))  # a JPEG decodes at 1/2-1/8
            image = rgb_of(image)
            return (width, height, orientation, perceptual_hash(image),
                    perceptual_hash(image.transpose(PIL.Image.FLIP_LEFT_RIGHT)))
    except Exception:  # whatever a damaged file makes Pillow raise: the decode check names it
        return None


def _where(a, b, split):
    kinds = {split[a], split[b]}
    return 'across the split' if len(kinds) > 1 else 'within ' + kinds.pop()


def near_copies(hashes, mirrored, threshold=NEAR_COPY_BITS, rows=None):
    """[(i, j, bits)] of the pairs i < j whose hashes (ints: each image's, and its mirror
    image's) differ in at most `threshold` bits, either way round."""
    h = np.array(hashes, np.uint64)
    m = np.array(mirrored, np.uint64)
    pairs = []
    rows = rows or max(1, 2 ** 22 // max(len(h), 1))  # a block of rows x all: 32 MB of bits
    for start in range(0, len(h), rows):
        block = slice(start, start + rows)
        bits = np.minimum(np.minimum(np.bitwise_count(h[block, None] ^ h[None, :]),
                                     np.bitwise_count(m[block, None] ^ h[None, :])),
                          np.bitwise_count(h[block, None] ^ m[None, :]))
        for i, j in zip(*np.nonzero(bits <= threshold)):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(bits[i, j])))
    return pairs


def audit(dataset, image_size=224, threshold=NEAR_COPY_BITS):
    """What in `dataset` may mislead training or validation, as a JSON-able dict: class counts
    and imbalance, unreadable files, exact copies (the same bytes) and near copies (perceptual
    hashes within `threshold` bits, mirror images included), each within a split or across it,
    images whose short side is under `image_size`, and EXIF-rotated files."""
    split = {p: 'training' for p in dataset.train.paths}
    split.update((p, 'validation') for p in dataset.validation.paths)
    # A file listed in both (Food-101's lists can be edited so) is its own copy across them.
    in_both = sorted(set(dataset.train.paths) & set(dataset.validation.paths))
    paths = list(split)
    too_large = find_oversized(paths)  # from the headers: never decoded, by either reader
    unreadable, digests = check_images([p for p in paths if p not in too_large])
    with limits_of_our_own(), concurrent.futures.ThreadPoolExecutor(8) as pool:
        looks = dict(zip(paths, pool.map(_look, paths)))
    groups = collections.defaultdict(list)
    for path, digest in digests.items():
        groups[digest].append(path)
    exact = [group for group in groups.values() if len(group) > 1
             and all(_same_bytes(group[0], p) for p in group[1:])]
    copy_of = {p: group[0] for group in exact for p in group}
    hashed = [p for p in paths if looks[p] and p in digests]
    near = [{'images': [hashed[i], hashed[j]], 'bits': bits,
             'where': _where(hashed[i], hashed[j], split)}
            for i, j, bits in near_copies([looks[p][3] for p in hashed],
                                          [looks[p][4] for p in hashed], threshold)
            if copy_of.get(hashed[i], hashed[i]) != copy_of.get(hashed[j], hashed[j])]
    counts = [{'class': name, 'training': dataset.train.labels.count(i),
               'validation': dataset.validation.labels.count(i)}
              for i, name in enumerate(dataset.class_ids)]
    training = [c['training'] for c in counts]
    return {
        'dataset': dataset.root, 'layout': dataset.layout, 'image_size': image_size,
        'images': {'training': len(dataset.train.paths),
                   'validation': len(dataset.validation.paths)},
        'classes': counts,
        'imbalance': max(training) / max(min(training), 1) if training else None,
        'unreadable': sorted(unreadable),
        'too_large': [{'image': p, 'why': why} for p, why in sorted(too_large.items())],
        'exact_copies': [{'images': [p, p], 'where': 'across the split'} for p in in_both] + [
            {'images': sorted(group),
             'where': _where(min(group, key=split.get), max(group, key=split.get), split)}
            for group in exact],
        'near_copies': near, 'near_copy_bits': threshold,
        'small': [{'image': p, 'width': looks[p][0], 'height': looks[p][1]} for p in hashed
                  if min(looks[p][:2]) < image_size],
        'exif_rotated': [{'image': p, 'orientation': looks[p][2]} for p in hashed
                         if looks[p][2] not in (1, None)],
    }


def audit_report(found, shown=5):
    """`audit`'s findings as lines for a person: each kind counted, its first `shown` named."""
    images = found['images']
    lines = ['dataset %s (%s): %d classes, %d training and %d validation images' % (
        found['dataset'], found['layout'], len(found['classes']), images['training'],
        images['validation'])]
    counts = sorted(found['classes'], key=lambda c: c['training'])
    if counts:
        lines.append('training images a class: %d (%s) to %d (%s), imbalance %.1fx' % (
            counts[0]['training'], counts[0]['class'], counts[-1]['training'],
            counts[-1]['class'], found['imbalance']))

    def section(title, items, text):
        lines.append('%s: %d' % (title, len(items)))
        lines.extend('  ' + text(item) for item in items[:shown])
        if len(items) > shown:
            lines.append('  ... (--json lists all)')
    for where in ('across the split', 'within training', 'within validation'):
        section('exact copies ' + where, [c for c in found['exact_copies']
                                          if c['where'] == where],
                lambda c: ' = '.join(c['images']))
        section('near copies %s (at most %d bits apart)' % (where, found['near_copy_bits']),
                [c for c in found['near_copies'] if c['where'] == where],
                lambda c: '%s ~ %s (%d bits)' % (*c['images'], c['bits']))
    section('smaller than %d px on the short side' % found['image_size'], found['small'],
            lambda s: '%s (%dx%d)' % (s['image'], s['width'], s['height']))
    section('EXIF-rotated (training reads them as stored, not as shown)',
            found['exif_rotated'], lambda r: '%s (orientation %d)' % (r['image'], r['orientation']))
    section('unreadable', found['unreadable'], str)
    section('too large to decode', found['too_large'], lambda t: '%s (%s)' % (t['image'],
                                                                              t['why']))
    return lines


def main(argv=None):
    import cli
    p = cli.ArgumentParser(description='Dataset tools.')
    commands = p.add_subparsers(dest='command', required=True)
    check = commands.add_parser(
        'audit', help='copies within and across the split, class balance, small, rotated and '
                      'unreadable images')
    check.add_argument('--dataset', required=True, help='dataset root, as train.py takes it')
    check.add_argument('--val-fraction', type=float, default=0.2,
                       help="train.py's, for a dataset without a split of its own")
    check.add_argument('--seed', type=int, default=0, help="train.py's seed of that split")
    check.add_argument('--image-size', type=int, default=224,
                       help="train.py's: smaller images are listed")
    check.add_argument('--near-copy-bits', type=int, default=NEAR_COPY_BITS,
                       help='perceptual hashes at most this many of 63 bits apart are near '
                            'copies')
    check.add_argument('--json', action='store_true', help='one JSON object instead of text')
    args = p.parse_args(argv)
    logging.basicConfig(format='%(message)s', level=logging.WARNING)
    tf.get_logger().setLevel(logging.ERROR)
    tf.disable_eager_execution()
    hardware.session_config()  # the first device listing, the quiet one (no CUDA line)
    try:
        found = audit(load_dataset(args.dataset, args.val_fraction, args.seed), args.image_size,
                      args.near_copy_bits)
    except (DatasetError, ValueError) as e:  # ValueError: a --val-fraction the split refuses
        print('data.py: error: %s' % e, file=sys.stderr)
        return 2
    print(json.dumps(found, indent=1) if args.json else '\n'.join(audit_report(found)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
