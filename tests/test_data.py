"""data.py: both layouts and the split, decoding whatever the file is, the preprocessing and the
pipelines."""
import json
import os

import numpy as np
import PIL.Image
import pytest
import tensorflow.compat.v1 as tf

import data
from conftest import bad_files, random_image


def _write(path, image=None, fmt='JPEG', **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = random_image(40, 60) if image is None else image
    PIL.Image.fromarray(image).save(path, format=fmt, **kwargs)
    return path


def _food101(root, classes=('apple_pie', 'baby_back_ribs'), per_class=3):
    os.makedirs(os.path.join(root, 'meta'))
    train, test = [], []
    for c in classes:
        for i in range(per_class):
            _write(os.path.join(root, 'images', c, '%d.jpg' % i))
            (test if i == 0 else train).append('%s/%d' % (c, i))
    meta = os.path.join(root, 'meta')
    for name, lines in (('classes.txt', classes),
                        ('labels.txt', [c.replace('_', ' ').capitalize() for c in classes]),
                        ('train.txt', train), ('test.txt', test)):
        with open(os.path.join(meta, name), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return meta


def test_food101_layout(tmp_path):
    _food101(str(tmp_path))
    ds = data.load_dataset(str(tmp_path))
    assert ds.layout == 'food-101'
    assert ds.class_ids == ['apple_pie', 'baby_back_ribs']
    assert ds.class_names == ['Apple pie', 'Baby back ribs']
    assert len(ds.train.paths) == 4 and len(ds.validation.paths) == 2
    assert ds.train.labels == [0, 0, 1, 1]
    assert ds.train.paths[2].endswith(os.path.join('images', 'baby_back_ribs', '1.jpg'))


def test_food101_missing_files_are_skipped_and_reported(tmp_path, caplog):
    meta = _food101(str(tmp_path))
    with open(os.path.join(meta, 'train.txt'), 'a') as f:
        f.write('apple_pie/404\n')
    ds = data.load_dataset(str(tmp_path))
    assert len(ds.train.paths) == 4
    assert 'skipping 1 file(s) listed in' in caplog.text and '404.jpg' in caplog.text


def test_food101_entries_outside_the_root_are_refused(tmp_path):
    meta = _food101(str(tmp_path))
    with open(os.path.join(meta, 'test.txt'), 'a') as f:
        f.write('apple_pie/../../../../etc/passwd\n')
    with pytest.raises(data.DatasetError, match='points outside'):
        data.load_dataset(str(tmp_path))


def test_class_folders_with_their_own_split(tmp_path):
    for part, n in (('train', 3), ('val', 1)):
        for c in ('cat', 'dog'):
            for i in range(n):
                _write(str(tmp_path / part / c / ('%d.jpg' % i)))
    ds = data.load_dataset(str(tmp_path))
    assert ds.class_ids == ['cat', 'dog'] and ds.layout == 'class folders, train/val'
    assert len(ds.train.paths) == 6 and ds.validation.labels == [0, 1]


def test_class_folders_without_a_split_are_split_stratified_and_stably(tmp_path):
    sizes = {'a': 10, 'b': 5, 'c': 2, 'd': 1}
    for c, n in sizes.items():
        for i in range(n):
            _write(str(tmp_path / c / ('%02d.png' % i)), fmt='PNG')
    (tmp_path / 'a' / 'notes.txt').write_text('not an image')
    ds = data.load_dataset(str(tmp_path), val_fraction=0.2, seed=3)
    assert ds.class_ids == ['a', 'b', 'c', 'd']
    val = np.bincount(ds.validation.labels, minlength=4).tolist()
    train = np.bincount(ds.train.labels, minlength=4).tolist()
    assert val == [2, 1, 1, 0] and train == [8, 4, 1, 1]
    assert not set(ds.train.paths) & set(ds.validation.paths)
    again = data.load_dataset(str(tmp_path), val_fraction=0.2, seed=3)
    assert again.validation.paths == ds.validation.paths
    other = data.load_dataset(str(tmp_path), val_fraction=0.2, seed=4)
    assert other.validation.paths != ds.validation.paths


def test_stratified_split_ignores_listing_order():
    files = {'x': ['x%d' % i for i in range(20)], 'y': ['y%d' % i for i in range(7)]}
    shuffled = {'y': files['y'][::-1], 'x': files['x'][::-1]}
    assert data.stratified_split(files, 0.3, 1) == data.stratified_split(shuffled, 0.3, 1)


@pytest.mark.parametrize('make', ['nothing', 'files only', 'empty class'])
def test_unknown_layout_says_what_was_found_and_expected(tmp_path, make):
    if make == 'files only':
        (tmp_path / 'readme.txt').write_text('hi')
    if make == 'empty class':
        (tmp_path / 'cats').mkdir()
    with pytest.raises(data.DatasetError, match='expected meta/classes.txt'):
        data.load_dataset(str(tmp_path))


def test_missing_root():
    with pytest.raises(data.DatasetError, match='not found'):
        data.load_dataset('/no/such/dataset')


def _decode(path):
    image = data.decode_image(tf.io.read_file(path))
    with tf.Session() as session:
        return session.run(image)


def test_decodes_every_kind_of_image_to_rgb_whatever_its_name(tmp_path):
    rgb = random_image(30, 50)
    cases = {
        'gray.jpg': (PIL.Image.fromarray(rgb[..., 0]), 'JPEG'),
        'cmyk.jpg': (PIL.Image.fromarray(rgb).convert('CMYK'), 'JPEG'),
        'alpha.png': (PIL.Image.fromarray(np.dstack([rgb, rgb[..., :1]])), 'PNG'),
        'palette.gif': (PIL.Image.fromarray(rgb).convert('P'), 'GIF'),
        'plain.bmp': (PIL.Image.fromarray(rgb), 'BMP'),
        'png_named.jpg': (PIL.Image.fromarray(rgb), 'PNG'),
        'jpeg_named.png': (PIL.Image.fromarray(rgb), 'JPEG'),
    }
    for name, (image, fmt) in cases.items():
        path = str(tmp_path / name)
        image.save(path, format=fmt)
        decoded = _decode(path)
        assert decoded.shape == (30, 50, 3) and decoded.dtype == np.uint8, name
        # The same pixels as Pillow (and so imageio, which inference reads with) gives.
        expected = np.asarray(PIL.Image.open(path).convert('RGB'))
        np.testing.assert_array_equal(decoded, expected, err_msg=name)


def test_find_unreadable_names_each_bad_file(tmp_path):
    good, bad = bad_files(str(tmp_path))
    assert sorted(data.find_unreadable([good] + bad)) == sorted(bad)


def test_drop_unreadable_reports_once_and_caches(tmp_path, monkeypatch, caplog):
    good, bad = bad_files(str(tmp_path / 'files'))
    ds = data.Dataset('r', 'test', ['x'], ['x'], data.Split([good] + bad[:2], [0, 0, 0]),
                      data.Split(bad[2:] + [good], [0, 0, 0]))
    cache = str(tmp_path / 'unreadable.json')
    kept = data.drop_unreadable(ds, cache)
    assert kept.train.paths == [good] and kept.validation.paths == [good]
    assert 'skipping 4 file(s) that cannot be decoded' in caplog.text

    def no_second_check(paths):
        raise AssertionError('the cached result should have been used')
    monkeypatch.setattr(data, 'find_unreadable', no_second_check)
    assert data.drop_unreadable(ds, cache) == kept


def test_a_file_repaired_after_the_check_is_checked_again(tmp_path, caplog):
    good = _write(str(tmp_path / 'good.jpg'))
    with open(good, 'rb') as f:
        jpeg = f.read()
    # Damaged, then repaired in place to the same size: only its modification time tells.
    fixed = str(tmp_path / 'fixed.jpg')
    with open(fixed, 'wb') as f:
        f.write(b'\0' * 4 + jpeg[4:])
    os.utime(fixed, ns=(10 ** 18, 10 ** 18))
    ds = data.Dataset('r', 'test', ['x'], ['x'], data.Split([good, fixed], [0, 0]),
                      data.Split([good], [0]))
    cache = str(tmp_path / 'unreadable.json')
    assert data.drop_unreadable(ds, cache).train.paths == [good]
    with open(fixed, 'wb') as f:
        f.write(jpeg)
    os.utime(fixed, ns=(10 ** 18 + 10 ** 9, 10 ** 18 + 10 ** 9))
    caplog.clear()
    assert data.drop_unreadable(ds, cache).train.paths == [good, fixed]
    assert 'cannot be decoded' not in caplog.text


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_training_flips_about_half_the_crops(tmp_path, fmt):
    # Red rising left to right: a crop shows it rising, unless it was flipped.
    image = np.zeros([60, 80, 3], np.uint8)
    image[..., 0] = np.arange(80)[None, :] * 3
    out = data.decode_for_train(tf.io.read_file(_write(str(tmp_path / 'a.img'), image, fmt=fmt,
                                                       quality=95)), 32)
    runs = 200
    with tf.Session() as session:
        falling = sum(int(np.sign(np.diff(session.run(out)[..., 0], axis=1).mean()) < 0)
                      for _ in range(runs))
    # Binomial(200, 1/2): 100 +- 7; outside 70..130 by chance once in ~40,000 runs.
    assert 70 <= falling <= 130, falling


def _run(tensor):
    with tf.Session() as session:
        return session.run(tensor)


@pytest.mark.parametrize('height, width, size, top, left', [
    # The short side goes to 57 (256 * 50 / 224, rounded), the long one to 240 * 57 / 100 =
    # 136.8, rounded to 137; the central 50 of 57 start at 3, of 137 at 43.
    (100, 240, 50, 3, 43),  # landscape
    (240, 100, 50, 43, 3),  # portrait
])
def test_eval_preprocessing_is_the_central_crop_of_the_short_side_at_the_scaled_256(
        height, width, size, top, left):
    # Column index in red, row index in green: a linear ramp, which a bilinear resize keeps
    # exact away from the borders, so every pixel of the crop says where it was sampled.
    image = np.zeros([height, width, 3], np.uint8)
    image[..., 0] = np.arange(width)[None, :]
    image[..., 1] = np.arange(height)[:, None]
    image[..., 2] = 7
    out = _run(data.preprocess_for_eval(tf.constant(image), size)) + data.MEANS
    assert out.shape == (size, size, 3)
    resized = (57, 137) if height < width else (137, 57)
    # TF1's bilinear resize, as slim's: output pixel k of n samples the input at k * in / n.
    rows = (np.arange(size) + top) * height / resized[0]
    columns = (np.arange(size) + left) * width / resized[1]
    np.testing.assert_allclose(out[..., 0], np.broadcast_to(columns[None, :], (size, size)),
                               atol=0.01)
    np.testing.assert_allclose(out[..., 1], np.broadcast_to(rows[:, None], (size, size)),
                               atol=0.01)
    np.testing.assert_allclose(out[..., 2], 7, atol=1e-4)


def test_tta_views_are_the_central_and_corner_crops_and_their_mirror_images():
    # The ramp of the test above, landscape: resized to 57 x 137, 50-px crops at rows 0, 3 or 7
    # and columns 0, 43 or 87; a mirror image reads its columns backwards.
    height, width, size = 100, 240, 50
    image = np.zeros([height, width, 3], np.uint8)
    image[..., 0] = np.arange(width)[None, :]
    image[..., 1] = np.arange(height)[:, None]
    views = _run(data.eval_views(tf.constant(image), size, '10crop')) + data.MEANS
    assert views.shape == (10, size, size, 3)
    for i, (top, left) in enumerate([(3, 43), (0, 0), (0, 87), (7, 0), (7, 87)]):
        rows = (np.arange(size) + top) * height / 57
        columns = (np.arange(size) + left) * width / 137
        for view, seen in ((views[i], columns), (views[5 + i], columns[::-1])):
            np.testing.assert_allclose(view[..., 0], np.broadcast_to(seen, (size, size)),
                                       atol=0.01)
            np.testing.assert_allclose(view[..., 1], np.broadcast_to(rows[:, None],
                                                                     (size, size)), atol=0.01)
    flip = _run(data.eval_views(tf.constant(image), size, 'flip')) + data.MEANS
    np.testing.assert_array_equal(flip, views[[0, 5]])
    # Without augmentation, the one central crop that preprocess_for_eval gives.
    np.testing.assert_array_equal(_run(data.evaluation_input(tf.constant(image), size)),
                                  views[0] - data.MEANS)
    for tta, count in data.TTA_VIEWS.items():  # the count that batches are sized by
        assert data.eval_views(tf.constant(image), size, tta).shape[0] == count


def test_with_tta_an_eval_batch_holds_as_many_network_inputs_as_without(photo_dataset):
    split = data.load_dataset(photo_dataset).validation  # 6 images
    for tta, images in (('none', 4), ('flip', 2), ('10crop', 1)):
        batch, _, _ = tf.data.make_one_shot_iterator(
            data.eval_pipeline(split, 32, 4, tta)).get_next()
        assert _run(batch).shape[0] == images, tta


def _slim_preprocess_for_eval(image, output_size, resize_side):
    """tf-slim's vgg_preprocessing.preprocess_for_eval, ported line by line (its
    _aspect_preserving_resize, _central_crop and _mean_image_subtraction)."""
    height, width = tf.to_float(tf.shape(image)[0]), tf.to_float(tf.shape(image)[1])
    scale = tf.cond(tf.greater(height, width), lambda: resize_side / width,
                    lambda: resize_side / height)
    new_height, new_width = tf.to_int32(tf.rint(height * scale)), tf.to_int32(
        tf.rint(width * scale))
    image = tf.squeeze(tf.image.resize_bilinear(tf.expand_dims(image, 0),
                                                [new_height, new_width], align_corners=False))
    offsets = tf.to_int32(tf.stack([(new_height - output_size) / 2,
                                    (new_width - output_size) / 2, 0]))
    image = tf.slice(image, offsets, [output_size, output_size, 3])
    return tf.to_float(image) - tf.constant([123.68, 116.78, 103.94])


@pytest.mark.parametrize('photo', ['chelsea', 'astronaut', 'coffee'])
@pytest.mark.parametrize('size', [224, 64])
def test_eval_preprocessing_is_slims_to_within_rounding(photo, size):
    # With half-pixel centres (the TF2 resize) the network's 224 px input differed by a mean of
    # 0.9 to 5.0 levels on these photos, up to 12 to 125.
    import skimage.data
    image = tf.constant(getattr(skimage.data, photo)())
    side = data.resize_side_range(size)[0]
    ours, slims = _run(data.preprocess_for_eval(image, size)), _run(_slim_preprocess_for_eval(
        image, size, side))
    np.testing.assert_allclose(ours, slims, atol=1e-3)


def test_preprocessing_subtracts_the_vgg_means_and_keeps_0_255():
    image = np.empty([64, 80, 3], np.uint8)
    image[...] = (124, 117, 104)
    for out in (_run(data.preprocess_for_eval(tf.constant(image), 32)),
                _run(data.preprocess_for_train(tf.constant(image), 32))):
        np.testing.assert_allclose(out, np.broadcast_to(
            np.array([124 - 123.68, 117 - 116.78, 104 - 103.94]), out.shape), atol=1e-3)


def test_train_preprocessing_is_random_and_fixed_size():
    image = tf.constant(random_image(120, 90))
    out = data.preprocess_for_train(image, 32)
    with tf.Session() as session:
        a, b = session.run(out), session.run(out)
    assert a.shape == b.shape == (32, 32, 3) and not np.array_equal(a, b)


def test_the_training_crop_window_has_slims_scale_range_and_stays_inside():
    height, width, size = 90, 150, 32
    windows = _run(tf.stack([data.random_crop_window(height, width, size) for _ in range(300)]))
    top, left, side = windows[:, 0], windows[:, 1], windows[:, 2]
    assert (windows[:, 2] == windows[:, 3]).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + side <= height).all() and (left + side <= width).all()
    # The short side resized to [37, 73] (256 and 512 at 32 px), then 32 pixels of it kept.
    side_min, side_max = data.resize_side_range(size)
    assert side.min() >= round(size * height / side_max) and side.max() <= round(
        size * height / side_min)
    assert side.max() - side.min() > 10 and len(set(left)) > 20  # it does vary


@pytest.mark.parametrize('subsampling', [0, 2])  # 4:4:4, and 4:2:0 (most photos)
def test_a_jpeg_crop_decodes_to_the_same_pixels_as_a_crop_of_the_whole(tmp_path, subsampling):
    path = _write(str(tmp_path / 'a.jpg'), random_image(97, 131), quality=90,
                  subsampling=subsampling)
    contents = tf.io.read_file(path)
    whole = _run(data.decode_image(contents))
    for top, left, size in ((0, 0, 97), (5, 17, 40), (50, 90, 41), (1, 3, 7), (8, 16, 20)):
        crop = _run(tf.image.decode_and_crop_jpeg(contents, [top, left, size, size], channels=3,
                                                  dct_method=data.JPEG_DCT))
        expected = whole[top:top + size, left:left + size]
        # With 4:2:0 chroma, the crop's first and last columns can miss the neighbour that
        # smooth upsampling reads; every other pixel is the same.
        edge = 1 if subsampling else 0
        np.testing.assert_array_equal(crop[:, edge:size - edge], expected[:, edge:size - edge])


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_decode_for_train_makes_fixed_size_inputs_of_the_image(tmp_path, fmt):
    # A flat colour: whatever the window, every pixel is that colour less the means.
    image = np.empty([70, 110, 3], np.uint8)
    image[...] = (200, 100, 50)
    path = _write(str(tmp_path / 'a.img'), image, fmt=fmt)
    out = data.decode_for_train(tf.io.read_file(path), 32)
    assert out.shape.as_list() == [32, 32, 3]
    np.testing.assert_allclose(_run(out) + data.MEANS, np.broadcast_to([200, 100, 50], [32, 32, 3]),
                               atol=2)


def test_resize_side_range_scales_with_the_image_size():
    assert data.resize_side_range(224) == (256, 512)
    assert data.resize_side_range(112) == (128, 256)


def test_eval_pipeline_keeps_the_last_partial_batch_and_the_paths(photo_dataset):
    ds = data.load_dataset(photo_dataset)
    batches = tf.data.make_one_shot_iterator(
        data.eval_pipeline(ds.train, 32, batch_size=4)).get_next()
    labels, paths = [], []
    with tf.Session() as session:
        try:
            while True:
                _, batch_labels, batch_paths = session.run(batches)
                labels.extend(batch_labels.tolist())
                paths.extend(p.decode() for p in batch_paths)
        except tf.errors.OutOfRangeError:
            pass
    assert len(ds.train.paths) % 4 != 0
    assert labels == ds.train.labels and paths == ds.train.paths


def test_to_viewable_undoes_the_mean_subtraction():
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    inputs = tf.cast(pixels, tf.float32) - tf.constant(data.MEANS)
    with tf.Session() as session:
        np.testing.assert_array_equal(session.run(data.to_viewable(inputs)), pixels)


def test_train_pipeline_skips_a_bad_file_without_losing_its_batch(tmp_path):
    good, bad = bad_files(str(tmp_path))
    split = data.Split([good, bad[0]], [1, 0])
    images, labels = tf.data.make_one_shot_iterator(
        data.train_pipeline(split, 32, batch_size=3, seed=0)).get_next()
    assert images.shape.as_list() == [3, 32, 32, 3]
    with tf.Session() as session:
        for _ in range(2):
            assert session.run(labels).tolist() == [1, 1, 1]


@pytest.mark.parametrize('counts, message', [
    ({'cat': 5}, r'has 1 class \(cat\): a classifier needs two or more'),
    ({'cat': 5, 'dog': 1}, 'class dog of .* has no validation images left'),
])
def test_a_dataset_that_cannot_be_learned_and_validated_is_refused(tmp_path, counts, message):
    for c, n in counts.items():
        for i in range(n):
            _write(str(tmp_path / c / ('%d.jpg' % i)))
    with pytest.raises(data.DatasetError, match=message):
        data.check_classes(data.load_dataset(str(tmp_path)))


def test_a_class_whose_images_are_all_unreadable_is_refused(tmp_path):
    for i in range(3):
        _write(str(tmp_path / 'cat' / ('%d.jpg' % i)))
        (tmp_path / 'dog').mkdir(exist_ok=True)
        (tmp_path / 'dog' / ('%d.jpg' % i)).write_bytes(b'not a picture')
    kept = data.drop_unreadable(data.load_dataset(str(tmp_path)))
    with pytest.raises(data.DatasetError, match='class dog of .* has no training images left'):
        data.check_classes(kept)
    data.check_classes(data.load_dataset(str(tmp_path)))  # before the check: two full classes


def test_no_pipeline_keeps_the_thread_that_made_the_end_of_a_run_wait():
    # tf.data's autotuning thread wakes at periods that grow to a minute, and destroying an
    # iterator waits for its next wake-up: the end of a run on 16,160 + 4,040 images took 7 to
    # 11 s in five of nine runs (TensorFlow 2.21, 2026-12-02), 0.2 s without it.
    import features
    split = data.Split(tf.constant(['a.jpg']), tf.constant([0], tf.int64))
    files = tf.constant([['view0-00000.tfrecord']])
    for ds in (data.train_pipeline(split, 32, 2), data.views_pipeline(split, 32, 2),
               data.eval_pipeline(split, 32, 2),
               features.pipeline(files, [1, 1, 8], 'float32', 2, 4)):
        assert ds.options().autotune.enabled is False


# ---------------------------------------------------------------------------------------------
# The dataset audit and the warning about validation copies.

AUDIT_PHOTOS = ('astronaut', 'camera', 'chelsea', 'coffee', 'rocket', 'coins', 'hubble_deep_field',
                'immunohistochemistry')


def _planted(root):
    """A train/val dataset of 8 distinct scikit-image photos (160 px) in two classes, with
    planted in validation: an exact copy of a training photo, a half-size copy, a JPEG quality
    30 copy and a mirror image of others; and a small image, an EXIF-rotated one, an unreadable
    one. {what: path}."""
    import skimage.data
    photos = [PIL.Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert('RGB')
              .resize((160, 120)) for name in AUDIT_PHOTOS]
    paths = {}
    for i, photo in enumerate(photos):
        paths[AUDIT_PHOTOS[i]] = _write(os.path.join(root, 'train', 'ab'[i % 2],
                                                     AUDIT_PHOTOS[i] + '.jpg'), np.asarray(photo))
    val = os.path.join(root, 'val')
    os.makedirs(os.path.join(val, 'a')), os.makedirs(os.path.join(val, 'b'))
    paths['exact'] = os.path.join(val, 'a', 'exact.jpg')
    with open(paths['astronaut'], 'rb') as f, open(paths['exact'], 'wb') as g:
        g.write(f.read())
    paths['resized'] = _write(os.path.join(val, 'b', 'resized.jpg'),
                              np.asarray(photos[1].resize((80, 60))))
    paths['recoded'] = _write(os.path.join(val, 'a', 'recoded.jpg'), np.asarray(photos[2]),
                              quality=30)
    paths['mirrored'] = _write(os.path.join(val, 'b', 'mirrored.png'),
                               np.asarray(photos[3])[:, ::-1], fmt='PNG')
    paths['small'] = _write(os.path.join(val, 'a', 'small.jpg'), random_image(40, 50, seed=7))
    exif = PIL.Image.Exif()
    exif[data.EXIF_ORIENTATION] = 6
    paths['rotated'] = _write(os.path.join(val, 'b', 'rotated.jpg'),
                              random_image(120, 160, seed=8), exif=exif)
    paths['unreadable'] = os.path.join(val, 'a', 'unreadable.jpg')
    with open(paths['unreadable'], 'wb') as f:
        f.write(b'not an image')
    return paths


def test_the_audit_finds_what_was_planted_and_nothing_else(tmp_path):
    paths = _planted(str(tmp_path))
    found = data.audit(data.load_dataset(str(tmp_path)), image_size=56)
    assert found['exact_copies'] == [{'images': sorted([paths['astronaut'], paths['exact']]),
                                      'where': 'across the split'}]
    near = {tuple(sorted(c['images'])): c for c in found['near_copies']}
    assert set(near) == {tuple(sorted([paths[a], paths[b]])) for a, b in (
        ('camera', 'resized'), ('chelsea', 'recoded'), ('coffee', 'mirrored'))}
    assert all(c['where'] == 'across the split' and c['bits'] <= data.NEAR_COPY_BITS
               for c in near.values())
    assert [s['image'] for s in found['small']] == [paths['small']]
    assert found['exif_rotated'] == [{'image': paths['rotated'], 'orientation': 6}]
    assert found['unreadable'] == [paths['unreadable']]
    assert [c['training'] for c in found['classes']] == [4, 4] and found['imbalance'] == 1.0
    lines = data.audit_report(found)
    assert 'exact copies across the split: 1' in lines
    assert 'near copies across the split (at most 10 bits apart): 3' in lines


def test_the_perceptual_hash_is_numpys_dct_of_the_thumbnail():
    # The DCT matrix is the orthonormal DCT-II: its rows are orthonormal, and row 1 by hand.
    dct = data._dct_matrix(4)
    np.testing.assert_allclose(dct @ dct.T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(dct[1], np.sqrt(0.5) * np.cos(np.pi * np.array([1, 3, 5, 7]) / 8))
    # A left-right ramp has all its energy in the horizontal frequencies: the hash's set bits
    # are the first row's (after the mean), whose coefficients are the largest.
    ramp = PIL.Image.fromarray(np.tile(np.linspace(255, 0, 64), (64, 1)).astype(np.uint8))
    bits = format(data.perceptual_hash(ramp), '063b')
    assert bits[:7].count('1') >= 4 and bits.count('1') <= 32


def test_validation_copies_of_training_images_are_warned_about_once_per_dataset(tmp_path, caplog):
    root = str(tmp_path / 'data')
    paths = _planted(root)
    os.remove(paths['unreadable'])
    dataset = data.load_dataset(root)
    cache = str(tmp_path / 'unreadable.json')
    data.drop_unreadable(dataset, cache)
    warning = [r.getMessage() for r in caplog.records if 'copies of training' in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith('1 validation image(s) are copies of '
                                                       'training images (the first: %s, of %s)'
                                                       % (paths['exact'], paths['astronaut']))
    assert cache in warning[0] and 'python data.py audit --dataset %s' % root in warning[0]
    # From the cache the next time, with the same words.
    caplog.clear()
    data.drop_unreadable(dataset, cache)
    assert [r.getMessage() for r in caplog.records if 'copies of training' in r.getMessage()
            ] == warning


def test_the_audit_command_prints_json_and_refuses_a_missing_dataset_in_one_line(tmp_path):
    from conftest import run_script
    paths = _planted(str(tmp_path / 'data'))
    code, out, err = run_script('data.py', 'audit', '--dataset', str(tmp_path / 'data'), '--json',
                                '--image-size', '64')
    assert code == 0, err
    assert json.loads(out)['exact_copies'][0]['images'][0] == paths['astronaut']
    assert 'cuInit' not in err and 'Traceback' not in err
    code, out, err = run_script('data.py', 'audit', '--dataset', str(tmp_path / 'nothing'))
    assert code == 2 and err.count('\n') == 1 and err.startswith('data.py: error: dataset')


def test_near_copies_in_blocks_are_every_pair_within_the_threshold_either_way_round():
    rng = np.random.default_rng(3)
    hashes = [int(h) for h in rng.integers(0, 2 ** 63, 40, dtype=np.uint64)]
    mirrored = [int(h) for h in rng.integers(0, 2 ** 63, 40, dtype=np.uint64)]
    hashes[7] = hashes[3] ^ 0b101  # 2 bits from 3
    mirrored[30] = hashes[12] ^ 0b1  # 30's mirror image is 1 bit from 12
    mirrored[5] = hashes[21]  # 5's mirror image is 21
    expected = []
    for i in range(40):
        for j in range(i + 1, 40):
            bits = min(bin(hashes[i] ^ hashes[j]).count('1'),
                       bin(mirrored[i] ^ hashes[j]).count('1'),
                       bin(hashes[i] ^ mirrored[j]).count('1'))
            if bits <= 10:
                expected.append((i, j, bits))
    assert {(3, 7, 2), (12, 30, 1), (5, 21, 0)} <= set(expected)
    for rows in (None, 1, 3, 7):
        assert data.near_copies(hashes, mirrored, 10, rows=rows) == expected


def test_the_audit_reads_16_bit_images_skips_huge_ones_and_lists_a_file_in_both_splits(
        tmp_path):
    import skimage.data
    gray = np.asarray(skimage.data.camera(), np.uint16) * 257  # 16 bits: 0..65535
    deep = str(tmp_path / 'deep.png')
    PIL.Image.fromarray(gray).save(deep)
    eight = str(tmp_path / 'eight.png')
    PIL.Image.fromarray((gray >> 8).astype(np.uint8)).save(eight)
    look_deep, look_eight = data._look(deep), data._look(eight)
    assert look_deep[3:] == look_eight[3:]  # the same picture, not a white one
    other = str(tmp_path / 'other.png')
    PIL.Image.fromarray(np.asarray(skimage.data.coins(), np.uint16) * 257).save(other)
    assert bin(data._look(other)[3] ^ look_deep[3]).count('1') > data.NEAR_COPY_BITS
    # Too large to decode (60 M pixels, a few KB of PNG): never decoded, by either reader.
    huge = str(tmp_path / 'huge.png')
    PIL.Image.new('1', (10000, 6000)).save(huge)
    assert data._look(huge) is None
    dataset = data.Dataset(str(tmp_path), 'test', ['x', 'y'], ['x', 'y'],
                           data.Split([deep, other, huge], [0, 1, 1]),
                           data.Split([deep, eight], [0, 0]))
    found = data.audit(dataset, image_size=32)
    assert [t['image'] for t in found['too_large']] == [huge] and not found['unreadable']
    assert {'images': [deep, deep], 'where': 'across the split'} in found['exact_copies']
    near = [sorted(c['images']) for c in found['near_copies']]
    assert sorted([deep, eight]) in near and not any(other in pair for pair in near)
