"""Shared fixtures: small datasets made from scikit-image's photos, and a trained-looking
checkpoint directory, so no test needs a download."""
import os
import subprocess
import sys
import tarfile

import h5py
import numpy as np
import PIL.Image
import pytest
import tensorflow.compat.v1 as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import demo  # noqa: E402
import model  # noqa: E402
import rundir  # noqa: E402

tf.disable_eager_execution()

PHOTOS = ('astronaut', 'coffee', 'camera')
# The cheapest real training run: random weights, 32 px, 4 images a step (add what a test needs).
CHEAP_RUN = ['--pretrained', 'none', '--image-size', '32', '--batch-size', '4']


@pytest.fixture(autouse=True)
def fresh_graph():
    """Every test starts on an empty default graph."""
    with tf.Graph().as_default():
        yield


@pytest.fixture(scope='session')
def photo_dataset(tmp_path_factory):
    """Class folders: 8 JPEG crops of each of 3 photos (one of them grayscale)."""
    root = str(tmp_path_factory.mktemp('photos'))
    demo.make_dataset(root, per_class=8, photos=PHOTOS)
    return root


def model_settings(class_ids, image_size=32):
    """The settings record train.py writes for a model of these classes and image size."""
    return rundir.model_settings(class_ids, [c.title() for c in class_ids], image_size)


def make_checkpoint_dir(directory, class_ids, image_size=32):
    """A checkpoint directory as train.py leaves it: settings.json and a random-weight model."""
    settings = model_settings(class_ids, image_size)
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [None, image_size, image_size, 3])
        model.classifier(images, settings, is_training=False, init='he')
        global_step = tf.train.get_or_create_global_step()
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            tf.train.Saver().save(session, os.path.join(directory, rundir.CHECKPOINT_PREFIX),
                                  global_step)
    rundir.save_settings(directory, settings)
    return settings


@pytest.fixture(scope='session')
def checkpoint_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp('checkpoint'))
    make_checkpoint_dir(directory, PHOTOS)
    return directory


def save_variables(variables, path, version=tf.train.SaverDef.V2):
    """Save {name: array} as a checkpoint with prefix `path`, each variable of its array's
    dtype, as a slim checkpoint of those names would be; returns the prefix."""
    with tf.Graph().as_default():
        tensors = [tf.Variable(tf.zeros(v.shape, v.dtype), name=name)
                   for name, v in variables.items()]
        with tf.Session() as session:
            for tensor, value in zip(tensors, variables.values()):
                tensor.load(value, session)  # fed, not embedded in the graph as constants
            return tf.train.Saver(tensors, write_version=version).save(
                session, path, write_meta_graph=False, write_state=False)


# Broken pretrained checkpoints, as people hold them after downloading vgg_19_2016_08_28.tar.gz
# (or instead of it), at a small size: the first convolution of a slim VGG stands in for the
# whole network. train.py restores it alone with --exclude-scopes EXCEPT_CONV1_1.
CONV1 = {'vgg_19/conv1/conv1_1/weights': [3, 3, 3, 64], 'vgg_19/conv1/conv1_1/biases': [64]}
EXCEPT_CONV1_1 = ','.join(sorted({name.rsplit('/', 1)[0] for name in model.vgg19_variables(1)}
                                 - {'vgg_19/conv1/conv1_1'}))


def conv1_values(dtype=np.float32, prefix='vgg_19'):
    """conv1_1 of a slim VGG (`prefix` vgg_16 for VGG16): values no float32 rounding changes."""
    rng = np.random.default_rng(0)
    return {name.replace('vgg_19', prefix): (rng.integers(-512, 512, shape) / 64).astype(dtype)
            for name, shape in CONV1.items()}


def truncate(path):
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


def tar_of(tmp_path, mode):
    """The checkpoint as its download comes: vgg_19.ckpt packed in a .tar.gz (or a .tar)."""
    (tmp_path / 'unpacked').mkdir()
    save_variables(conv1_values(), str(tmp_path / 'unpacked' / 'vgg_19.ckpt'),
                   tf.train.SaverDef.V1)  # the published file is in the V1 format
    path = str(tmp_path / ('vgg_19_2016_08_28.tar' + ('.gz' if 'gz' in mode else '')))
    with tarfile.open(path, mode) as f:
        f.add(str(tmp_path / 'unpacked' / 'vgg_19.ckpt'), 'vgg_19.ckpt')
    return path


def conv1_checkpoint(tmp_path, dtype):
    return save_variables(conv1_values(dtype), str(tmp_path / 'vgg_19.ckpt'))


def keras_h5(tmp_path):
    path = str(tmp_path / 'vgg19_weights_tf_dim_ordering_tf_kernels.h5')
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = ['block1_conv1']
    return path


def with_nan(tmp_path):
    values = conv1_values()
    values['vgg_19/conv1/conv1_1/biases'][3] = np.nan
    return save_variables(values, str(tmp_path / 'vgg_19.ckpt'))


def truncated(tmp_path, version):
    path = save_variables(conv1_values(), str(tmp_path / 'vgg_19.ckpt'), version)
    truncate(path if version == tf.train.SaverDef.V1 else path + '.data-00000-of-00001')
    return path


# {case: (a function of a directory making it there, checkpoint_problem's kind, what the one
# line says to do)}
DOWNLOAD = 'download %s again and unpack it' % model.VGG19_URL
BROKEN_PRETRAINED = {
    'vgg16': (lambda t: save_variables(conv1_values(prefix='vgg_16'), str(t / 'vgg_16.ckpt')),
              'missing', 'has no variable vgg_19/conv1/conv1_1/weights; is it a TF-slim VGG19'),
    'keras .h5': (keras_h5, 'hdf5', 'is an HDF5 file .* python model.py convert-keras .*'
                                    'vgg19_weights_tf_dim_ordering_tf_kernels.h5 '
                                    'data/vgg_19_keras.ckpt'),
    '.tar.gz as is': (lambda t: tar_of(t, 'w:gz'), 'archive',
                      r'unpack it \(tar xf .*tar.gz\)'),
    '.tar as is': (lambda t: tar_of(t, 'w'), 'archive', r'unpack it \(tar xf .*tar\)'),
    'truncated .data': (lambda t: truncated(t, tf.train.SaverDef.V2), 'damaged',
                        'does not read back whole .*' + DOWNLOAD),
    'truncated V1 file': (lambda t: truncated(t, tf.train.SaverDef.V1), 'damaged',
                          'does not read back whole .*' + DOWNLOAD),
    'NaN': (with_nan, 'damaged',
            'NaN or infinite values in vgg_19/conv1/conv1_1/biases; .*' + DOWNLOAD),
    'int32': (lambda t: conv1_checkpoint(t, np.int32), 'dtype',
              'holds vgg_19/conv1/conv1_1/weights as int32, the model needs float32'),
    'other shape': (lambda t: save_variables(
        {'vgg_19/conv1/conv1_1/weights': np.zeros([3, 3, 3, 32], np.float32)},
        str(t / 'vgg_19.ckpt')), 'shape',
        r'vgg_19/conv1/conv1_1/weights with shape \[3, 3, 3, 32\], the model needs \[3, 3, 3, '
        r'64\]; add its scope to --exclude-scopes'),
}


def random_image(height, width, seed=0):
    return np.random.RandomState(seed).randint(0, 256, [height, width, 3]).astype(np.uint8)


def run_script(script, *args, timeout=300):
    """(exit code, stdout, stderr) of `python <script> args` in a process of its own, as a user
    runs it."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, script)] + list(args),
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def image_files(directory):
    """One small image of each kind a user's folder may hold (JPEG, grayscale, CMYK, PNG with
    alpha, palette GIF, BMP, 16-bit PNG), written into `directory`; their paths."""
    rgb = random_image(70, 110, seed=3)
    files = {'photo.jpg': (PIL.Image.fromarray(rgb), 'JPEG'),
             'gray.jpg': (PIL.Image.fromarray(rgb[..., 1]), 'JPEG'),
             'cmyk.jpg': (PIL.Image.fromarray(rgb).convert('CMYK'), 'JPEG'),
             'alpha.png': (PIL.Image.fromarray(np.dstack([rgb, rgb[..., :1]])), 'PNG'),
             'palette.gif': (PIL.Image.fromarray(rgb).convert('P'), 'GIF'),
             'plain.bmp': (PIL.Image.fromarray(rgb), 'BMP'),
             'deep.png': (PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), 'PNG')}
    paths = []
    for name, (image, fmt) in files.items():
        paths.append(os.path.join(directory, name))
        image.save(paths[-1], format=fmt)
    return paths


def bad_files(directory):
    """(a good JPEG, [files that are not images: empty, truncated, text, random bytes]), written
    into `directory`, each named as an image."""
    good = os.path.join(directory, 'good.jpg')
    os.makedirs(directory, exist_ok=True)
    PIL.Image.fromarray(random_image(50, 50)).save(good)
    blob = open(good, 'rb').read()
    bad = {'empty.jpg': b'', 'truncated.jpg': blob[:len(blob) // 2], 'text.png': b'hello',
           'random.jpg': os.urandom(300)}
    for name, content in bad.items():
        with open(os.path.join(directory, name), 'wb') as f:
            f.write(content)
    return good, [os.path.join(directory, n) for n in bad]


def usage_error(parse, flags, capsys):
    """The last line that `parse` (a command's parse_args) prints for `flags` it refuses, once
    it has exited with code 2, as argparse does for a usage error."""
    with pytest.raises(SystemExit) as exit:
        parse(flags)
    assert exit.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]
