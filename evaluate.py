"""How good a trained model is, and where it fails.

    python evaluate.py --checkpoint-dir D [--checkpoint latest|best|PATH]
                       [--dataset R] [--split validation|train] [--json]
    python evaluate.py --checkpoint-dir D --curves    # only curves.png, from the event files

Prints top-1 and top-5 accuracy, a per-class report (precision, recall, F1, support), the most
confused class pairs and the misclassified files. Writes the confusion matrix (CSV, PNG and a
TensorBoard image) and the misclassified files (CSV) into <checkpoint-dir>/eval/<split>.
Validation during training runs the same code, so both give the same numbers for a checkpoint.
"""
import collections
import csv
import glob
import io
import json
import logging
import os
import sys
import time

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import numpy as np
import tensorflow.compat.v1 as tf
import tf_slim as slim

import cli
import data
import explain
import model
import rundir

log = logging.getLogger('evaluate')

TOP_K = 5


# ---------------------------------------------------------------------------------------------
# Running the model over a split.

# The iterator's initializer takes the split's file list as `feed`, which keeps it out of the
# graph; `fetches` are the results of a batch.
Evaluation = collections.namedtuple('Evaluation', 'initializer feed fetches')


def build(split, settings, batch_size, reuse=None, tta='none'):
    """The evaluation graph over `split`, with test-time augmentation `tta` (data.TTA_MODES):
    an Evaluation for `predict`."""
    placeholders = data.split_placeholders('eval_split')
    iterator = tf.data.make_initializable_iterator(
        data.eval_pipeline(placeholders, settings['image_size'], batch_size, tta))
    images, labels, paths = iterator.get_next()
    return on(images, labels, settings, iterator.initializer,
              data.split_feed(placeholders, split), reuse, paths=paths)


def on(inputs, labels, settings, initializer, feed, reuse=None, start=None, paths=None):
    """An Evaluation of the network on `inputs` (images, or the stored features of end point
    `start`) from the iterator that `initializer` starts with `feed`."""
    probabilities, top = tf.nn.top_k(class_probabilities(inputs, settings, reuse, start),
                                     min(TOP_K, len(settings['class_ids'])))
    fetches = {'labels': labels, 'top': top, 'probabilities': probabilities}
    if paths is not None:
        fetches['paths'] = paths
    return Evaluation(initializer, feed, fetches)


def class_probabilities(inputs, settings, reuse=None, start=None):
    """Class probabilities [n, classes] of `inputs`: network inputs [n, size, size, 3], the
    stored features of end point `start`, or each image's views [n, views, size, size, 3]
    (data.eval_views), whose probabilities are averaged over its views."""
    views = None
    if inputs.shape.ndims == 5:
        views = tf.shape(inputs)[1]
        inputs = tf.reshape(inputs, [-1] + inputs.shape.as_list()[2:])
    logits, _ = model.classifier(inputs, settings, is_training=False, reuse=reuse, start=start)
    probabilities = tf.nn.softmax(logits)
    if views is not None:
        probabilities = tf.reduce_mean(tf.reshape(
            probabilities, [-1, views, len(settings['class_ids'])]), 1)
    return probabilities


def predict(session, evaluation, num_examples):
    """One pass over the split of `evaluation` (build): a dict of numpy arrays, one row per image
    that decoded: labels [n], top (the top-k class indices, best first) [n, k], probabilities
    [n, k], paths."""
    session.run(evaluation.initializer, evaluation.feed)
    fetches = evaluation.fetches
    batches, seen, every = [], 0, max(num_examples // 4, 1)
    while True:
        try:
            batch = session.run(fetches)
        except tf.errors.OutOfRangeError:
            break
        n = len(batch['labels'])
        if (seen + n) // every > seen // every and seen + n < num_examples:
            log.info('evaluated %d/%d images', seen + n, num_examples)
        seen += n
        batches.append(batch)
    if seen < num_examples:
        log.warning('read %d of %d images: %d could not be decoded',
                    seen, num_examples, num_examples - seen)
    if not batches:
        return {'labels': np.zeros([0], np.int64), 'top': np.zeros([0, 1], np.int64),
                'probabilities': np.zeros([0, 1]), 'paths': []}
    result = {key: np.concatenate([b[key] for b in batches]) for key in fetches}
    if 'paths' in result:  # not from stored features
        result['paths'] = [p.decode('utf-8', 'replace') for p in result['paths']]
    return result


# ---------------------------------------------------------------------------------------------
# The report: plain numpy, so it is checked on hand-made predictions.

def accuracy(labels, top):
    """(top-1, top-k) accuracy of the top-k class indices `top` [n, k] for `labels` [n]."""
    if len(labels) == 0:
        return 0.0, 0.0
    hits = np.asarray(top) == np.asarray(labels)[:, None]
    return float(hits[:, 0].mean()), float(hits.any(axis=1).mean())


def confusion_matrix(labels, predicted, num_classes):
    """Counts [true class, predicted class]."""
    matrix = np.zeros([num_classes, num_classes], np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def per_class(matrix):
    """(precision, recall, f1, support) of each class from a confusion matrix; 0 where a ratio
    is undefined (scikit-learn's zero_division=0)."""
    hits = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(hits), where=b > 0)
    precision, recall = ratio(hits, predicted), ratio(hits, support)
    return precision, recall, ratio(2 * precision * recall, precision + recall), support


def most_confused(matrix, n):
    """The `n` largest off-diagonal counts as (true, predicted, count), largest first."""
    off = np.array(matrix)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind='stable')[:n]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [(int(t), int(p), int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def report(predictions, class_ids, class_names):
    """Everything an evaluation says about `predictions` (from `predict`), JSON-able."""
    labels, top = predictions['labels'], predictions['top']
    top1, topk = accuracy(labels, top)
    matrix = confusion_matrix(labels, top[:, 0], len(class_ids))
    precision, recall, f1, support = per_class(matrix)
    classes = [{'class': class_ids[i], 'label': class_names[i], 'precision': float(precision[i]),
                'recall': float(recall[i]), 'f1': float(f1[i]), 'support': int(support[i])}
               for i in range(len(class_ids))]
    # Averages over the classes that occur in labels or predictions, as scikit-learn's.
    present = (support > 0) | (matrix.sum(axis=0) > 0)
    weights = support[present] / max(support.sum(), 1)
    averages = {name: {'precision': float(fn(precision[present])),
                       'recall': float(fn(recall[present])), 'f1': float(fn(f1[present])),
                       'support': int(support.sum())}
                for name, fn in (('macro_avg', np.mean), ('weighted_avg',
                                                          lambda v: np.sum(v * weights)))
                if present.any()}
    wrong = np.flatnonzero(top[:, 0] != labels)
    return dict({
        'num_examples': int(len(labels)), 'top1': top1, 'top5': topk, 'k': int(top.shape[1]),
        'per_class': classes,
        'confusion_matrix': matrix.tolist(),
        'most_confused': [{'true': class_ids[t], 'predicted': class_ids[p], 'count': c}
                          for t, p, c in most_confused(matrix, 10)],
        'misclassified': [{'image': predictions['paths'][i], 'true': class_ids[labels[i]],
                           'predicted': class_ids[top[i, 0]],
                           'probability': float(predictions['probabilities'][i, 0])}
                          for i in wrong]}, **averages)


def format_report(result, show=10):
    """The report as text: scikit-learn's layout, then the confusions and misclassified files."""
    width = max([len(c['label']) for c in result['per_class']] + [12])
    line = '%*s  %9.4f  %9.4f  %9.4f  %9d'
    lines = ['%*s  %9s  %9s  %9s  %9s' % (width, '', 'precision', 'recall', 'f1-score',
                                          'support'), '']
    lines += [line % (width, c['label'], c['precision'], c['recall'], c['f1'], c['support'])
              for c in result['per_class']]
    lines += ['', '%*s  %9s  %9s  %9.4f  %9d' % (width, 'accuracy', '', '', result['top1'],
                                                 result['num_examples'])]
    for name in ('macro_avg', 'weighted_avg'):
        if name in result:
            a = result[name]
            lines.append(line % (width, name.replace('_', ' '), a['precision'], a['recall'],
                                 a['f1'], a['support']))
    lines += ['', 'top-1 accuracy %.4f   top-%d accuracy %.4f   (%d images%s)'
              % (result['top1'], result['k'], result['top5'], result['num_examples'],
                 '' if result.get('tta', 'none') == 'none' else
                 ', test-time augmentation: %s' % result['tta'])]
    if result['most_confused']:
        lines += ['', 'most confused (true -> predicted: images):']
        lines += ['  %s -> %s: %d' % (c['true'], c['predicted'], c['count'])
                  for c in result['most_confused'][:show]]
    wrong = result['misclassified']
    if wrong:
        lines += ['', 'misclassified: %d of %d images%s' % (
            len(wrong), result['num_examples'],
            ', the first %d:' % show if len(wrong) > show else ':')]
        lines += ['  %s  %s -> %s (%.2f)' % (w['image'], w['true'], w['predicted'],
                                             w['probability']) for w in wrong[:show]]
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Pictures: the confusion matrix, and the training curves read back from the event files.

def _pyplot():
    import matplotlib
    matplotlib.use('Agg')  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def confusion_png(matrix, names, title=''):
    """The confusion matrix as a PNG (bytes): each row shaded by its share of that true class,
    with a colour scale, and the counts in the cells up to 40 classes."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(5 + 0.35 * len(names), 30)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    shades = axes.imshow(matrix / rows, cmap='Blues', vmin=0, vmax=1)
    figure.colorbar(shades, ax=axes, fraction=0.046, pad=0.04, label='share of the true class')
    axes.set_title(title, fontsize=11)
    axes.set_xlabel('predicted class')
    axes.set_ylabel('true class')
    if len(names) <= 50:  # beyond that the names overlap: the CSV has them
        axes.set_xticks(range(len(names)), names, rotation=90, fontsize=9)
        axes.set_yticks(range(len(names)), names, fontsize=9)
    if len(names) <= 40:
        for (t, p), count in np.ndenumerate(matrix):
            if count:
                axes.text(p, t, str(count), ha='center', va='center',
                          fontsize=10 if len(names) <= 20 else 8,
                          color='white' if count / rows[t, 0] > 0.5 else 'black')
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_outputs(result, directory, step):
    """confusion_matrix.csv/.png, misclassified.csv, report.json and the confusion matrix as a
    TensorBoard image (at `step`) in `directory`."""
    os.makedirs(directory, exist_ok=True)
    ids = [c['class'] for c in result['per_class']]
    with open(os.path.join(directory, 'confusion_matrix.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['true \\ predicted'] + ids)
        writer.writerows([i] + row for i, row in zip(ids, result['confusion_matrix']))
    with open(os.path.join(directory, 'misclassified.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['image', 'true', 'predicted', 'probability'])
        writer.writerows([w['image'], w['true'], w['predicted'], '%.4f' % w['probability']]
                         for w in result['misclassified'])
    with open(os.path.join(directory, 'report.json'), 'w') as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    png = confusion_png(result['confusion_matrix'], [c['label'] for c in result['per_class']],
                        '%s, step %s: accuracy %.4f on %d images' % (
                            result.get('checkpoint', directory), step, result['top1'],
                            result['num_examples']))
    with open(os.path.join(directory, 'confusion_matrix.png'), 'wb') as f:
        f.write(png)
    height, width = _png_size(png)
    writer = tf.summary.FileWriter(directory)
    writer.add_summary(tf.Summary(value=[tf.Summary.Value(
        tag='confusion_matrix', image=tf.Summary.Image(
            height=height, width=width, colorspace=4, encoded_image_string=png))]), step)
    writer.close()


def _png_size(png):
    return int.from_bytes(png[20:24], 'big'), int.from_bytes(png[16:20], 'big')


def read_scalars(directory, tags):
    """{tag: (steps, values)} from the event files directly in `directory`. A step written twice
    (a resumed run redoes the steps after its last checkpoint) keeps the newest value."""
    points = {tag: {} for tag in tags}
    level = tf.get_logger().level
    tf.get_logger().setLevel(logging.ERROR)  # summary_iterator's deprecation notice is not news
    for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
        try:
            for event in tf.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag in points:
                        old = points[value.tag].get(event.step)
                        if old is None or old[0] <= event.wall_time:
                            points[value.tag][event.step] = (event.wall_time, value.simple_value)
        except tf.errors.DataLossError:
            continue  # a file cut off while being written: keep what came before the cut
    tf.get_logger().setLevel(level)
    return {tag: (sorted(p), [p[s][1] for s in sorted(p)]) for tag, p in points.items() if p}


CURVES = (('loss', ('loss', 'total_loss')),
          ('learning rate', ('learning_rate',)),
          ('accuracy', ('train_accuracy', 'accuracy', 'accuracy_top5')))


def plot_curves(checkpoint_dir):
    """Loss, learning rate and accuracy over the steps, as <checkpoint_dir>/curves.png; returns
    its path, or None when the event files hold no scalars yet."""
    scalars = read_scalars(checkpoint_dir, [tag for _, tags in CURVES for tag in tags])
    if not scalars:
        return None
    try:
        settings = rundir.load_settings(checkpoint_dir)
    except rundir.SettingsError:
        settings = None
    if settings and len(settings['class_ids']) <= TOP_K:
        scalars.pop('accuracy_top5', None)  # top-5 of 5 classes or fewer is always 1
    plt = _pyplot()
    figure, panels = plt.subplots(len(CURVES), 1, figsize=(8, 9), sharex=True)
    for axes, (title, tags) in zip(panels, CURVES):
        for tag in tags:
            if tag in scalars:
                steps, values = scalars[tag]
                axes.plot(steps, values, marker='o' if len(steps) < 30 else None,
                          label=tag.replace('_', ' ').replace('top5', 'top-%d' % TOP_K))
        axes.set_ylabel(title)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(loc='best', fontsize=8)
    panels[-1].set_xlabel('step')
    figure.suptitle(os.path.basename(os.path.normpath(checkpoint_dir)))
    figure.tight_layout()
    path = os.path.join(checkpoint_dir, rundir.CURVES_FILE)
    figure.savefig(path + '.tmp.png', dpi=100)
    plt.close(figure)
    os.replace(path + '.tmp.png', path)
    return path


# ---------------------------------------------------------------------------------------------
# The command.

def parse_args(argv=None):
    p = cli.ArgumentParser(description='Evaluate a trained VGG19 on a dataset split.')
    rundir.add_checkpoint_flags(p)
    p.add_argument('--dataset', default=None,
                   help='dataset root (default: the one the model was trained on)')
    p.add_argument('--split', choices=('validation', 'train'), default='validation')
    p.add_argument('--batch-size', type=int, default=128,
                   help='network inputs per batch: images, or with --tta their views')
    p.add_argument('--tta', choices=data.TTA_MODES, default='none',
                   help='test-time augmentation: the probabilities averaged over the central '
                        'crop and its mirror image (flip), or over 10 crops (10crop)')
    p.add_argument('--output-dir', default=None,
                   help='where the CSVs, PNG and TensorBoard image go '
                        '(default: <checkpoint-dir>/eval/<split>)')
    p.add_argument('--show', type=int, default=10,
                   help='confused pairs and misclassified files printed (all are in the CSVs)')
    p.add_argument('--json', action='store_true',
                   help='print the whole report as one JSON object instead of text')
    p.add_argument('--explain', action='store_true',
                   help='write the heat map of the predicted class (Grad-CAM) of each '
                        'misclassified image into <output-dir>/explain/<its name>.png')
    p.add_argument('--curves', action='store_true',
                   help='only draw <checkpoint-dir>/curves.png from the training event files')
    hardware.add_flags(p)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.show < 0:
        p.error('--batch-size must be at least 1 and --show at least 0')
    return args


def evaluate(args):
    """Run the evaluation that `args` asks for; returns the report (a dict)."""
    settings, checkpoint = rundir.trained_model(args.checkpoint_dir, args.checkpoint)
    root = args.dataset or settings.get('dataset')
    if not root or not os.path.isdir(root):
        raise data.DatasetError('dataset %s not found: pass --dataset' % root)
    dataset = data.load_dataset(root, settings.get('val_fraction', 0.2), settings.get('seed', 0))
    if dataset.class_ids != settings['class_ids']:
        raise data.DatasetError('%s has other classes than the model in %s was trained on'
                                % (root, args.checkpoint_dir))
    # Training's record of undecodable files holds for its own dataset only.
    same = os.path.abspath(root) == settings.get('dataset')
    dataset = data.drop_unreadable(
        dataset, os.path.join(args.checkpoint_dir, rundir.UNREADABLE_FILE) if same else None)
    split = getattr(dataset, args.split)
    if not split.paths:
        raise data.DatasetError('the %s split of %s is empty' % (args.split, root))
    precision = hardware.resolve_precision(args.precision, training=False)
    with tf.Graph().as_default():
        evaluation = build(split, settings, args.batch_size, tta=args.tta)
        saver = tf.train.Saver(slim.get_model_variables())
        with tf.Session(config=hardware.session_config(precision, args.xla)) as session:
            rundir.restore(saver, session, checkpoint)
            log.info('evaluating %s on %d %s images of %s%s', checkpoint, len(split.paths),
                     args.split, root, '' if args.tta == 'none' else ', test-time augmentation '
                     '%s' % args.tta)
            started = time.time()
            predictions = predict(session, evaluation, len(split.paths))
            seconds = time.time() - started
    result = report(predictions, settings['class_ids'], settings['class_names'])
    step = _step(checkpoint)
    result.update(checkpoint=checkpoint, step=step, split=args.split, dataset=root,
                  precision=precision, tta=args.tta,
                  ms_per_image=1000 * seconds / max(result['num_examples'], 1))
    output = args.output_dir or os.path.join(args.checkpoint_dir, rundir.EVAL_DIR, args.split)
    write_outputs(result, output, step)
    log.info('wrote confusion_matrix.csv/.png, misclassified.csv, report.json and a TensorBoard '
             'image into %s', output)
    result['output_dir'] = output
    return result


def explain_mistakes(args, result):
    """The Grad-CAM picture of each misclassified image of `result`, for the class it was taken
    for, into <output-dir>/explain/ (evaluate.py --explain)."""
    directory, taken = os.path.join(result['output_dir'], 'explain'), set()
    os.makedirs(directory, exist_ok=True)
    explainer = explain.Explainer(rundir.load_settings(args.checkpoint_dir), result['checkpoint'],
                                  result['precision'], args.xla)
    for wrong in result['misclassified']:
        explainer.write(explainer.preprocess(explain.read(wrong['image'])),
                        explain.picture_path(directory, wrong['image'], taken),
                        explainer.settings['class_ids'].index(wrong['predicted']))
    log.info('wrote the heat maps of %d misclassified images into %s',
             len(result['misclassified']), directory)


def _step(checkpoint):
    try:
        return int(tf.train.load_checkpoint(checkpoint).get_tensor('global_step'))
    except (tf.errors.OpError, ValueError):
        tail = checkpoint.rsplit('-', 1)[-1]
        return int(tail) if tail.isdigit() else 0


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format='%(asctime)s %(message)s', datefmt='%H:%M:%S', level=logging.INFO)
    tf.get_logger().setLevel(logging.ERROR)
    tf.disable_eager_execution()
    try:
        if args.curves:
            path = plot_curves(args.checkpoint_dir)
            if path is None:
                raise rundir.SettingsError('%s holds no training event files yet'
                                           % args.checkpoint_dir)
            print(path)
            return 0
        result = evaluate(args)
    except (data.DatasetError, rundir.SettingsError, hardware.HardwareError) as e:
        print('evaluate.py: error: %s' % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('evaluate.py: interrupted', file=sys.stderr)
        return 130
    print(json.dumps(result, ensure_ascii=False) if args.json else format_report(result,
                                                                                 args.show))
    if args.explain and result['misclassified']:
        sys.stdout.flush()
        try:
            explain_mistakes(args, result)
        except (OSError, ValueError, rundir.SettingsError) as e:
            print('evaluate.py: error: --explain: %s' % model.error_line(e), file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
