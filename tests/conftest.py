"""Shared fixtures: small datasets made from scikit-image's photos, and a trained-looking
checkpoint directory, so no test needs a download."""
import os
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import demo  # noqa: E402
import model  # noqa: E402

tf.disable_eager_execution()

PHOTOS = ('astronaut', 'coffee', 'camera')


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


def make_checkpoint_dir(directory, class_ids, image_size=32):
    """A checkpoint directory as train.py leaves it: settings.json and a random-weight model."""
    padding, global_pool = model.fc_options(image_size)
    settings = {'class_ids': list(class_ids), 'class_names': [c.title() for c in class_ids],
                'image_size': image_size, 'fc_conv_padding': padding, 'global_pool': global_pool,
                'preprocessing': data.preprocessing_settings(image_size)}
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [None, image_size, image_size, 3])
        model.classifier(images, settings, is_training=False, init='he')
        global_step = tf.train.get_or_create_global_step()
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            tf.train.Saver().save(session, os.path.join(directory, 'model.ckpt'), global_step)
    model.save_settings(directory, settings)
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


def random_image(height, width, seed=0):
    return np.random.RandomState(seed).randint(0, 256, [height, width, 3]).astype(np.uint8)
