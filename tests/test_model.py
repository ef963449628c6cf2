"""model.py: slim's VGG19, its small-input option, weight decay, and the pretrained restore."""
import glob
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import PIL.Image
import pytest
import skimage.data
import tensorflow.compat.v1 as tf
import tf_slim as slim
from tf_slim.nets import vgg as slim_vgg

import data
import model
from conftest import (BROKEN_PRETRAINED, CONV1, conv1_checkpoint, conv1_values,
                      save_variables, truncate)

SLIM_NAMES = (['vgg_19/conv%d/conv%d_%d/%s' % (b, b, i, k)
               for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for i in range(1, n + 1)
               for k in ('weights', 'biases')] +
              ['vgg_19/fc%d/%s' % (i, k) for i in (6, 7, 8) for k in ('weights', 'biases')])


def test_variables_have_slim_names_and_shapes():
    model.vgg_19(tf.placeholder(tf.float32, [1, 224, 224, 3]), num_classes=5)
    shapes = {v.op.name: v.shape.as_list() for v in slim.get_model_variables()}
    assert sorted(shapes) == sorted(SLIM_NAMES) and len(shapes) == 38
    assert shapes['vgg_19/fc6/weights'] == [7, 7, 512, 4096]
    assert shapes['vgg_19/fc7/weights'] == [1, 1, 4096, 4096]
    assert shapes['vgg_19/fc8/weights'] == [1, 1, 4096, 5]
    assert sum(np.prod(s) for n, s in shapes.items() if 'fc8' not in n) + 4096 * 1000 + 1000 \
        == 143667240


@pytest.mark.slow
def test_same_logits_as_slim_reference():
    images = tf.constant(np.random.RandomState(0).uniform(-120, 130, [2, 224, 224, 3]),
                         tf.float32)
    ours, end_points = model.vgg_19(images, num_classes=10, is_training=False)
    with slim.arg_scope(slim_vgg.vgg_arg_scope()):
        reference, _ = slim_vgg.vgg_19(images, num_classes=10, is_training=False, scope='ref')
    ours_by_name = {v.op.name: v for v in tf.global_variables() if v.op.name.startswith('vgg_19/')}
    rng = np.random.RandomState(1)
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        for v in tf.global_variables():
            if v.op.name.startswith('ref/'):
                value = session.run(v) + (rng.normal(0, 0.01, v.shape.as_list())
                                          if 'biases' in v.op.name else 0)
                v.load(value, session)
                ours_by_name['vgg_19/' + v.op.name[4:]].load(value, session)
        a, b = session.run([ours, reference])
    assert a.shape == (2, 10)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    assert 'vgg_19/fc8' in end_points and 'vgg_19/conv5/conv5_4' in end_points


@pytest.mark.parametrize('outputs, kernel, padding, size, frozen', [
    (4096, 7, 'SAME', 1, False), (4096, 7, 'SAME', 2, False), (4096, 7, 'SAME', 3, False),
    (4096, 7, 'SAME', 4, False), (4096, 7, 'SAME', 5, False),
    (4096, 7, 'SAME', 6, False),  # 32 to 192 px
    # Frozen: only the taps on the map, each size, and a map wider than it is high
    (4096, 7, 'SAME', 1, True), (4096, 7, 'SAME', 2, True), (4096, 7, 'SAME', 3, True),
    (4096, 7, 'SAME', 4, True), (4096, 7, 'SAME', 5, True), (4096, 7, 'SAME', 6, True),
    (4096, 7, 'SAME', (3, 6), True),
    (4096, 7, 'VALID', 7, False),  # fc6 at 224 px: a matmul
    (4096, 7, 'VALID', 9, False),  # larger inputs: a sliding 7x7 window
    (1000, 1, 'SAME', 1, False), (100, 1, 'SAME', 3, False),  # fc7 and fc8: matmuls
])
def test_fully_connected_layers_compute_what_slims_convolution_does(
        outputs, kernel, padding, size, frozen):
    height, width = size if isinstance(size, tuple) else (size, size)
    net = tf.constant(np.random.RandomState(height * width).uniform(0, 1, [2, height, width, 512]),
                      tf.float32)
    # Without the ReLU: its gradient jumps at 0, where two sums of the same products in another
    # order can fall on either side (it failed 2 of 4 full suites so, at a 1e-5 tolerance).
    with tf.variable_scope('ours'):
        ours = model._fully_connected(net, outputs, kernel, padding, 'outputs', scope='fc',
                                      frozen=frozen, activation_fn=None)
    with tf.variable_scope('ref'):
        reference = slim.conv2d(net, outputs, [kernel, kernel], padding=padding, scope='fc',
                                activation_fn=None)
    assert ours.shape.as_list() == reference.shape.as_list()
    variables = {v.op.name: v for v in tf.global_variables()}
    # Forward and gradients, for the loss of a random projection of the output.
    projection = tf.constant(np.random.RandomState(0).normal(size=reference.shape.as_list()),
                             tf.float32)
    gradients = {side: tf.gradients(tf.reduce_sum(out * projection), [net] + (
        [] if frozen else [variables[side + '/fc/weights']]))  # frozen: no weights' gradient
        for side, out in (('ours', ours), ('ref', reference))}
    assert variables['ours/fc/weights'].shape.as_list() == [kernel, kernel, 512, outputs]
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        for name in ('weights', 'biases'):
            variables['ours/fc/' + name].load(session.run(variables['ref/fc/' + name]), session)
        a, b = session.run([(ours, gradients['ours']), (reference, gradients['ref'])])
    for x, y in zip([a[0]] + a[1], [b[0]] + b[1]):
        assert np.abs(x - y).max() <= 1e-5 * np.abs(y).max()


@pytest.mark.parametrize('size,expected', [(224, ('VALID', False)), (256, ('VALID', True)),
                                           (64, ('SAME', True)), (32, ('SAME', True))])
def test_fc_options(size, expected):
    assert model.fc_options(size) == expected


def test_fc_options_refuses_tiny_inputs():
    with pytest.raises(ValueError, match='--image-size'):
        model.fc_options(16)


@pytest.mark.parametrize('size', [32, 64, 96])
def test_small_inputs_give_one_logit_row_per_image(size):
    padding, global_pool = model.fc_options(size)
    logits, _ = model.vgg_19(tf.zeros([3, size, size, 3]), num_classes=4,
                             fc_conv_padding=padding, global_pool=global_pool)
    assert logits.shape.as_list() == [3, 4]


@pytest.mark.parametrize('is_training, frozen, windows', [
    (True, (), True),  # fc6 trains: its gradient through all 7x7 windows
    (True, ('fc6',), False),  # frozen below the trained layers (the feature cache's build)
    (False, (), False),  # validation, evaluation, inference
])
def test_fc6_multiplies_only_the_taps_on_a_small_map_where_its_weights_take_no_gradient(
        is_training, frozen, windows):
    model.vgg_19(tf.zeros([1, 128, 128, 3]), num_classes=4, is_training=is_training,
                 fc_conv_padding='SAME', global_pool=True, frozen=frozen)
    ops = {op.type for op in tf.get_default_graph().get_operations()}
    assert ('ExtractImagePatches' in ops) == windows


def test_weight_decay_is_in_the_regularization_loss():
    model.classifier(tf.zeros([1, 32, 32, 3]), {'class_ids': 'abc', 'fc_conv_padding': 'SAME',
                                                'global_pool': True}, True, weight_decay=1e-3)
    weights = [v for v in slim.get_model_variables() if v.op.name.endswith('weights')]
    assert len(weights) == 19
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        regularization, values = session.run([tf.losses.get_regularization_loss(), weights])
    expected = sum(1e-3 * np.sum(np.square(w.astype(np.float64))) / 2 for w in values)
    assert regularization == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize('outer, trainable, losses', [
    (dict(trainable=False), 0, 19),  # vgg_arg_scope's regularizer, nothing trains
    (dict(weights_regularizer=None), 38, 0),
])
def test_the_callers_arg_scope_holds_for_every_layer_as_in_slim(outer, trainable, losses):
    def build(network, scope):
        with slim.arg_scope(slim_vgg.vgg_arg_scope()):
            with slim.arg_scope([slim.conv2d, slim.fully_connected], **outer):
                network(tf.zeros([1, 224, 224, 3]), num_classes=5, scope=scope)
        return (len([v for v in tf.trainable_variables() if v.op.name.startswith(scope)]),
                len([x for x in tf.losses.get_regularization_losses()
                     if x.op.name.startswith(scope)]))
    assert build(slim_vgg.vgg_19, 'slims') == (trainable, losses)
    assert build(model.vgg_19, 'vgg_19') == (trainable, losses)


def test_in_scopes():
    assert model.in_scopes('vgg_19/fc8/weights', ['vgg_19/fc8'])
    assert model.in_scopes('vgg_19/fc8/weights', ['vgg_19/fc8/'])
    assert not model.in_scopes('vgg_19/fc80/weights', ['vgg_19/fc8'])
    assert not model.in_scopes('vgg_19/fc7/weights', [])


@pytest.mark.slow
@pytest.mark.parametrize('version', ['V1', 'V2'])
def test_restore_from_a_full_size_slim_checkpoint(tmp_path, version):
    # What vgg_19_2016_08_28.tar.gz holds: all 38 variables, 1000 ImageNet classes, no
    # global step, no optimizer slots (the published file is in the V1 format).
    with tf.Graph().as_default():
        model.vgg_19(tf.zeros([1, 224, 224, 3]), num_classes=1000)
        shapes = {v.op.name: v.shape.as_list() for v in slim.get_model_variables()}
    assert shapes == model.vgg19_variables(1000)
    rng = np.random.default_rng(0)
    stored = {name: rng.standard_normal(shape, np.float32) for name, shape in shapes.items()}
    path = save_variables(stored, str(tmp_path / 'vgg_19.ckpt'),
                          getattr(tf.train.SaverDef, version))

    logits, _ = model.vgg_19(tf.zeros([1, 32, 32, 3]), num_classes=5, fc_conv_padding='SAME',
                             global_pool=True)
    loss = tf.reduce_mean(logits)
    global_step = tf.train.get_or_create_global_step()
    train_op = tf.train.MomentumOptimizer(0.1, 0.9).minimize(loss, global_step)
    init_fn = model.pretrained_init_fn(path, model.vgg19_variables(5, [model.HEAD_SCOPE]))
    variables = {v.op.name: v for v in slim.get_model_variables()}
    initializer = tf.global_variables_initializer()
    tf.get_default_graph().finalize()  # as MonitoredTrainingSession leaves it
    with tf.Session() as session:
        session.run(initializer)
        fresh_fc8 = session.run(variables['vgg_19/fc8/weights'])
        init_fn(None, session)
        restored = session.run(variables)
        session.run(train_op)  # the Momentum slots and the global step were left to the initializer
    for name, value in restored.items():
        if name.startswith('vgg_19/fc8'):
            continue
        np.testing.assert_array_equal(value, stored[name], err_msg=name)
    np.testing.assert_array_equal(restored['vgg_19/fc8/weights'], fresh_fc8)
    assert restored['vgg_19/fc8/weights'].shape == (1, 1, 4096, 5)


@pytest.mark.parametrize('case', sorted(BROKEN_PRETRAINED))
def test_a_broken_pretrained_checkpoint_is_named_with_what_to_do(tmp_path, case):
    make, kind, message = BROKEN_PRETRAINED[case]
    path = make(tmp_path)
    assert model.checkpoint_problem(path, CONV1, any_float=True)[0] == kind
    with pytest.raises(model.CheckpointError) as error:
        model.check_pretrained(path, CONV1)
    line = str(error.value)
    assert re.search(message, line), line
    assert line.startswith('pretrained checkpoint %s ' % path) and '\n' not in line


@pytest.mark.parametrize('dtype', [np.float64, np.float16, np.float32])
def test_a_pretrained_checkpoint_of_other_floats_restores_as_float32(tmp_path, dtype):
    path = conv1_checkpoint(tmp_path, dtype)
    assert model.checkpoint_problem(path, CONV1) == (
        None if dtype == np.float32 else ('dtype', 'holds vgg_19/conv1/conv1_1/weights as %s, '
                                          'the model needs float32' % np.dtype(dtype).name))
    init_fn = model.pretrained_init_fn(path, CONV1)  # no graph was needed to check it
    with tf.variable_scope('vgg_19'):  # the first block of vgg_19, as it builds it
        slim.repeat(tf.zeros([1, 8, 8, 3]), 2, slim.conv2d, 64, [3, 3], scope='conv1')
    variables = {v.op.name: v for v in slim.get_model_variables()}
    # The Scaffold's init_op from a pretrained checkpoint: random values for the others only.
    initializer = model.initialized_elsewhere(CONV1)
    uninitialized = tf.report_uninitialized_variables()
    tf.get_default_graph().finalize()
    # The second session is one made again before the first checkpoint (a parameter server
    # restarted): the values the check read are gone by then, and the file is read again.
    for _ in range(2):
        with tf.Session() as session:
            session.run(initializer)
            assert sorted(n.decode() for n in session.run(uninitialized)) == sorted(CONV1)
            before = session.run(variables['vgg_19/conv1/conv1_2/weights'])
            init_fn(None, session)
            assert len(session.run(uninitialized)) == 0
            restored = session.run(variables)
        for name, value in conv1_values(np.float32).items():
            assert restored[name].dtype == np.float32
            np.testing.assert_array_equal(restored[name], value, err_msg=name)
        np.testing.assert_array_equal(restored['vgg_19/conv1/conv1_2/weights'], before)


@pytest.mark.parametrize('version', ['V1', 'V2'])
def test_a_directory_names_the_checkpoint_unpacked_into_it(tmp_path, version):
    # The download unpacks to vgg_19.ckpt alone: no `checkpoint` state file names it.
    path = save_variables(conv1_values(), str(tmp_path / 'vgg_19.ckpt'),
                          getattr(tf.train.SaverDef, version))
    (tmp_path / 'food-101').mkdir()
    assert model.checkpoint_file(str(tmp_path)) == path
    assert model.check_pretrained(str(tmp_path), CONV1) == path
    save_variables(conv1_values(), str(tmp_path / 'other.ckpt'))
    assert model.checkpoint_file(str(tmp_path)) is None  # which one is meant: not guessed


def test_restore_names_a_missing_variable(tmp_path):
    path = save_variables({'vgg_19/conv1/conv1_1/weights': np.zeros([3, 3, 3, 64], np.float32)},
                          str(tmp_path / 'partial.ckpt'))
    with pytest.raises(model.CheckpointError, match='no variable vgg_19/conv1/conv1_1/biases'):
        model.pretrained_init_fn(path, model.vgg19_variables(5, [model.HEAD_SCOPE]))


def test_restore_names_a_mismatched_shape(tmp_path):
    path = save_variables({'vgg_19/fc8/weights': np.zeros([1, 1, 4096, 1000], np.float32)},
                          str(tmp_path / 'head.ckpt'))
    with pytest.raises(model.CheckpointError, match=r'vgg_19/fc8/weights .*\[1, 1, 4096, 1000\]'):
        model.pretrained_init_fn(path, model.vgg19_variables(
            5, [v for v in SLIM_SCOPES if 'fc8' not in v]))


SLIM_SCOPES = sorted({n.rsplit('/', 1)[0] for n in SLIM_NAMES})


def test_restore_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(model.CheckpointError, match='not found: download .*vgg_19_2016_08_28'):
        model.pretrained_init_fn(str(tmp_path / 'nothing.ckpt'), CONV1)


# Keras runs in a process of its own: Keras 3 needs eager mode, these tests run in graph mode.
KERAS_VGG19 = """
import sys
import numpy as np
from keras.applications import vgg19
net = vgg19.VGG19(weights=None)
# He-scaled random weights: with Keras' Glorot ones the signal fades through 19 layers and every
# class gets ~1/1000, which any conversion would match. The small last layer keeps the softmax
# from saturating to one-hot, which would hide errors too.
rng = np.random.RandomState(0)
weights = []
for w in net.get_weights():
    scale = np.sqrt(2.0 / np.prod(w.shape[:-1])) if w.ndim > 1 else 0.1
    weights.append(rng.normal(0, scale * (0.01 if w.shape == (4096, 1000) else 1), w.shape))
net.set_weights([w.astype(np.float32) for w in weights])
net.save(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], net.predict(vgg19.preprocess_input(images.copy()), verbose=0))
"""


def _photos_224():
    photos = [PIL.Image.fromarray(getattr(skimage.data, name)()).convert('RGB')
              for name in ('astronaut', 'coffee', 'chelsea', 'rocket')]
    return np.stack([np.asarray(p.resize((224, 224), PIL.Image.BILINEAR)) for p in photos]
                    ).astype(np.float32)


def _published_layout(keras_h5, path):
    """The layout of vgg19_weights_tf_dim_ordering_tf_kernels.h5: layers at the top, weights
    under Keras-1 names."""
    with h5py.File(keras_h5, 'r') as src, h5py.File(path, 'w') as dst:
        weights = src['model_weights']
        dst.attrs['layer_names'] = weights.attrs['layer_names']
        for layer in weights.attrs['layer_names']:
            group = dst.create_group(layer)
            names = []
            for name, key in zip(weights[layer].attrs['weight_names'], ('W', 'b')):
                names.append('%s_%s_1:0' % (layer, key))
                group.create_dataset(names[-1], data=weights[layer][name][()])
            group.attrs['weight_names'] = names


def _slim_probabilities(checkpoint, images):
    with tf.Graph().as_default():
        inputs = tf.placeholder(tf.float32, [None, 224, 224, 3])
        logits, _ = model.vgg_19(data._subtract_means(inputs), num_classes=1000,
                                 is_training=False)
        probabilities = tf.nn.softmax(logits)
        with tf.Session() as session:
            tf.train.Saver(slim.get_model_variables()).restore(session, checkpoint)
            return session.run(probabilities, {inputs: images})


@pytest.mark.slow
def test_converted_keras_weights_predict_as_keras(tmp_path):
    images = _photos_224()
    np.save(tmp_path / 'images.npy', images)
    keras_h5 = str(tmp_path / 'keras.h5')
    subprocess.run([sys.executable, '-c', KERAS_VGG19, keras_h5, str(tmp_path / 'images.npy'),
                    str(tmp_path / 'keras.npy')], check=True, timeout=600)
    expected = np.load(tmp_path / 'keras.npy')
    assert expected.max() > 0.05 and len(set(expected.argmax(1))) > 1  # a real comparison

    checkpoint = model.convert_keras(keras_h5, str(tmp_path / 'slim' / 'vgg_19.ckpt'))
    os.remove(keras_h5)
    shapes = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    assert sorted(shapes) == sorted(SLIM_NAMES)
    assert shapes['vgg_19/fc6/weights'] == [7, 7, 512, 4096]
    ours = _slim_probabilities(checkpoint, images)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    np.testing.assert_array_equal(ours.argmax(1), expected.argmax(1))
    # The test would see a missed channel swap: BGR pixels give other probabilities.
    assert np.abs(_slim_probabilities(checkpoint, images[..., ::-1]) - expected).max() > 1e-3
    # And the checkpoint is a --pretrained one: everything but the head restores.
    with tf.Graph().as_default():
        model.vgg_19(tf.placeholder(tf.float32, [1, 224, 224, 3]), num_classes=7)
        assert model.pretrained_init_fn(checkpoint, model.vgg19_variables(7, [model.HEAD_SCOPE]))


def _stand_in_keras_h5(path):
    """Keras VGG19's layers with 4 channels instead of 64..512, as model.save('x.h5') lays them
    out; returns {layer: (kernel, bias)}."""
    rng = np.random.RandomState(0)
    shapes = [('block%d_conv%d' % (b, i), (3, 3, 3 if (b, i) == (1, 1) else 4, 4))
              for b, n in model.KERAS_BLOCKS for i in range(1, n + 1)]
    shapes += [('fc1', (7 * 7 * 4, 5)), ('fc2', (5, 5)), ('predictions', (5, 3))]
    layers = {layer: (rng.rand(*shape).astype(np.float32), rng.rand(shape[-1]).astype(np.float32))
              for layer, shape in shapes}
    with h5py.File(path, 'w') as f:
        group = f.create_group('model_weights')
        group.attrs['layer_names'] = ['input_layer'] + list(layers)
        group.create_group('input_layer').attrs['weight_names'] = []
        for layer, (kernel, bias) in layers.items():
            group[layer + '/' + layer + '/kernel'] = kernel
            group[layer + '/' + layer + '/bias'] = bias
            group[layer].attrs['weight_names'] = [layer + '/kernel', layer + '/bias']
    return layers


def test_vgg19_shapes_are_the_networks():
    model.vgg_19(tf.placeholder(tf.float32, [1, 224, 224, 3]), num_classes=7)
    shapes = {v.op.name[:-len('/weights')]: tuple(v.shape.as_list())
              for v in slim.get_model_variables() if v.op.name.endswith('/weights')}
    assert model.vgg19_shapes(7) == shapes


def test_published_keras_layout_converts_like_a_saved_model(tmp_path):
    """Both Keras HDF5 layouts give the same variables (a small stand-in for VGG19's layers)."""
    saved = tmp_path / 'saved.h5'
    layers = _stand_in_keras_h5(saved)
    _published_layout(saved, tmp_path / 'published.h5')
    converted = [model.keras_to_slim(model.read_keras_h5(str(tmp_path / name)))
                 for name in ('saved.h5', 'published.h5')]
    for name in SLIM_NAMES:
        np.testing.assert_array_equal(converted[0][name], converted[1][name])
    first = converted[0]['vgg_19/conv1/conv1_1/weights']
    np.testing.assert_array_equal(first[:, :, 0], layers['block1_conv1'][0][:, :, 2])  # R <- B
    fc6 = converted[0]['vgg_19/fc6/weights']
    assert fc6.shape == (7, 7, 4, 5)
    # Keras flattens (height, width, channel): row h*7*4 + w*4 + c is tap (h, w), channel c.
    np.testing.assert_array_equal(fc6[2, 5, 1], layers['fc1'][0][2 * 28 + 5 * 4 + 1])
    assert converted[0]['vgg_19/fc8/weights'].shape == (1, 1, 5, 3)


@pytest.mark.parametrize('content, message', [
    (None, 'not found'), (b'not hdf5', 'cannot read'), ('empty', 'no layer_names'),
    ('stand-in', 'vgg_19/conv1/conv1_1 has kernel .3, 3, 3, 4.'), ('out-dir', 'is a directory')])
def test_convert_keras_refuses_what_is_not_keras_vgg19(tmp_path, content, message):
    path, out = tmp_path / 'weights.h5', tmp_path / 'out.ckpt'
    if content == 'empty':
        h5py.File(path, 'w').close()
    elif content in ('stand-in', 'out-dir'):
        _stand_in_keras_h5(path)
        if content == 'out-dir':
            out.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(model.CheckpointError, match=message):
        model.convert_keras(str(path), str(out))
    assert glob.glob(str(out) + '*') == ([str(out)] if content == 'out-dir' else [])


def test_convert_keras_checks_what_it_wrote(tmp_path, monkeypatch, capsys):
    h5 = str(tmp_path / 'weights.h5')
    converted = model.keras_to_slim(_stand_in_keras_h5(h5))
    # The stand-in's shapes as VGG19's, so that it converts and its output is checked as such.
    monkeypatch.setattr(model, 'vgg19_shapes', lambda num_classes: {
        name[:-len('/weights')]: value.shape for name, value in converted.items()
        if name.endswith('/weights')})
    good = model.convert_keras(h5, str(tmp_path / 'good.ckpt'))
    assert model.checkpoint_problem(good, model.vgg19_variables(3)) is None
    write = model.write_checkpoint

    def short_write(variables, path):  # what a disk that fills up mid-write can leave
        write(variables, path)
        truncate(path + '.data-00000-of-00001')
    monkeypatch.setattr(model, 'write_checkpoint', short_write)
    out = str(tmp_path / 'out.ckpt')
    assert model.main(['convert-keras', h5, out]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith('model.py: error: the converted checkpoint %s does not read back '
                           'whole' % out) and line.endswith('(removed); free some space and '
                                                            'convert again'), line
    assert glob.glob(out + '*') == []  # a second try is not refused as already there


def test_write_checkpoint_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / 'file').write_text('not a directory')
    with pytest.raises(model.CheckpointError, match='file is a file'):
        model.write_checkpoint({'x': np.zeros(1)}, str(tmp_path / 'file' / 'x.ckpt'))
    assert os.listdir(tmp_path) == ['file']


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf, None])
def test_a_checkpoint_holding_a_value_that_is_not_finite_is_damaged(tmp_path, bad):
    values = {'a': np.arange(12, dtype=np.float32).reshape(3, 4),
              'empty': np.zeros([0, 4], np.float32),  # finite: nothing in it is not
              'b': np.full(5, -3.4e38, np.float32), 'c': np.full(5, 3.4e38, np.float32)}
    if bad is not None:
        values['a'][1, 2] = bad
    path = model.write_checkpoint(values, str(tmp_path / 'x.ckpt'))
    found = model.checkpoint_problem(path)
    assert found == (None if bad is None else
                     ('damaged', 'holds NaN or infinite values in a'))
