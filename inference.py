"""Name what is in pictures with a trained checkpoint directory.

    python inference.py img.jpg [more.png photos/ ...] [--checkpoint-dir D] [--checkpoint best]
                        [--top-k 5] [--json]
    python inference.py --saved-model models/food/1 img.jpg    # what export.py wrote

Everything the model needs (classes, display names, image size, preprocessing) is read from the
settings.json that training wrote beside the checkpoints (and export.py into the SavedModel).
"""
import json
import logging
import os
import sys

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import imageio.v3 as iio
import numpy as np
import PIL.Image
import tensorflow.compat.v1 as tf

import cli
import data
import evaluate
import explain
import export
import model
import rundir

READABLE = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    p = cli.ArgumentParser(description='Predict the classes of images with a trained VGG19.')
    p.add_argument('images', nargs='+', metavar='IMAGE_OR_DIR',
                   help='image files, or directories whose images are all predicted')
    rundir.add_checkpoint_flags(p)
    p.add_argument('--saved-model', metavar='DIR',
                   help='predict with a SavedModel from export.py instead of a checkpoint')
    p.add_argument('--top-k', type=int, default=5, help='how many classes to print per image')
    p.add_argument('--batch-size', type=int, default=32,
                   help='network inputs per batch: images, or with --tta their views')
    p.add_argument('--max-pixels', type=float, default=data.MAX_PIXELS,
                   help='images with more pixels (also once resized for the network) are '
                        'refused from their header, undecoded')
    p.add_argument('--json', action='store_true', help='print one JSON object per image')
    p.add_argument('--tta', choices=data.TTA_MODES, default=None,
                   help='test-time augmentation: the probabilities averaged over the central '
                        'crop and its mirror image (flip), or over 10 crops (10crop) (default: '
                        "none; a SavedModel's, the one it was exported with)")
    p.add_argument('--explain', metavar='DIR',
                   help='also write, for each image, DIR/<its name>.png: the heat map of its '
                        'top class (Grad-CAM) over what the network saw')
    hardware.add_flags(p)
    args = p.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        p.error('--top-k and --batch-size must be at least 1')
    if args.explain and args.saved_model:
        p.error('--explain needs the model\'s checkpoint directory (--checkpoint-dir), not '
                '--saved-model')
    if args.saved_model and (args.checkpoint_dir != rundir.DEFAULT_CHECKPOINT_DIR or
                             args.checkpoint != 'latest'):
        p.error('--saved-model replaces --checkpoint-dir and --checkpoint: give one or the other')
    return args


def expand(paths):
    """Files as given; directories replaced by the image files in them, sorted."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(sorted(os.path.join(path, f) for f in os.listdir(path)
                                if f.lower().endswith(READABLE)))
        else:
            files.append(path)
    return files


def read_rgb(path, max_pixels, resize_side=0):
    """The image in `path` as RGB uint8 [height, width, 3] (a GIF's first frame, alpha dropped),
    turned as its EXIF orientation says.

    The size is checked from the header before any pixel is decoded (data.size_problem, with
    the short side resized to `resize_side`). JPEGs decode to the same pixels as in training
    (see data.decode_image); training does not apply the EXIF orientation (see README).
    """
    image = None
    with data.limits_of_our_own():
        with PIL.Image.open(path) as header:
            problem = data.size_problem(*header.size, max_pixels, resize_side)
            if problem:
                raise ValueError(problem.replace('the limit of', '--max-pixels'))
            orientation = header.getexif().get(EXIF_ORIENTATION, 1)
            if header.mode.startswith('I;16'):  # as training reads it: data.rgb_of
                image = np.asarray(data.rgb_of(header))
        if image is None:
            image = iio.imread(path, plugin='pillow', index=0, mode='RGB')
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError('decoded to an unusable array %s %s' % (image.shape, image.dtype))
    return oriented(image, orientation)


EXIF_ORIENTATION = 0x0112


def oriented(image, orientation):
    """`image` [height, width, ...] as EXIF `orientation` (1-8) says it is to be shown."""
    if orientation in (5, 6, 7, 8):  # stored on its side: transposed first
        image = np.swapaxes(image, 0, 1)
    flip_rows, flip_columns = {2: (False, True), 3: (True, True), 4: (True, False),
                               5: (False, False), 6: (False, True), 7: (True, True),
                               8: (True, False)}.get(orientation, (False, False))
    return image[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]


class Predictor:
    """A checkpoint directory loaded once: preprocess images, then predict them in batches."""

    def __init__(self, checkpoint_dir, checkpoint='latest', precision='fp32', xla=False,
                 tta='none'):
        settings, checkpoint = rundir.trained_model(checkpoint_dir, checkpoint)
        self.settings, self.checkpoint, self.tta = settings, checkpoint, tta
        graph = tf.Graph()
        with graph.as_default():
            self._image = tf.placeholder(tf.uint8, [None, None, 3])
            # One image's network input, or its views with test-time augmentation.
            self._preprocessed = data.evaluation_input(self._image, settings['image_size'], tta)
            self._batch = tf.placeholder(tf.float32, [None] + self._preprocessed.shape.as_list())
            self._probabilities = evaluate.class_probabilities(self._batch, settings)
            self._session = rundir.restored_session(
                checkpoint, hardware.session_config(precision, xla))

    def preprocess(self, image):
        """RGB uint8 [h, w, 3] -> the network input, exactly as validation makes it."""
        return self._session.run(self._preprocessed, {self._image: image})

    def probabilities(self, inputs):
        """Network inputs (from preprocess) -> class probabilities [n, classes]."""
        return self._session.run(self._probabilities, {self._batch: np.stack(inputs)})


class SavedModelPredictor:
    """A SavedModel from export.py, used like a Predictor: its preprocessing is in its graph."""

    def __init__(self, saved_model_dir, precision='fp32', xla=False, tta=None):
        self.settings = export.load_settings(saved_model_dir)
        self.tta = self.settings.get('tta', 'none')
        if tta not in (None, self.tta):
            raise rundir.SettingsError(
                'SavedModel %s was exported with --tta %s, which its graph does: export it again '
                'with --tta %s, or predict from its checkpoint directory' % (
                    saved_model_dir, self.tta, tta))
        self._session = tf.Session(graph=tf.Graph(),
                                   config=hardware.session_config(precision, xla))
        try:
            with self._session.graph.as_default():
                meta_graph = tf.saved_model.loader.load(
                    self._session, [tf.saved_model.tag_constants.SERVING], saved_model_dir)
        except (tf.errors.OpError, RuntimeError, OSError, ValueError) as e:
            raise rundir.SettingsError('cannot load SavedModel %s: %s'
                                       % (saved_model_dir, str(e).splitlines()[0][:200]))
        if export.PIXELS_SIGNATURE not in meta_graph.signature_def:
            raise rundir.SettingsError('SavedModel %s has no %r signature: export it again with '
                                       'export.py' % (saved_model_dir, export.PIXELS_SIGNATURE))
        signature = meta_graph.signature_def[export.PIXELS_SIGNATURE]
        self._pixels = signature.inputs['pixels'].name
        self._probabilities = signature.outputs['probabilities'].name

    def preprocess(self, image):
        """RGB uint8 [h, w, 3] as it is: the SavedModel preprocesses it."""
        return image

    def probabilities(self, images):
        """RGB images (any sizes) -> class probabilities [n, classes], a run per image size."""
        result = np.zeros([len(images), len(self.settings['class_ids'])], np.float32)
        for shape in {image.shape for image in images}:
            same = [i for i, image in enumerate(images) if image.shape == shape]
            result[same] = self._session.run(self._probabilities, {
                self._pixels: np.stack([images[i] for i in same]).astype(np.float32)})
        return result


def top_k(probabilities, settings, k):
    """The k most probable classes as [{"class", "label", "probability"}], most probable first."""
    order = np.argsort(-probabilities, kind='stable')[:k]
    return [{'class': settings['class_ids'][i], 'label': settings['class_names'][i],
             'probability': float(probabilities[i])} for i in order]


def report(path, predictions, error, as_json):
    if error:  # on stderr in both modes, so a script reading stdout still has it in the log
        print('inference.py: %s: %s' % (path, error), file=sys.stderr)
    if as_json:
        print(json.dumps({'image': path, 'error': error} if error else
                         {'image': path, 'predictions': predictions}, ensure_ascii=False))
    elif not error:
        print(path)
        for p in predictions:
            name = p['label'] if p['label'] == p['class'] else '%s (%s)' % (p['label'], p['class'])
            print('  %6.2f%%  %s' % (100 * p['probability'], name))
    sys.stdout.flush()


def predict(predictor, paths, args, explainer=None):
    """Predict every path, batch by batch; returns how many could not be used. With an
    `explainer` (explain.Explainer), each image's heat map is written into args.explain."""
    failures, taken = 0, set()
    side = data.resize_side_range(predictor.settings['image_size'])[0]
    # --batch-size counts network inputs: with test-time augmentation, each image's views.
    images = max(1, args.batch_size // data.TTA_VIEWS[predictor.tta])
    for start in range(0, len(paths), images):
        good, inputs = [], []
        for path in paths[start:start + images]:
            try:
                inputs.append(predictor.preprocess(read_rgb(path, args.max_pixels, side)))
                good.append(path)
            except FileNotFoundError:
                failures += 1
                report(path, None, 'no such file', args.json)
            except Exception as e:  # any decoder's failure: name the file, go on with the rest
                failures += 1
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                report(path, None, 'cannot read image: %s' % message, args.json)
        if good:
            for path, network_input, probabilities in zip(good, inputs,
                                                          predictor.probabilities(inputs)):
                report(path, top_k(probabilities, predictor.settings, args.top_k), None, args.json)
                if explainer:  # the class printed first; of the central crop (views[0])
                    explainer.write(network_input if predictor.tta == 'none' else
                                    network_input[0], explain.picture_path(
                                        args.explain, path, taken), int(probabilities.argmax()))
    return failures


def main(argv=None):
    args = parse_args(argv)
    # One line on stderr says which precision runs and why; the predictions go to stdout.
    logging.basicConfig(format='inference.py: %(message)s', level=logging.INFO)
    tf.get_logger().setLevel(logging.ERROR)
    tf.disable_eager_execution()
    paths = expand(args.images)
    if not paths:
        print('inference.py: error: no images in %s' % ' '.join(args.images), file=sys.stderr)
        return 2
    try:
        precision = hardware.resolve_precision(args.precision, training=False)
        predictor = (SavedModelPredictor(args.saved_model, precision, args.xla, args.tta)
                     if args.saved_model else
                     Predictor(args.checkpoint_dir, args.checkpoint, precision, args.xla,
                               args.tta or 'none'))
        explainer = args.explain and explain.Explainer(predictor.settings, predictor.checkpoint,
                                                       precision, args.xla)
    except (rundir.SettingsError, hardware.HardwareError) as e:
        print('inference.py: error: %s' % e, file=sys.stderr)
        return 2
    try:
        if explainer:
            os.makedirs(args.explain, exist_ok=True)
        failures = predict(predictor, paths, args, explainer)
    except OSError as e:  # what predict lets through: --explain's writes
        print('inference.py: error: cannot write into --explain %s: %s' % (
            args.explain, model.error_line(e)), file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
