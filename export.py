"""Export a trained model as a SavedModel, for TF Serving or tf.saved_model.load.

    python export.py OUT_DIR [--checkpoint-dir D] [--checkpoint latest|best|PATH] [--top-k 5]

TF Serving loads numbered versions: export to models/<name>/1, then models/<name>/2, ...
The SavedModel carries everything a client needs: the preprocessing (the same eval
preprocessing as validation and inference.py), the weights, and the class ids and display names.
Two signatures, with the same outputs:

  serving_default  images: string [batch]   encoded JPEG, PNG, GIF (first frame) or BMP files
  pixels           pixels: float32 [batch, height, width, 3]   RGB values 0..255, any size

  outputs  probabilities [batch, classes], scores [batch, k] (the top k probabilities),
           classes [batch, k] (their class indices), class_ids and labels [batch, k] (strings)

The settings record travels too, in OUT_DIR/assets.extra/settings.json. The graph is float32,
as inference.py and evaluate.py predict by default (see hardware.py): the same probabilities on
every machine, unless the server that loads it turns on a mixed-precision rewrite itself.
"""
import logging
import os
import shutil
import sys

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import tensorflow.compat.v1 as tf
import tf_slim as slim

import cli
import data
import evaluate
import model
import rundir

BYTES_SIGNATURE = 'serving_default'
PIXELS_SIGNATURE = 'pixels'
EXTRA_DIR = 'assets.extra'  # TF Serving's place for files that are not part of the graph


class ExportError(ValueError):
    """An export target that is in use or cannot be written."""


def serving_outputs(inputs, settings, top_k):
    """The signature outputs for network `inputs` [batch, size, size, 3], or each image's views
    [batch, views, size, size, 3] (variables reused)."""
    probabilities = evaluate.class_probabilities(inputs, settings, reuse=tf.AUTO_REUSE)
    scores, classes = tf.nn.top_k(probabilities, min(top_k, len(settings['class_ids'])))
    return {'probabilities': probabilities, 'scores': scores, 'classes': classes,
            'class_ids': tf.gather(tf.constant(settings['class_ids']), classes),
            'labels': tf.gather(tf.constant(settings['class_names']), classes)}


def _each(preprocess, batch, shape):
    """`preprocess` on each image of `batch` (they may differ in size) -> [n] + `shape`."""
    return tf.map_fn(preprocess, batch, back_prop=False,
                     fn_output_signature=tf.TensorSpec(shape, tf.float32))


def build_signatures(settings, top_k, tta='none'):
    """Both serving signatures in the default graph, sharing one set of variables; with
    test-time augmentation `tta`, each averages over the views of its images."""
    size = settings['image_size']
    images = tf.placeholder(tf.string, [None], name='images')
    pixels = tf.placeholder(tf.float32, [None, None, None, 3], name='pixels')
    with tf.Graph().as_default():  # what one image becomes, its shape alone
        shape = data.evaluation_input(tf.zeros([size, size, 3]), size, tta).shape.as_list()
    from_bytes = _each(lambda b: data.evaluation_input(data.decode_image(b), size, tta),
                       images, shape)
    from_pixels = _each(lambda p: data.evaluation_input(p, size, tta), pixels, shape)
    predict = tf.saved_model.signature_def_utils.predict_signature_def
    return {BYTES_SIGNATURE: predict({'images': images},
                                     serving_outputs(from_bytes, settings, top_k)),
            PIXELS_SIGNATURE: predict({'pixels': pixels},
                                      serving_outputs(from_pixels, settings, top_k))}


def check_target(out_dir):
    """Refuse, before any work, a target that is in use or cannot be written."""
    if not out_dir.strip('/'):
        raise ExportError('OUT_DIR %r is not a directory to export into' % out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ExportError('%s already exists and is not empty: export to a new directory '
                          '(TF Serving: the next version number)' % out_dir)
    problem = model.cannot_create(out_dir)
    if problem:
        raise ExportError(problem)


def export(checkpoint_dir, out_dir, which='latest', top_k=5, tta='none'):
    """Write the SavedModel of `checkpoint_dir`'s `which` checkpoint into `out_dir` (which must
    not exist yet), its signatures with test-time augmentation `tta`; returns the checkpoint
    exported. A failed export leaves nothing behind."""
    check_target(out_dir)
    settings, checkpoint = rundir.trained_model(checkpoint_dir, which)
    staging = out_dir.rstrip('/') + '.partial'
    shutil.rmtree(staging, ignore_errors=True)  # an earlier export that was cut off
    config = hardware.session_config()  # before the graph: its device listing is the quiet one
    try:
        with tf.Graph().as_default() as graph:
            signatures = build_signatures(settings, top_k, tta)
            saver = tf.train.Saver(slim.get_model_variables())
            with tf.Session(graph=graph, config=config) as session:
                rundir.restore(saver, session, checkpoint)
                builder = tf.saved_model.Builder(staging)
                builder.add_meta_graph_and_variables(
                    session, [tf.saved_model.tag_constants.SERVING],
                    signature_def_map=signatures, strip_default_attrs=True)
                builder.save()
        # The checkpoint's record, and the test-time augmentation where the graph has one.
        rundir.save_settings(os.path.join(staging, EXTRA_DIR), settings if tta == 'none' else
                             dict(settings, tta=tta))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return checkpoint


def load_settings(saved_model_dir):
    """The settings record exported with a SavedModel (its preprocessing is in its graph, so
    any version of data.py can use it)."""
    settings = rundir.load_settings(os.path.join(saved_model_dir, EXTRA_DIR))
    if settings is None:
        versions = sorted(v for v in (os.listdir(saved_model_dir)
                                      if os.path.isdir(saved_model_dir) else ()) if v.isdigit())
        hint = ('; pass a version directory such as %s' % os.path.join(saved_model_dir,
                                                                       versions[-1])
                if versions else '')
        raise rundir.SettingsError('%s is not a SavedModel written by export.py (no %s/%s)%s'
                                   % (saved_model_dir, EXTRA_DIR, rundir.SETTINGS_FILE, hint))
    return settings


def parse_args(argv=None):
    p = cli.ArgumentParser(description='Export a trained VGG19 as a SavedModel.')
    p.add_argument('out_dir', metavar='OUT_DIR',
                   help='a new directory, e.g. models/food/1 (TF Serving wants a version number)')
    rundir.add_checkpoint_flags(p)
    p.add_argument('--top-k', type=int, default=5, help='how many classes the outputs rank')
    p.add_argument('--tta', choices=data.TTA_MODES, default='none',
                   help='test-time augmentation in both signatures: the probabilities averaged '
                        'over the central crop and its mirror image (flip), or over 10 crops')
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error('--top-k must be at least 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    tf.get_logger().setLevel(logging.ERROR)
    tf.disable_eager_execution()
    try:
        checkpoint = export(args.checkpoint_dir, args.out_dir, args.checkpoint, args.top_k,
                            args.tta)
    except (ExportError, rundir.SettingsError) as e:
        print('export.py: error: %s' % e, file=sys.stderr)
        return 2
    except (OSError, tf.errors.OpError) as e:
        print('export.py: error: cannot write %s: %s' % (args.out_dir, model.error_line(e)),
              file=sys.stderr)
        return 2
    print('exported %s to %s (float32, as inference.py predicts by default%s)'
          % (checkpoint, args.out_dir, '' if args.tta == 'none' else
             '; test-time augmentation %s' % args.tta))
    return 0


if __name__ == '__main__':
    sys.exit(main())
