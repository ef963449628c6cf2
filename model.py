"""VGG19 exactly as TF-slim defines it, and the rules for restoring ImageNet weights into it.

The variable names follow the public checkpoint `vgg_19.ckpt` (vgg_19/conv1/conv1_1/weights ...
vgg_19/fc8/biases), so it restores as it is; the fully connected layers are convolutions.

    python model.py convert-keras vgg19_weights_tf_dim_ordering_tf_kernels.h5 data/vgg_19_keras.ckpt

turns Keras' VGG19 ImageNet weights into such a checkpoint, for train.py --pretrained.
"""
import contextlib
import logging
import os
import sys
import warnings

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import h5py
import numpy as np
import tensorflow.compat.v1 as tf
import tf_slim as slim

import cli


WEIGHT_DECAY = 5e-4
DEFAULT_IMAGE_SIZE = 224  # the size the ImageNet checkpoint was trained at
HEAD_SCOPE = 'vgg_19/fc8'  # the ImageNet classifier, rebuilt for the user's classes
STARTS = ('pool4', 'pool5', 'fc7')  # where vgg_19 can start: the boundaries of features.py


INITIALIZERS = {
    'xavier': None,  # slim's default (Glorot uniform), as the published network
    # He et al.: keeps the signal's scale through 19 ReLU layers, which random features need.
    'he': lambda: tf.variance_scaling_initializer(scale=2.0, mode='fan_in'),
}


def vgg_arg_scope(weight_decay=WEIGHT_DECAY, init='xavier'):
    """slim's VGG arg_scope: ReLU, L2 weight decay on the weights, zero biases, SAME convs."""
    initializer = INITIALIZERS[init]
    extra = {'weights_initializer': initializer()} if initializer else {}
    with slim.arg_scope([slim.conv2d, slim.fully_connected],
                        activation_fn=tf.nn.relu, **extra,
                        weights_regularizer=slim.l2_regularizer(weight_decay),
                        biases_initializer=tf.zeros_initializer()):
        with slim.arg_scope([slim.conv2d], padding='SAME') as arg_sc:
            return arg_sc


def fc_options(image_size):
    """How fc6..fc8 read a feature map of `image_size` inputs: (fc_conv_padding, global_pool).

    At 224 px this is slim's network as published. Larger inputs slide the 7x7 fc6 window and
    average the result; inputs under 224 px leave a feature map smaller than 7x7, so fc6 pads.
    """
    if image_size < 32:
        raise ValueError('--image-size must be at least 32 (VGG19 halves it five times), got %d'
                         % image_size)
    padding = 'VALID' if image_size >= DEFAULT_IMAGE_SIZE else 'SAME'
    return padding, image_size != DEFAULT_IMAGE_SIZE


@contextlib.contextmanager
def _quiet_slim():
    """tf-slim's layers go through the Keras-1 layer API, whose deprecation warning is slim's,
    not the user's: silenced while the network is built, and only then."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='`layer.apply` is deprecated')
        yield


def vgg_19(inputs, num_classes=1000, is_training=True, dropout_keep_prob=0.5,
           spatial_squeeze=True, reuse=None, scope='vgg_19', fc_conv_padding='VALID',
           global_pool=False, start=None, frozen=()):
    """VGG19 (configuration E) on `inputs` [batch, height, width, 3]; returns (logits, end_points).

    The same graph as `tf_slim.nets.vgg.vgg_19`, and like it, it takes its layers' settings from
    the caller's arg_scope (`with slim.arg_scope(vgg_arg_scope()): vgg_19(...)`; `classifier`
    does that), fc6-fc8 included. The regularisation losses land in
    tf.GraphKeys.REGULARIZATION_LOSSES; the training loss must add them.
    `start` ('pool4', 'pool5' or 'fc7'): `inputs` are that end point's output, stored by
    features.py, and only the layers above it are built, with the same names.
    `frozen`: the layers ('fc6', ...) whose weights this graph takes no gradient of (all of them
    where not `is_training`), which lets fc6 skip the taps that miss a small map.
    """
    def above(point):  # whether the layers just above `point` are built
        return start is None or STARTS.index(start) <= STARTS.index(point)

    with _quiet_slim():
        with tf.variable_scope(scope, 'vgg_19', [inputs], reuse=reuse) as sc:
            end_points_collection = sc.original_name_scope + '_end_points'
            with slim.arg_scope([slim.conv2d, slim.fully_connected, slim.max_pool2d],
                                outputs_collections=end_points_collection):
                net = inputs
                if start is None:
                    net = slim.repeat(net, 2, slim.conv2d, 64, [3, 3], scope='conv1')
                    net = slim.max_pool2d(net, [2, 2], scope='pool1')
                    net = slim.repeat(net, 2, slim.conv2d, 128, [3, 3], scope='conv2')
                    net = slim.max_pool2d(net, [2, 2], scope='pool2')
                    net = slim.repeat(net, 4, slim.conv2d, 256, [3, 3], scope='conv3')
                    net = slim.max_pool2d(net, [2, 2], scope='pool3')
                    net = slim.repeat(net, 4, slim.conv2d, 512, [3, 3], scope='conv4')
                    net = slim.max_pool2d(net, [2, 2], scope='pool4')
                if above('pool4'):
                    net = slim.repeat(net, 4, slim.conv2d, 512, [3, 3], scope='conv5')
                    net = slim.max_pool2d(net, [2, 2], scope='pool5')

                # The fully connected layers as convolutions, as in the checkpoint.
                fc = dict(outputs_collection=end_points_collection)
                if above('pool5'):
                    net = _fully_connected(net, 4096, 7, fc_conv_padding, scope='fc6',
                                           frozen='fc6' in frozen or not is_training, **fc)
                    net = slim.dropout(net, dropout_keep_prob, is_training=is_training,
                                       scope='dropout6')
                    net = _fully_connected(net, 4096, 1, 'SAME', scope='fc7', **fc)
                end_points = slim.utils.convert_collection_to_dict(end_points_collection)
                if global_pool and above('pool5'):
                    net = tf.reduce_mean(net, [1, 2], keepdims=True, name='global_pool')
                    end_points['global_pool'] = net
                if num_classes:
                    net = slim.dropout(net, dropout_keep_prob, is_training=is_training,
                                       scope='dropout7')
                    net = _fully_connected(net, num_classes, 1, 'SAME', scope='fc8',
                                           activation_fn=None, **fc)
                    if spatial_squeeze:
                        net = tf.squeeze(net, [1, 2], name='fc8/squeezed')
                    end_points[sc.name + '/fc8'] = net
                return net, end_points


def end_point(end_points, name):
    """The end point `name` ('pool5', 'conv5/conv5_4', ...) of a vgg_19 call's `end_points`.
    As slim's, they are keyed by name scope, and a second network on the same variables (the
    evaluation graph beside the training one) has its own: vgg_19_1/pool5."""
    found = [tensor for key, tensor in end_points.items() if key.split('/', 1)[-1] == name]
    if len(found) != 1:
        raise KeyError('vgg_19 end point %s: %d of %s' % (name, len(found), sorted(end_points)))
    return found[0]


def _fully_connected(net, num_outputs, kernel, padding, outputs_collection, scope,
                     frozen=False, **explicit):
    """What slim.conv2d(net, num_outputs, [kernel, kernel], padding) computes, with its
    variables, for the fully connected layers fc6, fc7, fc8: its settings (initializers,
    regularizer, activation, trainable) come from slim.conv2d's arg_scope, as slim's would,
    and from `explicit` arguments (fc8's activation_fn=None) over that.

    Where the kernel covers the whole map (fc6 at 224 px, VALID) or is 1x1 (fc7, fc8), the
    convolution is a matrix multiply, and it is computed as one: TensorFlow's CPU gradient of
    these convolutions is 10 to 20 times slower than a matmul's (fc6: 30 s against 2 s at batch
    16 on 2 cores). On a map smaller than the kernel with SAME padding only the central taps
    reach the map, so those alone do the same arithmetic, and the windows become the rows of one
    matmul (fc6 under 224 px: a 128 px training step 2.2x faster in bf16, 1.6x in fp32, on the
    AMX Xeon; TensorFlow's convolution ran these 7x7 windows on a 4x4 map at a seventh of the
    machine's matmul speed). `frozen`: no gradient is taken of the weights (a frozen layer, or a
    graph that only predicts), so each output position multiplies only the taps that land on
    the map (_taps_on_map: fc6 at 128 px a third of the arithmetic). The variables stay as in
    the checkpoint: (kernel, kernel, channels, num_outputs).
    """
    height, width, channels = net.shape[1], net.shape[2], net.shape[3]
    settings = dict(slim.current_arg_scope().get(slim.arg_scope_func_key(slim.conv2d), {}),
                    **explicit)
    trainable = settings.get('trainable', True)
    activation_fn = settings.get('activation_fn', tf.nn.relu)  # slim.conv2d's defaults
    with tf.variable_scope(scope) as sc:
        weights = slim.model_variable(
            'weights', [kernel, kernel, channels, num_outputs], trainable=trainable,
            initializer=settings.get('weights_initializer', slim.xavier_initializer()),
            regularizer=settings.get('weights_regularizer'))
        biases = slim.model_variable(
            'biases', [num_outputs], trainable=trainable,
            initializer=settings.get('biases_initializer', tf.zeros_initializer()))
        small = padding == 'SAME' and height is not None and width is not None and (
            height < kernel or width < kernel)
        if small and not frozen:  # only the central taps reach the map
            top, left = (kernel // 2 - min(height - 1, kernel // 2),
                         kernel // 2 - min(width - 1, kernel // 2))
            weights = weights[top:kernel - top, left:kernel - left]
        taps = weights.shape.as_list()[:2]
        if small and frozen:
            net = _taps_on_map(net, weights, height, width)
        elif taps == [1, 1]:  # each position on its own
            shape = tf.concat([tf.shape(net)[:3], [num_outputs]], 0)
            net = tf.reshape(tf.matmul(tf.reshape(net, [-1, channels]), weights[0, 0]), shape)
        elif padding == 'VALID' and taps == [height, width]:  # one window: the whole map
            net = tf.matmul(tf.reshape(net, [-1, height * width * channels]),
                            tf.reshape(weights, [-1, num_outputs]))[:, None, None, :]
        elif padding == 'SAME':  # a map of at most 6x6 under 224 px: its windows as rows
            windows = tf.image.extract_patches(net, [1] + taps + [1], [1, 1, 1, 1],
                                               [1, 1, 1, 1], 'SAME')
            shape = tf.concat([tf.shape(net)[:3], [num_outputs]], 0)
            net = tf.reshape(tf.matmul(tf.reshape(windows, [-1, windows.shape[-1]]),
                                       tf.reshape(weights, [-1, num_outputs])), shape)
        else:
            net = tf.nn.conv2d(net, weights, 1, padding)
        net = tf.nn.bias_add(net, biases)
        if activation_fn is not None:
            net = activation_fn(net)
        return slim.utils.collect_named_outputs(outputs_collection, sc.name, net)


def _taps_on_map(net, weights, height, width):
    """A SAME convolution of `weights` [k, k, channels, outputs] over a `height` x `width` map
    smaller than k, multiplying only the taps that land on the map: for each kernel row and
    output column, the input rows it reaches against a contiguous run of that row's taps, one
    matmul. (Taking the weights' gradient through these slices would write a zero tensor the
    size of the kernel per slice: for weights that take none.)"""
    kernel, _, channels, outputs = weights.shape.as_list()
    half = kernel // 2
    taps = tf.reshape(weights, [kernel * kernel, channels * outputs])  # rows: (tap row, column)
    rows = []
    for a in range(kernel):  # input row i + a - half feeds output row i
        first, last = max(0, half - a), min(height, height + half - a)
        if first >= last:
            continue
        reached = net[:, first + a - half:last + a - half]
        columns = []
        for j in range(width):  # input columns c0..c1 feed output column j, through taps b0..b1
            c0, c1 = max(0, j - half), min(width, j + half + 1)
            b0 = a * kernel + c0 - j + half
            product = tf.matmul(tf.reshape(reached[:, :, c0:c1], [-1, (c1 - c0) * channels]),
                                tf.reshape(taps[b0:b0 + c1 - c0], [-1, outputs]))
            columns.append(tf.reshape(product, [-1, last - first, 1, outputs]))
        rows.append(tf.pad(tf.concat(columns, 2),
                           [[0, 0], [first, height - last], [0, 0], [0, 0]]))
    return tf.add_n(rows)


def classifier(images, settings, is_training, reuse=None, weight_decay=WEIGHT_DECAY,
               init='xavier', **kwargs):
    """vgg_19 on `images` for the classes and architecture that `settings` records, under
    vgg_arg_scope(weight_decay, init), so the weight decay is never forgotten (`init`: the
    initial weights of what --pretrained does not restore)."""
    with slim.arg_scope(vgg_arg_scope(weight_decay, init)):
        return vgg_19(images, num_classes=len(settings['class_ids']), is_training=is_training,
                      reuse=reuse, fc_conv_padding=settings['fc_conv_padding'],
                      global_pool=settings['global_pool'], **kwargs)


class CheckpointError(ValueError):
    """A pretrained checkpoint that is missing, damaged, or does not fit the model."""


def in_scopes(name, scopes):
    """True when variable `name` lies in one of `scopes` (vgg_19/fc8 holds vgg_19/fc8/biases)."""
    return any(name == s or name.startswith(s.rstrip('/') + '/') for s in scopes)


def checkpoint_file(path):
    """The checkpoint prefix `path` names (a V1 file, a V2 prefix, or a directory), or None.

    A directory names its newest checkpoint, or, without a `checkpoint` state file (an unpacked
    download has none), the one checkpoint it holds.
    """
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        found = {name[:-len('.index')] if name.endswith('.index') else name
                 for name in os.listdir(path) if name.endswith(('.index', '.ckpt'))}
        return os.path.join(path, found.pop()) if len(found) == 1 else None
    if os.path.isfile(path) or os.path.isfile(path + '.index'):
        return path
    return None


VGG19_URL = 'http://download.tensorflow.org/models/vgg_19_2016_08_28.tar.gz'

# What to do about each kind of checkpoint_problem of a --pretrained checkpoint.
PRETRAINED_FIXES = {
    'archive': 'unpack it (tar xf %(path)s) and pass the vgg_19.ckpt inside as --pretrained',
    'hdf5': 'convert Keras VGG19 weights with python model.py convert-keras %(path)s '
            'data/vgg_19_keras.ckpt and pass that as --pretrained',
    'damaged': 'the download was cut short or the file is damaged: download %s again and '
               'unpack it' % VGG19_URL,
    'missing': 'is it a TF-slim VGG19 checkpoint?',
    'shape': 'add its scope to --exclude-scopes',
    'dtype': 'is it a TF-slim VGG19 checkpoint?',
}


def vgg19_variables(num_classes, exclude_scopes=()):
    """{name: shape} of VGG19's model variables outside `exclude_scopes`, in pure Python (the
    same at every image size)."""
    shapes = {}
    for scope, kernel in vgg19_shapes(num_classes).items():
        shapes[scope + '/weights'], shapes[scope + '/biases'] = list(kernel), [kernel[-1]]
    return {name: shape for name, shape in shapes.items() if not in_scopes(name, exclude_scopes)}


def check_pretrained(path, expected, values=None):
    """The checkpoint prefix that `path` (train.py --pretrained) names, once it holds every
    variable of `expected` ({name: shape}, from vgg19_variables) as floats and reads back whole
    and finite; else CheckpointError saying what to do. Meant before any graph is built.
    `values`, a dict, receives the values of `expected` as read (see checkpoint_problem)."""
    prefix = checkpoint_file(path)
    if prefix is None:
        raise CheckpointError(
            'pretrained checkpoint %s not found: download %s and unpack vgg_19.ckpt there, or '
            'pass --pretrained none to train from scratch' % (path, VGG19_URL))
    problem = checkpoint_problem(prefix, expected, any_float=True, values=values)
    if problem:
        kind, text = problem
        raise CheckpointError('pretrained checkpoint %s %s; %s'
                              % (prefix, text, PRETRAINED_FIXES[kind] % {'path': prefix}))
    return prefix


def pretrained_init_fn(checkpoint_path, expected):
    """A Scaffold init_fn that restores the variables `expected` ({name: shape}, from
    vgg19_variables) from the pretrained checkpoint `checkpoint_path`, checked here first.

    Only model variables (weights and biases): never the global step or the optimizer's slots,
    which a pretrained checkpoint does not have. Values stored as another float type (float64,
    as a careless conversion writes) are restored as the model's float32.
    """
    values = {}  # read by the check: the first session does not read the file again (0.5 s)
    path = check_pretrained(checkpoint_path, expected, values)

    def init_fn(scaffold, session):
        variables = {v.op.name: v for v in session.graph.get_collection(
            tf.GraphKeys.MODEL_VARIABLES)}
        # The initializers fed (the graph is finalized by now), in one run; the values are let
        # go of once used. A session made again before the first checkpoint (a parameter
        # server restarted) reads the file again.
        reader = None if values else tf.train.load_checkpoint(path)
        feed = {variables[name].initializer.inputs[1]: values.pop(name) if reader is None else
                reader.get_tensor(name).astype(np.float32) for name in expected}
        session.run([variables[name].initializer for name in expected], feed)
    return init_fn


def initialized_elsewhere(restored):
    """The Scaffold init_op for a start from a pretrained checkpoint: the random initial values
    of the variables not in `restored` (names; pretrained_init_fn restores those), not a random
    value that the restore overwrites (143 M for VGG19)."""
    return tf.variables_initializer([v for v in tf.global_variables()
                                     if v.op.name not in restored])


# ---------------------------------------------------------------------------------------------
# Whether a checkpoint file is one, and reads back whole: a download, a conversion, a kill.

def checkpoint_problem(prefix, expected=None, any_float=False, values=None):
    """Why checkpoint `prefix` cannot be used, or None: (kind, what is wrong).

    Kinds: 'archive' or 'hdf5' (the file is not a checkpoint but a download left packed, or
    Keras weights), 'damaged' (unreadable, truncated, a value that is not finite), and for a
    variable of `expected` ({name: shape}): 'missing', 'shape', or 'dtype' (not float32, or
    with `any_float` not a float at all). Reads every value once: a truncated .data file shows
    only then. `values`, a dict, receives those of `expected` that it read.
    """
    kind = file_kind(prefix)
    if kind:
        return kind, 'is %s, not a TensorFlow checkpoint' % FILE_KINDS[kind][1]
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
        for name, shape in (expected or {}).items():
            if name not in shapes:
                return 'missing', 'has no variable %s' % name
            if shapes[name] != list(shape):
                return 'shape', 'holds %s with shape %s, the model needs %s' % (
                    name, shapes[name], list(shape))
            if not (dtypes[name].is_floating if any_float else dtypes[name] == tf.float32):
                return 'dtype', 'holds %s as %s, the model needs float32' % (
                    name, dtypes[name].name)
        for name in sorted(shapes):
            value = np.asarray(reader.get_tensor(name))
            # Its extremes, not np.isfinite's array of flags, which a fresh process pays for
            # with its memory's first touch: VGG19 read and checked in 0.7 s, not 1.4 s.
            if value.dtype.kind == 'f' and value.size and not (
                    np.isfinite(value.max()) and np.isfinite(value.min())):
                return 'damaged', 'holds NaN or infinite values in %s' % name
            if values is not None and name in (expected or ()):
                values[name] = value.astype(np.float32, copy=False)  # float64 halved at once
    except Exception as e:  # a damaged file fails in whatever way its reader trips on it
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        return 'damaged', 'does not read back whole (%s: %s)' % (type(e).__name__, text[:200])
    return None


# Files users hold instead of a checkpoint, by their first bytes: (offset, magic), what it is.
FILE_KINDS = {
    'archive': ([(0, b'\x1f\x8b'), (257, b'ustar')], 'a .tar.gz or .tar archive'),
    'hdf5': ([(0, b'\x89HDF\r\n\x1a\n')], 'an HDF5 file (Keras weights?)'),
}


def file_kind(prefix):
    """'archive' or 'hdf5' when the file `prefix` names (a V1 checkpoint is one file, a V2 one
    has `prefix`.index) starts like one, else None."""
    path = prefix if os.path.isfile(prefix) else prefix + '.index'
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError:
        return None  # checkpoint_problem's reader says what is wrong
    for kind, (magics, _) in FILE_KINDS.items():
        if any(head[offset:offset + len(magic)] == magic for offset, magic in magics):
            return kind
    return None


# ---------------------------------------------------------------------------------------------
# Keras' VGG19 ImageNet weights (vgg19_weights_tf_dim_ordering_tf_kernels.h5) as a slim checkpoint.

KERAS_BLOCKS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))  # (block, convolutions in it)
KERAS_TO_SLIM = dict(
    [('block%d_conv%d' % (b, i), 'vgg_19/conv%d/conv%d_%d' % (b, b, i))
     for b, n in KERAS_BLOCKS for i in range(1, n + 1)]
    + [('fc1', 'vgg_19/fc6'), ('fc2', 'vgg_19/fc7'), ('predictions', 'vgg_19/fc8')])


def read_keras_h5(path):
    """{layer name: (kernel, bias)} of Keras' VGG19 from a Keras HDF5 file: the published weights
    file, or a whole model saved with model.save('x.h5'). Raises CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError('Keras weights file %s not found' % path)
    try:
        with h5py.File(path, 'r') as f:
            group = f['model_weights'] if 'model_weights' in f else f
            if 'layer_names' not in group.attrs:
                raise CheckpointError('%s is not a Keras HDF5 weights file (no layer_names); a '
                                      'Keras 3 .weights.h5 can be re-saved with model.save('
                                      '"model.h5")' % path)
            layers = {}
            for layer in KERAS_TO_SLIM:
                if layer not in group:
                    raise CheckpointError('%s has no layer %s; is it Keras VGG19 with its top '
                                          '(include_top=True)?' % (path, layer))
                # Keras stores a layer's weights in order (kernel, bias); their names vary
                # between Keras versions.
                names = [n.decode() if isinstance(n, bytes) else n
                         for n in group[layer].attrs['weight_names']]
                layers[layer] = tuple(np.asarray(group[layer][n]) for n in names)
    except (OSError, KeyError) as e:
        raise CheckpointError('cannot read %s as Keras HDF5 weights: %s'
                              % (path, str(e).splitlines()[0]))
    return layers


def vgg19_shapes(num_classes):
    """{slim layer scope: kernel shape} of VGG19 with `num_classes` outputs, in pure Python."""
    shapes, channels = {}, 3
    for (block, n), width in zip(KERAS_BLOCKS, (64, 128, 256, 512, 512)):
        for i in range(1, n + 1):
            shapes['vgg_19/conv%d/conv%d_%d' % (block, block, i)] = (3, 3, channels, width)
            channels = width
    shapes.update({'vgg_19/fc6': (7, 7, 512, 4096), 'vgg_19/fc7': (1, 1, 4096, 4096),
                   'vgg_19/fc8': (1, 1, 4096, num_classes)})
    return shapes


def keras_to_slim(layers):
    """Keras VGG19 weights ({layer: (kernel, bias)}) -> {slim variable name: array}.

    The convolutions are the same HWIO arrays; the first one's input channels go from Keras'
    BGR to RGB. fc1, fc2 and predictions become the convolutions fc6 (7x7), fc7 and fc8 (1x1):
    Keras flattens pool5 in (height, width, channel) order, which is the kernel's own order.
    """
    variables = {}
    for layer, scope in KERAS_TO_SLIM.items():
        if len(layers[layer]) != 2:
            raise CheckpointError('Keras layer %s has %d weights, not a kernel and a bias'
                                  % (layer, len(layers[layer])))
        kernel, bias = layers[layer]
        if layer == 'block1_conv1':
            kernel = kernel[:, :, ::-1, :]
        elif kernel.ndim == 2:
            inputs, outputs = kernel.shape
            side = 7 if layer == 'fc1' else 1
            if inputs % (side * side):
                raise CheckpointError('Keras layer %s has kernel %s, not a VGG19 one'
                                      % (layer, kernel.shape))
            kernel = kernel.reshape(side, side, inputs // (side * side), outputs)
        variables[scope + '/weights'] = np.ascontiguousarray(kernel, np.float32)
        variables[scope + '/biases'] = np.asarray(bias, np.float32)
    return variables


def write_checkpoint(variables, path):
    """Save {name: array} as a TF checkpoint with prefix `path` (no `checkpoint` state file, so
    no directory's own checkpoints are touched); refuses to overwrite one."""
    if os.path.exists(path + '.index'):
        raise CheckpointError('%s.index already exists: pick another output path' % path)
    problem = cannot_create(path)
    if problem:
        raise CheckpointError(problem)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tf.Graph().as_default():
        # Variables filled through feeds: 575 MB of weights as graph constants would not fit.
        saved = {name: tf.get_variable(name, value.shape, tf.float32,
                                       initializer=tf.zeros_initializer())
                 for name, value in variables.items()}
        with tf.Session(config=hardware.session_config()) as session:
            for name, variable in saved.items():
                variable.load(variables[name], session)
            tf.train.Saver(saved).save(session, path, write_meta_graph=False, write_state=False)
    return path


def convert_keras(h5_path, out_path):
    """Keras' VGG19 weights file -> a slim checkpoint for train.py --pretrained."""
    if out_path.endswith(os.sep) or os.path.isdir(out_path):
        raise CheckpointError('%s is a directory; name the checkpoint to write, e.g. '
                              'data/vgg_19_keras.ckpt' % out_path)
    variables = keras_to_slim(read_keras_h5(h5_path))
    num_classes = variables['vgg_19/fc8/biases'].shape[0]
    for scope, shape in vgg19_shapes(num_classes).items():
        found = variables[scope + '/weights'].shape, variables[scope + '/biases'].shape
        if found != (shape, shape[-1:]):
            raise CheckpointError('%s does not hold VGG19 weights at 224 px: %s has kernel %s '
                                  'and bias %s, VGG19 needs %s' % (h5_path, scope, *found, shape))
    write_checkpoint(variables, out_path)
    # What train.py --pretrained will check: a full disk can leave a short file behind.
    problem = checkpoint_problem(out_path, vgg19_variables(num_classes))
    if problem:
        for path in tf.io.gfile.glob(out_path + '.index') + tf.io.gfile.glob(out_path + '.data-*'):
            os.remove(path)
        raise CheckpointError('the converted checkpoint %s %s (removed); free some space and '
                              'convert again' % (out_path, problem[1]))
    return out_path


def cannot_create(path):
    """Why `path` cannot be created (its nearest existing ancestor is a file or read-only), or
    None; asked before the work whose result would be lost."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return 'cannot create %s: %s is a file' % (path, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return 'cannot create %s: %s is not writable' % (path, parent)
    return None


def error_line(error):
    """A file-writing error as one line: an OSError's strerror, an OpError's message."""
    text = getattr(error, 'strerror', None) or getattr(error, 'message', None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__


def main(argv=None):
    p = cli.ArgumentParser(description='VGG19 model tools.')
    commands = p.add_subparsers(dest='command', required=True)
    convert = commands.add_parser(
        'convert-keras', help="Keras' VGG19 .h5 weights -> a slim checkpoint for --pretrained")
    convert.add_argument('weights', help='e.g. vgg19_weights_tf_dim_ordering_tf_kernels.h5')
    convert.add_argument('out', help='checkpoint prefix to write, e.g. data/vgg_19_keras.ckpt')
    args = p.parse_args(argv)
    tf.get_logger().setLevel(logging.ERROR)
    tf.disable_eager_execution()
    try:
        print('wrote %s' % convert_keras(args.weights, args.out))
    except CheckpointError as e:
        print('model.py: error: %s' % e, file=sys.stderr)
        return 2
    except (OSError, tf.errors.OpError) as e:
        print('model.py: error: cannot write %s: %s' % (args.out, error_line(e)), file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
