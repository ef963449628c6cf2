"""Where the network looked: Grad-CAM heat maps of a trained model's top class.

Grad-CAM (Selvaraju et al. 2017, shown there on VGG): the gradient of a class's score (its
logit) with respect to the last convolution block's output, averaged over the positions, weighs
that block's feature maps; their weighted sum, with the negative part cut off, is where the
evidence for the class lies. inference.py --explain DIR and evaluate.py --explain write it over
the picture the network saw (the central crop of the evaluation preprocessing).
"""
import os

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import numpy as np
import PIL.Image
import tensorflow.compat.v1 as tf

import data
import model
import rundir


LAYER = 'conv5/conv5_4'  # the last convolution, the paper's choice for VGG
PICTURE_SIDE = 224  # the written picture's side at least: a 32-px crop is shown 7 times larger


def grad_cam(logits, end_points, classes, layer=LAYER):
    """Grad-CAM heat maps [n, h, w] of `classes` [n] at end point `layer` [n, h, w, c], each
    scaled to a maximum of 1 (all 0 where nothing speaks for the class)."""
    features = model.end_point(end_points, layer)
    score = tf.reduce_sum(logits * tf.one_hot(classes, logits.shape[-1], dtype=logits.dtype))
    gradients = tf.gradients(score, features)[0]  # each image's score depends on it alone
    weights = tf.reduce_mean(gradients, [1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, -1))
    return cam / tf.maximum(tf.reduce_max(cam, [1, 2], keepdims=True), 1e-12)


def overlay(picture, cam, side=PICTURE_SIDE):
    """The RGB uint8 `picture` [s, s, 3] with heat map `cam` [h, w] (0..1) over it, in a jet
    colour scale at half opacity, as a PIL image at least `side` pixels on a side."""
    import matplotlib  # only when a picture is made
    size = max(side, picture.shape[0])
    heat = PIL.Image.fromarray((255 * cam).astype(np.uint8))
    heat = heat.resize((size, size), PIL.Image.BILINEAR)
    colours = matplotlib.colormaps['jet'](np.asarray(heat) / 255.0)[..., :3]
    photo = np.asarray(PIL.Image.fromarray(picture).resize((size, size), PIL.Image.BILINEAR))
    return PIL.Image.fromarray((0.5 * photo + 0.5 * 255 * colours).astype(np.uint8))


def picture_path(directory, image_path, taken):
    """<directory>/<the image's name>.png, with -2, -3 ... for a name already in `taken` (a set,
    updated)."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    name, n = stem + '.png', 1
    while name in taken:
        n += 1
        name = '%s-%d.png' % (stem, n)
    taken.add(name)
    return os.path.join(directory, name)


def read(path, max_pixels=data.MAX_PIXELS):
    """The RGB uint8 pixels of the image in `path` as training decodes them (Pillow gives the same
    pixels as TensorFlow's decoders; no EXIF rotation, as in training); ValueError for an image
    too large to decode (data.size_problem, from its header)."""
    with data.limits_of_our_own(), PIL.Image.open(path) as image:
        problem = data.size_problem(*image.size, max_pixels)
        if problem:
            raise ValueError(problem)
        return np.asarray(data.rgb_of(image))


class Explainer:
    """A trained model loaded once, answering for one picture at a time where the network found
    a class (the top one, or the one asked about): Grad-CAM. `settings` and `checkpoint` are what
    rundir.trained_model gave the caller, already looked up and checked."""

    def __init__(self, settings, checkpoint, precision='fp32', xla=False):
        self.settings = settings
        size = settings['image_size']
        graph = tf.Graph()
        with graph.as_default():
            self._image = tf.placeholder(tf.uint8, [None, None, 3])
            self._preprocessed = data.preprocess_for_eval(self._image, size)
            self._input = tf.placeholder(tf.float32, [size, size, 3])
            logits, end_points = model.classifier(self._input[None], settings,
                                                  is_training=False)
            self._class = tf.placeholder_with_default(
                tf.argmax(logits, 1, output_type=tf.int32), [1])
            self._fetches = {'class': self._class[0],
                             'probability': tf.nn.softmax(logits)[0, self._class[0]],
                             'cam': grad_cam(logits, end_points, self._class)[0],
                             'picture': data.to_viewable(self._input)}
            self._session = rundir.restored_session(
                checkpoint, hardware.session_config(precision, xla))

    def preprocess(self, image):
        """RGB uint8 [h, w, 3] -> the network input, the central crop of evaluation."""
        return self._session.run(self._preprocessed, {self._image: image})

    def explain(self, network_input, class_index=None):
        """A network input [size, size, 3] (preprocess, or a Predictor's) -> {'class' (index:
        `class_index`, or else the top class), 'probability' (of it), 'cam' [h, w] (its
        Grad-CAM), 'picture' (the input as RGB uint8)}."""
        feed = {self._input: network_input}
        if class_index is not None:
            feed[self._class] = [class_index]
        return self._session.run(self._fetches, feed)

    def write(self, network_input, path, class_index=None):
        """The heat map of explain's class over the picture, as a PNG at `path`; returns
        explain's answer."""
        found = self.explain(network_input, class_index)
        overlay(found['picture'], found['cam']).save(path)
        return found
