"""features.py: the frozen prefix stored once per view, the head trained from what is stored."""
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import data
import demo
import features
import hardware
import model
import rundir
import train
from test_hardware import AMX, AVX2, NATIVE_BF16, ZEN4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('trainable, point', [
    (['vgg_19/fc8/weights', 'vgg_19/fc8/biases'], 'fc7'),
    (['vgg_19/fc7/weights', 'vgg_19/fc8/weights'], 'pool5'),
    (['vgg_19/fc6/weights', 'vgg_19/fc7/biases', 'vgg_19/fc8/weights'], 'pool5'),
    (['vgg_19/conv5/conv5_3/weights', 'vgg_19/fc8/weights'], 'pool4'),
    (['vgg_19/conv4/conv4_4/weights', 'vgg_19/fc8/weights'], None),  # conv4 trains
    (['vgg_19/conv1/conv1_1/weights', 'vgg_19/fc8/weights'], None),
    ([], None),
])
def test_the_boundary_is_the_end_point_below_the_first_layer_that_trains(trainable, point):
    assert features.boundary(trainable) == point


def test_the_frozen_layers_are_those_below_the_boundary():
    assert features.frozen_layers('fc7') == ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6',
                                             'fc7')
    assert features.frozen_layers('pool5')[-1] == 'conv5'
    assert features.frozen_layers('pool4')[-1] == 'conv4'


def test_the_weights_digest_changes_with_any_one_weight_and_only_then():
    rng = np.random.RandomState(0)
    kernel = tf.Variable(rng.normal(size=[3, 3, 4, 8]).astype(np.float32), name='conv/weights')
    bias = tf.Variable(rng.normal(size=[8]).astype(np.float32), name='conv/biases')
    fingerprints = features.weights_fingerprint([kernel, bias])
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        first = features.weights_digest(session.run(fingerprints))
        for variable, index in [(kernel, (0, 0, 0, 0)), (kernel, (2, 1, 3, 7)), (bias, (5,))]:
            value = session.run(variable)
            changed = value.copy()
            changed[index] = np.nextafter(changed[index], np.float32(np.inf))  # one bit
            variable.load(changed, session)
            assert features.weights_digest(session.run(fingerprints)) != first, index
            variable.load(value, session)
            assert features.weights_digest(session.run(fingerprints)) == first


def test_auto_caches_only_when_the_run_reads_its_views_at_least_once():
    # 100 training images, 4 views: building costs 400 forward passes, so a run of 400 images
    # or more gains, one of 399 would lose.
    assert features.decide('auto', 'fc7', remaining_images=400, train_images=100, views=4)[0]
    use, why = features.decide('auto', 'fc7', remaining_images=399, train_images=100, views=4)
    assert not use and '399' in why
    assert features.decide('on', 'fc7', remaining_images=1, train_images=100, views=4)[0]
    assert not features.decide('off', 'fc7', remaining_images=10 ** 6, train_images=1)[0]


@pytest.mark.parametrize('settings, reason', [
    (dict(point=None), 'below conv5'),
    (dict(towers=2), 'towers'),
    (dict(cluster=True), 'clusters'),
])
def test_what_cannot_use_the_cache_is_refused_when_asked_and_left_uncached_by_auto(
        settings, reason):
    options = dict(dict(point='fc7', remaining_images=10 ** 6, train_images=10), **settings)
    point = options.pop('point')
    with pytest.raises(features.CacheError, match=reason):
        features.decide('on', point, **options)
    use, why = features.decide('auto', point, **options)
    assert not use and reason.strip('-') in why


def test_a_run_resumed_past_its_head_stage_reads_images_even_when_on_was_asked():
    for mode in ('on', 'auto'):
        use, why = features.decide(mode, 'fc7', remaining_images=-40, train_images=10,
                                   after_head=True)
        assert not use and 'main stage of --head-steps' in why


@pytest.mark.parametrize('point', model.STARTS)
@pytest.mark.parametrize('size', [32, 64])
def test_vgg_19_from_a_stored_end_point_computes_what_the_whole_network_does(point, size):
    settings = dict(class_ids=list('abc'), fc_conv_padding='SAME', global_pool=True)
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [2, size, size, 3])
        logits, end_points = model.classifier(images, settings, is_training=False, init='he')
        prefix = features.output(end_points, point, settings['global_pool'])
        stored = tf.placeholder(tf.float32, prefix.shape)
        head, head_points = model.classifier(stored, settings, is_training=False, reuse=True,
                                             start=point)
        # Only the layers above the boundary are built on the stored features.
        assert not any('conv1' in name for name in head_points)
        # The same loss, so the same gradients for what trains above the boundary.
        above = [v for v in tf.trainable_variables()
                 if features.layer_of(v.op.name) not in features.frozen_layers(point)]
        weights = tf.constant(np.random.RandomState(1).normal(size=[2, 3]), tf.float32)
        gradients = tf.gradients(tf.reduce_sum(logits * weights), above)
        head_gradients = tf.gradients(tf.reduce_sum(head * weights), above)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            pixels = np.random.RandomState(0).uniform(-100, 100, images.shape).astype(np.float32)
            whole, values, expected = session.run([logits, prefix, gradients], {images: pixels})
            got, cached = session.run([head, head_gradients], {stored: values})
            np.testing.assert_array_equal(got, whole)
            for a, b in zip(cached, expected):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('point, windows', [('fc7', False), ('pool5', True)])
def test_the_build_takes_fc6_through_only_the_taps_on_its_map_where_fc6_is_frozen(point, windows):
    # Below the boundary (fc7) fc6 takes no gradient; above it (pool5) the build's network is
    # the training one (its fc6 unused there) and takes it through all of its 7x7 windows.
    settings = dict(class_ids=list('abc'), fc_conv_padding='SAME', global_pool=True)

    def network(images, is_training, frozen):
        return model.classifier(images, settings, is_training=is_training,
                                reuse=None if is_training else True, frozen=frozen)[1]
    features.Cache(_split(4), _split(2), point, network, True, {'precision': 'fp32'}, 128, 4,
                   8, 1, '/nonexistent')
    ops = {op.type for op in tf.get_default_graph().get_operations()}
    assert ('ExtractImagePatches' in ops) == windows


def _fake_prefix(split):
    """A run_shard whose features say which view and which image they are: [view, image]."""
    index = {path: i for i, path in enumerate(split.paths)}
    calls = []

    def run_shard(view, paths, labels):
        calls.append((view, paths[0]))
        return (np.array([[view, index[p]] for p in paths], np.float32).reshape(-1, 1, 1, 2),
                np.array(labels))
    return run_shard, calls


def _split(count):
    return data.Split(['/images/%04d.jpg' % i for i in range(count)],
                      [i % 3 for i in range(count)])


def test_each_epoch_reads_every_image_once_in_its_own_view(tmp_path, monkeypatch):
    monkeypatch.setattr(features, 'SHARD_IMAGES', 4)
    split, views = _split(10), 2
    key = {'shape': [1, 1, 2], 'dtype': 'float32', 'boundary': 'fc7'}
    run_shard, calls = _fake_prefix(split)
    assert features.build(str(tmp_path), key, split, views, run_shard) == 20
    with tf.Graph().as_default():
        files = tf.placeholder(tf.string, [None, None])
        iterator = tf.data.make_initializable_iterator(
            features.pipeline(files, [1, 1, 2], 'float32', batch_size=1, num_images=10, seed=1))
        stored, labels = iterator.get_next()
        with tf.Session() as session:
            shards = features.shard_files(str(tmp_path), views, 10)
            session.run(iterator.initializer, {files: shards})
            orders = []
            for epoch in range(4):
                seen = [session.run([stored, labels]) for _ in range(10)]
                assert {int(s[0, 0, 0, 0]) for s, _ in seen} == {epoch % views}
                orders.append([int(s[0, 0, 0, 1]) for s, _ in seen])
                assert sorted(orders[-1]) == list(range(10))
                # The label travels with its features.
                assert all(int(label[0]) == split.labels[int(s[0, 0, 0, 1])] for s, label in seen)
            assert len({tuple(order) for order in orders}) == 4  # a new order every epoch


def test_a_killed_build_resumes_and_a_shard_cut_short_or_corrupted_is_built_again(
        tmp_path, monkeypatch):
    monkeypatch.setattr(features, 'SHARD_IMAGES', 4)
    split, views, directory = _split(10), 2, str(tmp_path)
    key = {'shape': [1, 1, 2], 'dtype': 'float32', 'boundary': 'fc7'}
    run_shard, calls = _fake_prefix(split)

    def killed_at_the_fourth(view, paths, labels):
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_shard(view, paths, labels)
    with pytest.raises(KeyboardInterrupt):
        features.build(directory, key, split, views, killed_at_the_fourth)
    left = features.missing_shards(directory, key, views, 10)
    assert left == [(1, 0), (1, 1), (1, 2)]
    assert not [f for f in os.listdir(directory) if '.part' in f]
    assert features.build(directory, key, split, views, run_shard) == 4 + 4 + 2
    assert features.missing_shards(directory, key, views, 10) == []
    # A shard cut short, and one missing: only those two are built again.
    path = os.path.join(directory, features.shard_name(0, 1))
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) - 4)
    os.remove(os.path.join(directory, features.shard_name(1, 2)))
    assert features.missing_shards(directory, key, views, 10) == [(0, 1), (1, 2)]
    assert features.build(directory, key, split, views, run_shard) == 4 + 2
    # A shard whose bytes changed but not its size: whole by its size, but the changed record
    # fails its checksum as it is read, after the one before it came through intact.
    path = os.path.join(directory, features.shard_name(1, 0))
    _flip_a_byte(path, features.record_bytes(key['shape'], key['dtype']))
    assert features.missing_shards(directory, key, views, 10) == []
    with tf.Graph().as_default():
        files = tf.placeholder(tf.string, [None])
        iterator = tf.data.make_initializable_iterator(
            features.in_order(files, [1, 1, 2], 'float32', 1))
        stored, _ = iterator.get_next()
        with tf.Session() as session:
            session.run(iterator.initializer, {files: [path]})
            assert session.run(stored).ravel().tolist() == [1, 0]  # view 1, image 0
            with pytest.raises(tf.errors.DataLossError):
                session.run(stored)
    # drop_corrupted finds it and removes it, and only it; the next build makes it again.
    assert features.drop_corrupted(directory) == [path] and not os.path.exists(path)
    assert features.missing_shards(directory, key, views, 10) == [(1, 0)]
    assert features.build(directory, key, split, views, run_shard) == 4
    assert features.drop_corrupted(directory) == []
    # An index of another key describes other features: everything is built again.
    assert len(features.missing_shards(directory, dict(key, boundary='pool5'), views, 10)) == 6


def test_runs_building_one_cache_at_once_write_files_of_their_own_and_list_each_others(
        tmp_path, monkeypatch):
    monkeypatch.setattr(features, 'SHARD_IMAGES', 4)
    split, directory = _split(10), str(tmp_path)
    key = {'shape': [1, 1, 2], 'dtype': 'float32', 'boundary': 'fc7'}
    run_shard, calls = _fake_prefix(split)
    dead = subprocess.Popen([sys.executable, '-c', ''])
    dead.wait()
    for name in (features.shard_name(0, 2), features.INDEX_FILE):  # what a killed run left
        open(os.path.join(directory, '%s.part%d' % (name, dead.pid)), 'wb').close()
    writer, listed = tf.io.TFRecordWriter, []

    class Interleaved:  # another run (another pid) builds the whole cache while this one writes
        def __init__(self, path):
            self._writer = writer(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._writer.close()

        def write(self, record):
            self._writer.write(record)
            if not calls[1:]:
                with monkeypatch.context() as other:
                    other.setattr(os, 'getpid', os.getppid)
                    assert features.build(directory, key, split, 1, run_shard) == 10

    def this_run(view, paths, labels):  # what the index lists as each shard is computed
        listed.append(sorted(features.read_index(directory)['shards']) if calls else [])
        return run_shard(view, paths, labels)
    monkeypatch.setattr(tf.io, 'TFRecordWriter', Interleaved)
    assert features.build(directory, key, split, 1, this_run) == 10
    shards = [features.shard_name(0, s) for s in range(3)]
    assert listed == [[], shards, shards]  # the other run's shards stay listed
    assert sorted(os.listdir(directory)) == [features.INDEX_FILE] + shards  # no part left
    assert features.missing_shards(directory, key, 1, 10) == []
    assert features.drop_corrupted(directory) == []
    with tf.Graph().as_default():
        files = tf.placeholder(tf.string, [None])
        iterator = tf.data.make_initializable_iterator(
            features.in_order(files, [1, 1, 2], 'float32', 10))
        with tf.Session() as session:
            session.run(iterator.initializer, {files: [os.path.join(directory, name)
                                                       for name in shards]})
            stored, _ = session.run(iterator.get_next())
    assert stored.reshape(10, 2).tolist() == [[0, i] for i in range(10)]


@pytest.mark.parametrize('dtype, size', [('float32', 4), ('bfloat16', 2), ('float16', 2)])
def test_features_read_back_as_stored_in_their_type_and_labels_exactly(tmp_path, dtype, size):
    # Labels that neither 16-bit type holds, and features that each rounds.
    split = data.Split(['/images/a.jpg', '/images/b.jpg', '/images/c.jpg'], [1001, 70001, 3])
    values = np.random.RandomState(0).normal(0, 1000, [3, 1, 1, 5]).astype(np.float32)
    key = {'shape': [1, 1, 5], 'dtype': dtype, 'boundary': 'fc7'}
    assert features.build(str(tmp_path), key, split, 1, lambda view, paths, labels: (
        values[:len(paths)], np.array(labels))) == 3
    [[path]] = features.shard_files(str(tmp_path), 1, 3)
    assert os.path.getsize(path) == 3 * (16 + 4 + 5 * size)
    with tf.Graph().as_default():
        files = tf.placeholder(tf.string, [None])
        iterator = tf.data.make_initializable_iterator(
            features.in_order(files, [1, 1, 5], dtype, 8))
        with tf.Session() as session:
            session.run(iterator.initializer, {files: [path]})
            got, labels = session.run(iterator.get_next())
    np.testing.assert_array_equal(labels, split.labels)
    expected = values.astype(tf.as_dtype(dtype).as_numpy_dtype).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert dtype == 'float32' or not np.array_equal(got, values)  # 16 bits round


@pytest.mark.parametrize('gpus, flags, stored', [
    ([], AMX, 'bfloat16'), ([], ZEN4, 'bfloat16'), ([], AVX2, 'float32'),
    ([(8, 0)], AVX2, 'float16')])
def test_each_kind_of_machine_stores_the_type_its_auto_precision_computes_in(gpus, flags, stored):
    precision, _ = hardware.choose_precision('auto', gpus, flags)
    assert features.STORED_AS[precision] == stored


@pytest.mark.skipif(not NATIVE_BF16, reason='needs a CPU with native bfloat16 (amx_bf16 or '
                                            'avx512_bf16); the choice is tested above by flags')
def test_in_bf16_features_stored_as_bfloat16_give_the_whole_networks_logits():
    # The layer above each boundary computes in bfloat16, so it reads the same numbers from the
    # rounded store as from the layer below (in fp32 the rounding would show).
    with tf.Graph().as_default():
        settings = rundir.model_settings(list('abcde'), list('abcde'), 64)
        images = tf.placeholder(tf.float32, [2, 64, 64, 3])
        logits, end_points = model.classifier(images, settings, is_training=False, init='he')
        heads = []
        for point in ('fc7', 'pool5', 'pool4'):
            prefix = features.output(end_points, point, settings['global_pool'])
            stored = tf.placeholder(tf.float32, prefix.shape)
            heads.append((prefix, stored, model.classifier(stored, settings, is_training=False,
                                                           reuse=True, start=point)[0]))
        with tf.Session(config=hardware.session_config('bf16')) as session:
            session.run(tf.global_variables_initializer())
            pixels = np.random.RandomState(0).uniform(-100, 100, images.shape).astype(np.float32)
            for prefix, stored, head in heads:
                whole, values = session.run([logits, prefix], {images: pixels})
                rounded = values.astype(tf.bfloat16.as_numpy_dtype).astype(np.float32)
                np.testing.assert_array_equal(session.run(head, {stored: rounded}), whole)


def test_caches_of_an_earlier_record_format_are_found_for_the_log_to_name(tmp_path):
    split, run_shard = _split(4), _fake_prefix(_split(4))[0]
    key = {'shape': [1, 1, 2], 'dtype': 'float32', 'boundary': 'fc7', 'format': features.FORMAT}
    features.build(str(tmp_path / 'fc7-current'), key, split, 1, run_shard)
    old = tmp_path / 'pool5-old'  # as the fixed-length version left it: no format in its key
    old.mkdir()
    (old / 'index.json').write_text('{"key": {"boundary": "pool5"}, "shards": {}}')
    (old / 'view0-00000.rec').write_bytes(b'\0' * 1000)
    (tmp_path / 'not-a-cache').mkdir()
    found = features.stale_caches(str(tmp_path))
    assert [(os.path.basename(d), size) for d, size in found] == [
        ('pool5-old', 1000 + os.path.getsize(str(old / 'index.json')))]
    assert features.stale_caches(str(tmp_path / 'missing')) == []


def test_checkpoints_link_the_frozen_weights_written_once_and_restore_whole(tmp_path):
    shared, saved = [None], []
    with tf.Graph().as_default():
        frozen = [tf.get_variable('vgg_19/conv1/w', initializer=np.arange(6, dtype=np.float32)),
                  tf.get_variable('vgg_19/fc7/b', initializer=np.ones([2, 3], np.float32))]
        head = tf.get_variable('vgg_19/fc8/w', initializer=np.zeros(4, np.float32))
        step = tf.train.get_or_create_global_step()
        update = [head.assign_add(tf.ones(4)), step.assign_add(1)]
        saver = features.LinkingSaver(frozen, lambda: shared[0], max_to_keep=10)
        frozen_saver = tf.train.Saver(frozen)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            os.makedirs(str(tmp_path / 'run'))
            prefix = str(tmp_path / 'run' / 'model.ckpt')
            shared[0] = str(tmp_path / 'cache' / 'weights-x' / 'frozen')
            data = shared[0] + features.WEIGHTS_DATA
            os.makedirs(os.path.dirname(shared[0]))
            dead = subprocess.Popen([sys.executable, '-c', ''])
            dead.wait()
            for left in (dead.pid, os.getppid()):  # parts of a killed writer and a live one
                with open('%s.part%d%s' % (shared[0], left, features.WEIGHTS_DATA), 'wb') as f:
                    f.write(b'\0' * 8)
            for n in range(6):
                if n in (1, 4):  # written (by Cache.fill): from then on linked
                    features.write_weights(session, frozen_saver, shared[0])
                    assert sorted(os.listdir(os.path.dirname(shared[0]))) == [
                        'frozen.data-00000-of-00001', 'frozen.index',
                        'frozen.part%d.data-00000-of-00001' % os.getppid()]
                if n == 3:  # cut short (a copy that stopped): not linked
                    with open(data + '.short', 'wb') as f:
                        f.write(b'\0' * 8)
                    os.replace(data + '.short', data)
                if n == 5:  # the cache deleted: the checkpoints stay whole
                    shutil.rmtree(str(tmp_path / 'cache'))
                saved.append(saver.save(session, prefix, global_step=step))
                session.run(update)
    linked = [n for n, path in enumerate(saved)
              if os.path.exists(path + '.data-00000-of-00002')]
    assert linked == [1, 2, 4]  # the others saved whole, as tf.train.Saver saves
    inodes = [os.stat(saved[n] + '.data-00000-of-00002').st_ino for n in linked]
    assert inodes[0] == inodes[1] != inodes[2]
    assert os.path.getsize(saved[1] + '.data-00000-of-00002') == 12 * 4  # not the head's
    for n, path in enumerate(saved):
        if n in linked:
            assert os.path.getsize(path + '.data-00001-of-00002') == 4 * 4 + 8  # head, step
        assert not os.path.exists(path + '_temp')
        reader = tf.train.load_checkpoint(path)
        assert reader.get_tensor('vgg_19/fc8/w').tolist() == [n] * 4
        assert reader.get_tensor('global_step') == n
        assert reader.get_tensor('vgg_19/conv1/w').tolist() == list(range(6))
        assert reader.get_tensor('vgg_19/fc7/b').tolist() == [[1.0] * 3] * 2


def _flip_a_byte(path, record_bytes):
    """Changes a byte of the second record's data in the shard at `path` (a TFRecord: 8 bytes
    of length and 4 of its checksum before the data), its size kept."""
    with open(path, 'r+b') as f:
        f.seek(record_bytes + 12 + 4)
        byte = f.read(1)
        f.seek(record_bytes + 12 + 4)
        f.write(bytes([byte[0] ^ 1]))


def _train(dataset, out, cache, *flags, code=0):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train.py'), '--dataset', dataset,
         '--checkpoint-dir', out, '--cache-dir', cache, '--pretrained', 'none', '--image-size',
         '32', '--batch-size', '8', '--epochs', '2', '--trainable-scopes', 'vgg_19/fc8',
         '--validate-every', '0', '--cache-views', '2'] + list(flags),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == code, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow
def test_a_later_run_reuses_the_cache_unless_what_decides_the_features_changed(tmp_path):
    dataset, cache = str(tmp_path / 'photos'), str(tmp_path / 'cache')
    demo.make_many(dataset, 30, classes=3)
    first = _train(dataset, str(tmp_path / 'a'), cache)
    assert 'feature cache: on, from fc7 up' in first and 'feature cache: built 2 views' in first
    assert 'feature cache: built 1 view of 6 validation images' in first
    # The same frozen weights (resumed from a's checkpoint, copied), another learning rate,
    # label smoothing and epochs: the stored features are the same.
    shutil.copytree(str(tmp_path / 'a'), str(tmp_path / 'b'))
    second = _train(dataset, str(tmp_path / 'b'), cache, '--epochs', '4', '--learning-rate',
                    '0.01', '--label-smoothing', '0.1')
    assert 'feature cache: reused 2 views' in second, second
    assert 'feature cache: reused 1 view of 6 validation images' in second
    # The whole model is in the checkpoints, the frozen layers included.
    reader = tf.train.load_checkpoint(str(tmp_path / 'b'))
    assert reader.get_tensor('vgg_19/conv1/conv1_1/weights').shape == (3, 3, 3, 64)
    # The frozen layers' weights: one file in the cache, linked into each checkpoint.
    latest = tf.train.latest_checkpoint(str(tmp_path / 'b'))
    weights = [d for d in os.listdir(cache) if d.startswith('weights-')]
    assert len(weights) == 1 and os.path.samefile(latest + '.data-00000-of-00002', os.path.join(
        cache, weights[0], 'frozen.data-00000-of-00001'))
    # A stored record changed on disk: one line naming its shard, which is removed, then the
    # same command builds it again and resumes.
    stored = [os.path.join(cache, d) for d in os.listdir(cache)
              if os.path.exists(os.path.join(cache, d, features.shard_name(1, 0)))]
    shard, key = (os.path.join(stored[0], features.shard_name(1, 0)),
                  features.read_index(stored[0])['key'])
    assert key['dtype'] == features.STORED_AS[key['precision']]  # bfloat16 where auto is bf16
    _flip_a_byte(shard, features.record_bytes(key['shape'], key['dtype']))
    err = _train(dataset, str(tmp_path / 'b'), cache, '--epochs', '6', code=2)
    assert err.strip().splitlines()[-1] == (
        'train.py: error: the feature cache changed on disk since it was written (%s): removed; '
        'run the same command again to resume from the last checkpoint (it builds what it '
        'needs again)' % shard)
    saved = re.search(r'saved (\S+)', err).group(1)  # the steps whose records read back whole
    again = _train(dataset, str(tmp_path / 'b'), cache, '--epochs', '6', '--feature-cache', 'on')
    assert 'feature cache: building 1 of 2 shards' in again
    assert 'resuming from %s' % saved in again
    # A file that changed: a new cache.
    victim = os.path.join(dataset, sorted(os.listdir(dataset))[0])
    victim = os.path.join(victim, sorted(os.listdir(victim))[0])
    os.utime(victim, (1, 1))
    third = _train(dataset, str(tmp_path / 'b'), cache, '--epochs', '8')
    assert third.count('feature cache: built') == 1  # of the split that holds the file
    assert len(os.listdir(cache)) == 3 + 1  # and the frozen weights, the same
    # --feature-cache off: no cache, the images themselves.
    fourth = _train(dataset, str(tmp_path / 'c'), cache, '--feature-cache', 'off')
    assert 'feature cache: off (--feature-cache off)' in fourth and len(os.listdir(cache)) == 4


class _Steps(tf.train.SessionRunHook):
    """After each step: records `record()` at the step after it; Ctrl-C at `interrupt`."""

    def __init__(self, record, interrupt=None):
        self._record, self._interrupt, self.at = record, interrupt, {}

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(train.step_after_update(run_context))

    def after_run(self, run_context, run_values):
        self.at[run_values.results] = self._record()
        if run_values.results == self._interrupt:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_the_head_stage_trains_from_stored_features_and_the_main_stage_from_images(
        tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    dataset, out = str(tmp_path / 'photos'), str(tmp_path / 'run')
    demo.make_many(dataset, 30, classes=3)  # 24 training images
    read, pipeline = [], data.train_pipeline  # batches of images training took

    def counted(*args, **kwargs):
        def count(labels):
            read.append(len(labels))
            return labels
        return pipeline(*args, **kwargs).map(lambda images, labels: (images, tf.ensure_shape(
            tf.py_func(count, [labels], labels.dtype), labels.shape)))
    monkeypatch.setattr(data, 'train_pipeline', counted)
    flags = ['--dataset', dataset, '--checkpoint-dir', out, '--cache-dir', str(tmp_path / 'c'),
             '--pretrained', 'none', '--init', 'he', '--image-size', '32', '--batch-size', '4',
             '--validate-every', '0', '--head-steps', '8', '--trainable-scopes',
             'vgg_19/fc7,vgg_19/fc8', '--feature-cache', 'on', '--cache-views', '1',
             '--save-every-steps', '1', '--keep-checkpoints', '20']

    def run(extra, hook):
        with tf.Graph().as_default():
            train.train(train.parse_args(flags + extra), [hook])
    first = _Steps(lambda: len(read), interrupt=4)
    with pytest.raises(KeyboardInterrupt):
        run(['--max-steps', '10'], first)
    assert 'feature cache: on, from fc7 up in the head stage' in caplog.text
    assert 'feature cache: built 1 view of 24 training images' in caplog.text
    # A restart in the head stage reads what is stored; the main stage reads images.
    caplog.clear()
    second = _Steps(lambda: len(read))
    run(['--max-steps', '10'], second)
    assert 'feature cache: reused 1 view of 24 training images' in caplog.text
    assert 'head stage from step 4' in caplog.text and 'main stage from step 8' in caplog.text
    assert first.at[4] == 0 and second.at[8] == 0  # not one batch of images in the head stage
    assert second.at[10] >= 2
    # The head stage trained fc8 alone, the main stage fc7 too.
    saved = {step: tf.train.load_checkpoint(os.path.join(out, 'model.ckpt-%d' % step))
             for step in (1, 8, 10)}

    def same(name, a, b):
        return np.array_equal(saved[a].get_tensor(name), saved[b].get_tensor(name))
    assert not same('vgg_19/fc8/weights', 1, 8) and same('vgg_19/fc7/weights', 1, 8)
    assert not same('vgg_19/fc7/weights', 8, 10) and same('vgg_19/fc6/weights', 1, 10)
    # Resumed past the head stage: images alone, whatever --feature-cache says.
    caplog.clear()
    run(['--max-steps', '12'], _Steps(lambda: len(read)))
    assert 'feature cache: off (the main stage of --head-steps' in caplog.text


@pytest.mark.slow
def test_validation_from_its_stored_features_predicts_what_it_does_from_the_images(
        tmp_path, photo_dataset):
    import evaluate
    from conftest import model_settings
    dataset = data.load_dataset(photo_dataset)
    settings = model_settings(dataset.class_ids)

    def network(images, is_training, frozen):  # dropout at fc6 for the views, as train.py's
        return model.classifier(images, settings, is_training=is_training, init='he',
                                reuse=None if is_training else True, frozen=frozen)[1]
    cache = features.Cache(dataset.train, dataset.validation, 'fc7', network,
                           settings['global_pool'], {'precision': 'fp32'}, 32, 4, 8, 1,
                           str(tmp_path))
    stored, labels, initializer, feed = cache.validation_batches(5)
    from_cache = evaluate.on(stored, labels, settings, initializer, feed, reuse=True,
                             start='fc7')
    from_images = evaluate.build(dataset.validation, settings, 5, reuse=True)
    count = len(dataset.validation.paths)
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        cache.fill(session)
        got = evaluate.predict(session, from_cache, count)
        expected = evaluate.predict(session, from_images, count)
    assert len(got['labels']) == count == 6
    np.testing.assert_array_equal(got['labels'], expected['labels'])
    np.testing.assert_array_equal(got['top'], expected['top'])
    # Batches of 8 (the build) and 5 (evaluation) take oneDNN kernels that sum in other orders:
    # float32 through 19 layers differs by up to about 2e-5 (once 1.7e-5 of a probability 0.27);
    # another view or preprocessing differs by 1e-2 and more.
    np.testing.assert_allclose(got['probabilities'], expected['probabilities'], rtol=1e-4,
                               atol=1e-5)


def test_a_shard_whose_images_all_failed_is_complete_and_an_unwritable_cache_is_one_line(
        tmp_path, monkeypatch):
    monkeypatch.setattr(features, 'SHARD_IMAGES', 4)
    split, key = _split(4), {'shape': [1, 1, 2], 'dtype': 'float32', 'boundary': 'fc7'}

    def nothing_decoded(view, paths, labels):
        return np.zeros([0, 1, 1, 2], np.float32), np.zeros([0], np.int64)
    assert features.build(str(tmp_path), key, split, 1, nothing_decoded) == 0
    assert features.missing_shards(str(tmp_path), key, 1, 4) == []
    (tmp_path / 'a-file').write_text('')
    with pytest.raises(features.CacheError, match='cannot write the feature cache in .*a-file'):
        features.build(str(tmp_path / 'a-file' / 'cache'), key, split, 1, nothing_decoded)


def test_a_disk_that_fills_during_a_build_is_one_line_and_leaves_no_part_shard(
        tmp_path, monkeypatch):
    split, key = _split(4), {'shape': [1, 1, 2], 'dtype': 'float32', 'boundary': 'fc7'}
    run_shard, _ = _fake_prefix(split)

    class FullDisk:  # TensorFlow's writer raises its own error, not OSError
        def __init__(self, path):
            open(path, 'wb').close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, record):
            raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
    monkeypatch.setattr(tf.io, 'TFRecordWriter', FullDisk)
    with pytest.raises(features.CacheError, match=r'cannot write the feature cache in .* \(No '
                       r'space left on device\): free disk space'):
        features.build(str(tmp_path), key, split, 1, run_shard)
    assert os.listdir(str(tmp_path)) == []
    assert features.missing_shards(str(tmp_path), key, 1, 4) == [(0, 0)]


@pytest.mark.slow
def test_feature_cache_on_where_it_cannot_work_is_a_one_line_error(tmp_path, capsys):
    import train
    dataset = str(tmp_path / 'photos')
    demo.make_many(dataset, 20, classes=2)
    code = train.main(['--dataset', dataset, '--checkpoint-dir', str(tmp_path / 'run'),
                       '--pretrained', 'none', '--image-size', '32', '--batch-size', '4',
                       '--feature-cache', 'on'])  # everything trains: nothing is frozen
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (
        'train.py: error: --feature-cache on: the layers below conv5 train, so nothing frozen '
        'is worth storing; use --feature-cache auto or off')


@pytest.mark.slow
@pytest.mark.parametrize('trainable, point', [
    ('vgg_19/fc6,vgg_19/fc7,vgg_19/fc8', 'pool5'),
    ('vgg_19/conv5,vgg_19/fc6,vgg_19/fc7,vgg_19/fc8', 'pool4')])
def test_each_boundary_below_the_head_trains_and_validates_from_stored_features(
        tmp_path, photo_dataset, trainable, point):
    # The evaluation network beside the training one names its end points vgg_19_1/...
    err = _train(photo_dataset, str(tmp_path / 'run'), str(tmp_path / 'cache'),
                 '--trainable-scopes', trainable, '--feature-cache', 'on', '--epochs', '1')
    assert 'feature cache: on, from %s up' % point in err
    assert 'feature cache: built 1 view of' in err and 'validation at step' in err
