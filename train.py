"""Fine-tune VGG19 on a folder of labelled photos.

    python train.py                      # the recipe: Food-101 from the ImageNet checkpoint
    python train.py --demo               # the embedded default: no download needed
    tensorboard --logdir checkpoints/

Reads top to bottom: flags, schedules and the loss, the hooks, then the run in the order it
happens (set_up_machine, open_run, build_input, build_towers, build_stages, build_hooks,
open_session, and _train's loop). Checkpoints, event files and settings.json (classes, image
size, preprocessing) land in --checkpoint-dir; running the same command again resumes from the
newest checkpoint, in the stage and at the point of the learning-rate schedule where it stopped.
The weights with the best validation accuracy are kept in --checkpoint-dir/best; curves.png
(loss, learning rate, accuracy) is drawn when a run ends.
"""
import contextlib
import functools
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import types

import hardware  # first: it imports TensorFlow without the C++ start-up chatter

import numpy as np
import tensorflow.compat.v1 as tf
import tf_slim as slim

import cli
import data
import evaluate
import features
import model
import rundir
import parallel

log = logging.getLogger('train')

FOOD101_URL = 'http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz'

# The embedded default. Without downloads there are no ImageNet weights, and a whole VGG19 from
# scratch costs ~7 s a step on 2 cores even at 32 px, so the demo trains the classifier (fc8) of
# a randomly initialised, frozen VGG19: random convolutional features tell these photos apart
# once their scale survives the 18 layers below (He initialisation) and dropout does not drown
# them. It shows the pipeline end to end in minutes, not what fine-tuning ImageNet weights gives.
DEMO = dict(dataset='data/demo', pretrained='none', checkpoint_dir='checkpoints/demo',
            image_size=32, init='he', dropout_keep_prob=1.0, trainable_scopes='vgg_19/fc8',
            epochs=30, batch_size=32, val_batch_size=64, learning_rate=3e-4, validate_every=100,
            save_every_secs=120, keep_checkpoints=1)  # each is the whole model: 559 MB


SCHEDULES = ('polynomial', 'cosine', 'exponential', 'constant')


# Each takes (learning rate, flags, name); the name keeps the head stage's slots apart.
OPTIMIZERS = {
    'momentum': lambda lr, args, name: tf.train.MomentumOptimizer(lr, args.momentum,
                                                                  name=name + 'Momentum'),
    'sgd': lambda lr, args, name: tf.train.GradientDescentOptimizer(lr, name=name + 'SGD'),
    'adam': lambda lr, args, name: tf.train.AdamOptimizer(lr, name=name + 'Adam'),
    'rmsprop': lambda lr, args, name: tf.train.RMSPropOptimizer(lr, decay=0.9, epsilon=1e-7,
                                                                name=name + 'RMSProp'),
}


def parse_args(argv=None):
    p = cli.ArgumentParser(description='Fine-tune VGG19 on labelled photos.')
    g = p.add_argument_group('data', 'the photos and how they are split')
    g.add_argument('--demo', action='store_true',
                   help='train on a small dataset made from scikit-image photos (no download); '
                        'changes the defaults to %s' % DEMO)
    g.add_argument('--dataset', default='data/food-101',
                   help='dataset root: Food-101 layout or one folder per class')
    g.add_argument('--val-fraction', type=float, default=0.2,
                   help='share of each class held out for validation when the dataset has '
                        'no split of its own')
    g.add_argument('--seed', type=int, default=0, help='seed of that split')
    g.add_argument('--image-size', type=int, default=model.DEFAULT_IMAGE_SIZE,
                   help='square input size in pixels; 224 is the network as published')
    g.add_argument('--max-unreadable', type=float, default=0.1,
                   help='share of the dataset that may be unusable (undecodable or too large '
                        'images, left out and listed) before the run refuses to start')
    g = p.add_argument_group('model', 'where the weights start and what trains')
    g.add_argument('--pretrained', default='data/vgg_19.ckpt',
                   help="TF-slim VGG19 checkpoint to start from, or 'none' to train from scratch")
    g.add_argument('--exclude-scopes', default=model.HEAD_SCOPE,
                   help='comma-separated variable scopes not restored from --pretrained')
    g.add_argument('--init', choices=['auto'] + sorted(model.INITIALIZERS), default='auto',
                   help='initial weights of what --pretrained does not restore; auto: he with '
                        '--pretrained none (xavier left 19 ReLU layers at chance), else xavier')
    g.add_argument('--trainable-scopes', default='',
                   help='comma-separated variable scopes to train (default: all); e.g. '
                        'vgg_19/fc6,vgg_19/fc7,vgg_19/fc8 to keep the convolutions as they are')
    g.add_argument('--head-steps', type=int, default=0,
                   help='first train only the head (the --exclude-scopes) for this many steps, '
                        'at --head-learning-rate, then --trainable-scopes on the main schedule')
    g.add_argument('--head-learning-rate', type=float, default=1e-2,
                   help='constant learning rate of the --head-steps')
    g.add_argument('--dropout-keep-prob', type=float, default=0.5,
                   help='share of fc6/fc7 activations kept by dropout in training')
    g.add_argument('--weight-decay', type=float, default=model.WEIGHT_DECAY,
                   help="L2 penalty on the network's weights, as slim's vgg_arg_scope")
    g.add_argument('--label-smoothing', type=float, default=0.0,
                   help='share of each target spread evenly over all classes')
    g.add_argument('--class-weights', choices=('none', 'balanced'), default='none',
                   help='balanced: weigh each image by 1 / its class size, for imbalanced data')
    g = p.add_argument_group('schedule', 'how long, how fast')
    g.add_argument('--epochs', type=float, default=20,
                   help='passes over the training images (fractions allowed)')
    g.add_argument('--max-steps', type=int, default=0, help='cap on the step count (0: none)')
    g.add_argument('--batch-size', type=int, default=64,
                   help='images per step, over all towers of this machine')
    g.add_argument('--learning-rate', type=float, default=1e-3,
                   help='learning rate at the start of the main schedule')
    g.add_argument('--schedule', choices=SCHEDULES, default='polynomial',
                   help='how the learning rate goes from --learning-rate to --end-learning-rate '
                        'over the steps after the head stage')
    g.add_argument('--end-learning-rate', type=float, default=1e-7,
                   help='where the schedule ends, at the last step')
    g.add_argument('--decay-power', type=float, default=1.0, help='of the polynomial schedule')
    g.add_argument('--warmup-steps', type=int, default=0,
                   help='steps of linear warm-up at the start of the main schedule')
    g.add_argument('--optimizer', choices=sorted(OPTIMIZERS), default='momentum',
                   help='the update rule of the main schedule and the head stage')
    g.add_argument('--momentum', type=float, default=0.9, help='for --optimizer momentum')
    g = p.add_argument_group('feature cache', 'the frozen layers computed once per image view')
    g.add_argument('--feature-cache', choices=features.MODES, default='auto',
                   help='compute the frozen layers below the first trainable one once per '
                        'image view and train the rest from the stored features; auto: when '
                        'the run reads at least --cache-views epochs (see features.py)')
    g.add_argument('--cache-views', type=int, default=2,
                   help='augmented views of each training image in the feature cache, each '
                        'a forward pass over them; as many as the epochs give each epoch new '
                        'crops, as without the cache')
    g.add_argument('--cache-dir', default='',
                   help='where feature caches live (default: feature-cache beside '
                        '--checkpoint-dir); delete it to free the disk')
    g = p.add_argument_group('checkpoints and progress',
                             'what is written into --checkpoint-dir, and when')
    g.add_argument('--checkpoint-dir', default=rundir.DEFAULT_CHECKPOINT_DIR,
                   help='where checkpoints, TensorBoard events and settings.json go')
    g.add_argument('--validate-every', type=int, default=500,
                   help='steps between validations (also run at the end; 0: only at the end)')
    g.add_argument('--val-batch-size', type=int, default=128,
                   help='images per batch of the validation passes')
    g.add_argument('--early-stopping', type=int, default=0, metavar='K',
                   help='stop after K validations without a better accuracy (0: never)')
    g.add_argument('--save-every-secs', type=int, default=600, help='seconds between checkpoints')
    g.add_argument('--save-every-steps', type=int, default=0,
                   help='steps between checkpoints instead of --save-every-secs (0: by time)')
    g.add_argument('--keep-checkpoints', type=int, default=5,
                   help='how many of the newest checkpoints are kept')
    g.add_argument('--summary-every', type=int, default=30,
                   help='steps between TensorBoard summaries (the points of curves.png)')
    g.add_argument('--log-every', type=int, default=10, help='steps between log lines')
    hardware.add_flags(p.add_argument_group('machine', 'precision and compilation'))
    add_parallel_flags(p.add_argument_group(
        'scale out', 'towers on several devices, or a cluster of machines'))
    args = p.parse_args(argv)
    if args.demo:
        p.set_defaults(**DEMO)
        args = p.parse_args(argv)  # flags given on the command line still win
    if args.init == 'auto':
        args.init = 'he' if args.pretrained == 'none' else 'xavier'
    args.cache_dir = args.cache_dir or os.path.join(
        os.path.dirname(os.path.normpath(args.checkpoint_dir)), 'feature-cache')
    for flag in ('image_size', 'batch_size', 'val_batch_size', 'log_every', 'summary_every',
                 'save_every_secs', 'keep_checkpoints', 'cache_views'):
        if getattr(args, flag) < 1:
            p.error('--%s must be at least 1' % flag.replace('_', '-'))
    for flag in ('head_steps', 'warmup_steps', 'early_stopping', 'validate_every', 'max_steps',
                 'save_every_steps'):
        if getattr(args, flag) < 0:
            p.error('--%s must not be negative' % flag.replace('_', '-'))
    if min(args.epochs, args.learning_rate, args.head_learning_rate) <= 0:
        p.error('--epochs, --learning-rate and --head-learning-rate must be positive')
    if args.end_learning_rate < 0 or (args.schedule == 'exponential'
                                      and not args.end_learning_rate):
        p.error('--end-learning-rate must be positive for --schedule exponential, and not '
                'negative for the others')
    if not 0 <= args.label_smoothing < 1:
        p.error('--label-smoothing must be in [0, 1)')
    if args.early_stopping and not args.validate_every:
        p.error('--early-stopping needs --validate-every')
    if args.head_steps and not cli.comma_list(args.exclude_scopes):
        p.error('--head-steps trains the head, the --exclude-scopes: name them')
    if args.head_steps and args.max_steps and args.max_steps <= args.head_steps:
        p.error('--max-steps must be larger than --head-steps, or no step trains the rest')
    try:
        model.fc_options(args.image_size)  # the network's own rule for the image size
    except ValueError as e:
        p.error(str(e))
    if not 0 < args.val_fraction < 1:
        p.error('--val-fraction must be between 0 and 1')
    if not 0 <= args.max_unreadable <= 1:
        p.error('--max-unreadable must be between 0 and 1')
    check_parallel_flags(p, args)
    return args


def add_parallel_flags(p):
    """Towers on several devices, and the cluster (see parallel.py)."""
    p.add_argument('--num-gpus', type=int, default=None,
                   help='towers on GPUs 0..N-1 of this machine, the batch split between them '
                        '(default: all visible GPUs; one tower on the CPU without any)')
    p.add_argument('--devices', default='',
                   help='comma-separated devices of the towers instead, e.g. /cpu:0,/cpu:1 '
                        '(logical CPU devices are made for them, to try towers without GPUs)')
    p.add_argument('--ps-hosts', default='', help='cluster: comma-separated host:port of the '
                                                  'parameter servers (or TF_CONFIG)')
    p.add_argument('--worker-hosts', default='', help='cluster: host:port of the workers; the '
                                                      'first is the chief')
    p.add_argument('--job-name', choices=('ps', 'worker'), default=None,
                   help="cluster: this process's job")
    p.add_argument('--task-index', type=int, default=0, help="cluster: this process's index in "
                                                             "its job")
    p.add_argument('--sync-replicas', action='store_true',
                   help='cluster: synchronous updates, each averaging as many batches as there '
                        'are workers (default: each worker updates on its own)')


def check_parallel_flags(p, args):
    """args.task: this process's task in the cluster (None: no cluster), from the flags or
    TF_CONFIG; conflicting or impossible settings are usage errors."""
    try:
        args.task = parallel.task_from(args, os.environ.get('TF_CONFIG'))
    except parallel.ClusterError as e:
        p.error(str(e))
    if args.num_gpus is not None and args.num_gpus < 1:
        p.error('--num-gpus must be at least 1')
    if args.num_gpus is not None and args.devices:
        p.error('--num-gpus and --devices both name the towers: give one')
    if args.sync_replicas and args.task is None:
        p.error('--sync-replicas needs a cluster: TF_CONFIG or --ps-hosts/--worker-hosts')
    if args.sync_replicas and args.head_steps:
        p.error('--sync-replicas does not go with --head-steps: train the stages in two runs')


def total_steps(num_examples, batch_size, epochs, max_steps=0):
    """Steps for `epochs` passes over the data in full batches, capped at `max_steps` if set."""
    steps = int(math.ceil(epochs * (num_examples // batch_size)))
    return min(steps, max_steps) if max_steps else steps


def planned_steps(args, num_train, previous=None, workers=1):
    """The plan of the run: the step it ends at (--head-steps, then --epochs of full batches,
    capped by --max-steps; a step takes a batch from each of `workers`) and what it was
    computed from. The plan of the first start (in `previous` settings) is kept while these
    stay the same, even if the count of readable images changed since, so a restart never
    moves the end of the schedule."""
    plan = {'epochs': args.epochs, 'batch_size': args.batch_size, 'max_steps': args.max_steps,
            'head_steps': args.head_steps, 'workers': workers}
    old = (previous or {}).get('plan')
    if old and {key: old.get(key) for key in plan} == plan:
        if old.get('train_images') != num_train:
            log.info('keeping the %d steps planned at the first start (for %s training images, '
                     'now %d)', old['last_step'], old.get('train_images'), num_train)
        return old
    steps = args.head_steps + total_steps(num_train, args.batch_size * workers, args.epochs)
    return dict(plan, last_step=min(steps, args.max_steps) if args.max_steps else steps,
                train_images=num_train)


def learning_rate_at(step, steps, base, schedule='polynomial', end=1e-7, power=1.0,
                     warmup_steps=0):
    """The learning rate at `step` of `steps`: from `base` at step 0 to `end` at `steps` along
    `schedule` (constant stays at `base`), times a linear warm-up over the first `warmup_steps`.

    The training loop feeds exactly this number to the graph, step by step.
    """
    t = min(max(step, 0), steps) / max(steps, 1)
    if schedule == 'polynomial':
        rate = (base - end) * (1 - t) ** power + end
    elif schedule == 'cosine':
        rate = end + (base - end) * (1 + math.cos(math.pi * t)) / 2
    elif schedule == 'exponential':
        rate = base * (end / base) ** t
    elif schedule == 'constant':
        rate = base
    else:
        raise ValueError('unknown schedule %r' % schedule)
    if step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


def stage_at(step, args, last_step):
    """('head', rate) during the --head-steps, then ('main', rate) on the main schedule, which
    starts at the first step after the head stage and ends at `last_step`."""
    if step < args.head_steps:
        return 'head', args.head_learning_rate
    return 'main', learning_rate_at(step - args.head_steps, last_step - args.head_steps,
                                    args.learning_rate, args.schedule, args.end_learning_rate,
                                    args.decay_power, args.warmup_steps)


def network(images, settings, reuse=None, start=None, **options):
    """The network as training runs it: (logits, end_points); `start`: `images` are the stored
    features of that end point (features.py); `options`: weight_decay, init, dropout_keep_prob
    (network_options(args); model.classifier's, slim's, where not given)."""
    return model.classifier(images, settings, is_training=True, reuse=reuse, start=start,
                            **options)


def network_options(args):
    """What of the flags `network` takes."""
    return dict(weight_decay=args.weight_decay, init=args.init,
                dropout_keep_prob=args.dropout_keep_prob)


def tower_loss(images, labels, settings, label_smoothing=0.0, weights_by_class=None,
               reuse=None, start=None, trained_scopes=None, **options):
    """The model and its loss on one tower's images (or stored features from `start`): a dict of
    logits, loss (cross entropy, smoothed and weighted by class as asked), total_loss (plus the
    weight decay of the variables in `trained_scopes`, None: all) and train_accuracy.
    `options`: as `network` takes them.

    Every tower's total_loss holds the whole weight decay (one collection, shared variables),
    so the average over the towers is the loss, and the gradient, of the whole batch. A frozen
    weight's decay is a constant that moves nothing, and costs a pass over the weight every step
    (23 of 26 ms of an fc8-only step on stored features): left out.
    """
    # An fc6 that no stage trains takes no gradient of its weights: the cheaper form on a small
    # map (model._taps_on_map).
    frozen = () if trained_scopes is None or model.in_scopes('vgg_19/fc6/weights',
                                                             trained_scopes) else ('fc6',)
    logits, _ = network(images, settings, reuse, start, frozen=frozen, **options)
    weights = 1.0
    if weights_by_class is not None:
        weights = tf.gather(tf.constant(weights_by_class, tf.float32), labels)
    loss = tf.losses.softmax_cross_entropy(tf.one_hot(labels, len(settings['class_ids'])),
                                           logits, weights=weights,
                                           label_smoothing=label_smoothing)
    decay = [d for d in tf.losses.get_regularization_losses() if trained_scopes is None
             or model.in_scopes(d.op.name, trained_scopes)]  # named after their variable
    total_loss = tf.add_n([loss] + decay)
    train_accuracy = tf.reduce_mean(tf.cast(
        tf.equal(tf.argmax(logits, 1, output_type=tf.int32), labels), tf.float32))
    return {'logits': logits, 'loss': loss, 'total_loss': total_loss,
            'train_accuracy': train_accuracy}


def class_weights(labels, num_classes):
    """'balanced' weights: images / (classes present * images of the class), as scikit-learn's
    compute_class_weight; 0 for a class without images."""
    counts = np.bincount(labels, minlength=num_classes)
    present = max(np.count_nonzero(counts), 1)
    return np.where(counts > 0, len(labels) / (present * np.maximum(counts, 1)), 0.0)


def check_inputs(args):
    """Turn a missing dataset into one line that says how to get it."""
    if not os.path.isdir(args.dataset):
        hint = ('download and unpack %s so that %s/images and %s/meta exist'
                % (FOOD101_URL, args.dataset, args.dataset)
                if args.dataset == 'data/food-101' else
                'point --dataset at a Food-101 root or a folder with one subfolder per class')
        raise data.DatasetError('dataset %s not found: %s (or try --demo)' % (args.dataset, hint))


def run_settings(args, dataset, previous):
    """The settings record of this run; a resumed run must match the one it continues."""
    settings = dict(rundir.model_settings(dataset.class_ids, dataset.class_names,
                                          args.image_size),
                    dataset=os.path.abspath(args.dataset), layout=dataset.layout,
                    val_fraction=args.val_fraction, seed=args.seed, head_steps=args.head_steps)
    if previous is not None:
        # The architecture follows from the image size, so comparing that covers it. The layout
        # names a generated split's share and seed: another split would validate on images
        # the model trained on. Keys a run of an older version did not record are not compared.
        for key, what in (('class_ids', 'classes'), ('image_size', 'image size'),
                          ('preprocessing', 'preprocessing'), ('layout', 'split'),
                          ('head_steps', '--head-steps')):
            if previous.get(key, settings[key]) != settings[key]:
                raise rundir.SettingsError(
                    '%s holds a model trained with other %s (%s) than this run (%s): use a new '
                    '--checkpoint-dir' % (args.checkpoint_dir, what, _short(previous[key]),
                                          _short(settings[key])))
    return settings


def _short(value):
    text = str(value)
    return text if len(text) < 80 else text[:77] + '...'


def time_left(step, last_step, seconds_a_step, validate_every=0, seconds_a_validation=0.0):
    """Seconds from `step` to the end of the run: the steps still to go at the measured pace,
    and the validations still to come (every `validate_every` steps, and one at the end)."""
    validations = last_step // validate_every - step // validate_every if validate_every else 0
    if not validate_every or last_step % validate_every:
        validations += 1
    return max(last_step - step, 0) * seconds_a_step + validations * seconds_a_validation


def clock(seconds):
    """'1h02m', '3m05s' or '42s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return '%dh%02dm' % divmod(seconds // 60, 60)
    return '%dm%02ds' % divmod(seconds, 60) if seconds >= 60 else '%ds' % seconds


def of_stage(run_context, by_stage):
    """What `by_stage` ([(the loop's fetch of a stage (train_ops), what)]) holds for the stage
    this run steps, for a hook's before_run: [what], or [] for a run of something else."""
    fetch = step_after_update(run_context)
    return [what for f, what in by_stage if f is fetch]


class LoggingHook(tf.train.SessionRunHook):
    """Every `every` steps: step/total, loss, batch accuracy, learning rate, images/s, time left.
    `scalars`: [(a stage's fetch, {loss, total_loss, train_accuracy, learning_rate})]. The pace
    leaves out the time of `validation`'s passes, and the time left counts them."""

    def __init__(self, scalars, last_step, batch_size, every, validation=None):
        self._scalars, self._last_step = scalars, last_step
        self._batch_size, self._every = batch_size, every
        self._validation = validation
        self._mark = None

    def before_run(self, run_context):
        return tf.train.SessionRunArgs({'step': step_after_update(run_context),
                                        'values': of_stage(run_context, self._scalars)})

    def after_run(self, run_context, run_values):
        step, now = run_values.results['step'], time.time()
        if not run_values.results['values']:
            return
        values = run_values.results['values'][0]
        validation = self._validation
        validating = validation.seconds if validation else 0.0
        if self._mark is None:
            self._mark = (step, now, validating)
        elif step != self._mark[0] and (crossed(self._mark[0], step, self._every)
                                        or step >= self._last_step):
            stepping = max(now - self._mark[1] - (validating - self._mark[2]), 1e-9)
            pace = stepping / (step - self._mark[0])
            left = time_left(step, self._last_step, pace, validation.every if validation else 0,
                             validation.seconds / validation.count
                             if validation and validation.count else 0.0)
            log.info('step %d/%d  loss %.4f  total_loss %.4f  batch accuracy %.2f  lr %.3g  '
                     '%.1f images/s  %s left', step, self._last_step, values['loss'],
                     values['total_loss'], values['train_accuracy'], values['learning_rate'],
                     self._batch_size / pace, clock(left))
            self._mark = (step, now, validating)


class SummaryHook(tf.train.SessionRunHook):
    """TensorBoard's scalars of the stage each step runs (`scalars` as LoggingHook's), at the
    first step and every `every` steps after, at the step after the update: fetched beside the
    step, where a summary op of both stages would pull the input of the other one too."""

    def __init__(self, scalars, every, directory):
        self._scalars, self._every, self._dir = scalars, every, directory
        self._written = None

    def before_run(self, run_context):
        return tf.train.SessionRunArgs({'step': step_after_update(run_context),
                                        'values': of_stage(run_context, self._scalars)})

    def after_run(self, run_context, run_values):
        step, values = run_values.results['step'], run_values.results['values']
        if values and (self._written is None or step >= self._written + self._every):
            tf.summary.FileWriterCache.get(self._dir).add_summary(tf.Summary(value=[
                tf.Summary.Value(tag=tag, simple_value=float(value))
                for tag, value in sorted(values[0].items())]), step)
            self._written = step

    def end(self, session):
        tf.summary.FileWriterCache.get(self._dir).flush()


def step_after_update(run_context):
    """The global step after this run's update, for a hook's before_run: the training loop
    fetches exactly that (train_ops), so asking for the same tensor costs nothing, where
    reading the step again would cost a run of its own (and one fetched beside the update
    could be read before it)."""
    return run_context.original_args.fetches


def crossed(last, step, every):
    """Whether a multiple of `every` lies in (last, step]: a trigger that an asynchronous
    cluster, whose steps this worker sees jump, cannot step over."""
    return bool(every) and step // every > last // every


class ValidationHook(tf.train.SessionRunHook):
    """Top-1 and top-5 accuracy over the whole validation split, every `every` steps and at
    the end, written to TensorBoard as `accuracy` and `accuracy_top5` (of more than 5 classes
    only). A better top-1 than the best so far saves the weights into
    <checkpoint-dir>/best; with `patience`, training stops after that many validations without
    one. `seconds` and `count` add up the passes, for the time left."""

    def __init__(self, evaluation, num_examples, num_classes, every, checkpoint_dir, best_saver,
                 patience=0):
        self._evaluation, self._num_classes = evaluation, num_classes
        self._num_examples, self.every, self._dir = num_examples, every, checkpoint_dir
        self._best_saver, self._patience = best_saver, patience
        self.seconds, self.count = 0.0, 0
        self._done_at = self._last = None

    def begin(self):
        self._step = tf.train.get_global_step()

    def after_create_session(self, session, coord):
        self._last = session.run(self._step)  # a restart validates at the next multiple

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(step_after_update(run_context))

    def after_run(self, run_context, run_values):
        step, last = run_values.results, self._last
        self._last = step
        if crossed(last, step, self.every) and step != self._done_at:
            if self.validate(run_context.session, step):
                run_context.request_stop()

    def end(self, session):
        step = session.run(self._step)
        if step != self._done_at:
            self.validate(session, step)

    def validate(self, session, step):
        """One pass over the validation split; True when training should stop early."""
        start, step = time.time(), int(step)
        predictions = evaluate.predict(session, self._evaluation, self._num_examples)
        accuracy, accuracy5 = evaluate.accuracy(predictions['labels'], predictions['top'])
        seconds = time.time() - start
        self.seconds, self.count = self.seconds + seconds, self.count + 1
        # Top-5 of 5 classes or fewer is always 1: said only where it says something.
        top5 = self._num_classes > evaluate.TOP_K
        log.info('validation at step %d: accuracy %.4f%s  (%d images, %.0f s)', step, accuracy,
                 '  top-5 %.4f' % accuracy5 if top5 else '', len(predictions['labels']),
                 seconds)
        writer = tf.summary.FileWriterCache.get(self._dir)
        writer.add_summary(tf.Summary(value=[tf.Summary.Value(
            tag=tag, simple_value=value) for tag, value in [('accuracy', accuracy)] + (
                [('accuracy_top5', accuracy5)] if top5 else [])]), step)
        writer.flush()
        self._done_at = step
        best = rundir.load_best(self._dir)
        if best is None or accuracy > best['accuracy']:
            rundir.save_best(session, self._best_saver, self._dir,
                             {'step': step, 'accuracy': accuracy, 'accuracy_top5': accuracy5})
            log.info('best accuracy so far: weights kept in %s',
                     os.path.join(self._dir, rundir.BEST_DIR))
            return False
        # The validations since the best, by step: a step redone after a restart counts once.
        since = sorted({s for s in best.get('validated_since', []) + [step] if s > best['step']})
        rundir.write_best_record(self._dir, dict(best, validated_since=since))
        if self._patience and len(since) >= self._patience:
            log.info('early stopping: no better accuracy in %d validations since step %d (%.4f)',
                     len(since), best['step'], best['accuracy'])
            return True
        return False


class CheckpointSaverHook(tf.train.CheckpointSaverHook):
    """TensorFlow's, without the checkpoint it saves as each session starts: that one holds the
    weights the session started from (the pretrained ones, or the checkpoint resumed), again:
    559 MB and 1.6 s on 2 cores for nothing. A run stopped before its first checkpoint starts
    again from the pretrained weights, as before."""

    def after_create_session(self, session, coord):
        self._starting = True  # the graph and the meta graph are still written
        super().after_create_session(session, coord)
        self._starting = False

    def _save(self, session, step):
        return False if self._starting else super()._save(session, step)


class FeedInitializerHook(tf.train.SessionRunHook):
    """Runs an iterator's `initializer` with `feed` in every session made (a session recovered
    after a parameter server failed too), before its first step."""

    def __init__(self, initializer, feed):
        self._initializer, self._feed = initializer, feed

    def after_create_session(self, session, coord):
        session.run(self._initializer, self._feed)


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or weight; nothing of that step was saved."""

    def __init__(self, step):
        super().__init__('the loss or the weights became NaN or infinite at step %d' % step)
        self.step = step


class NanGuardHook(tf.train.SessionRunHook):
    """Stops training with NonFiniteError when the loss, or a weight after the update, is not
    finite. Passed as a chief-only hook, it runs ahead of the checkpoint saver, so such a step
    is never saved (a finite loss with an overflowing update still makes infinite weights).

    `updates`: [(the loop's fetch of a stage (train_ops), its update op, the variables it
    trains, its loss)]. The check of the weights runs in the same run as the update, after it."""

    def __init__(self, updates):
        self._updates = updates

    def begin(self):
        self._checks = []
        for fetch, update, var_list, loss in self._updates:
            sums = []
            for v in var_list:
                # On a parameter server, only the answer travels. A sum is not finite when an
                # element is not, and reads the weights once, with nothing the size of them made.
                with tf.colocate_with(v), tf.control_dependencies([update]):
                    sums.append(tf.reduce_sum(v))
            self._checks.append((fetch, {'loss': loss, 'weights': tf.reduce_all(
                tf.is_finite(tf.stack(sums)))}))

    def before_run(self, run_context):
        return tf.train.SessionRunArgs({'step': step_after_update(run_context),
                                        'checks': of_stage(run_context, self._checks)})

    def after_run(self, run_context, run_values):
        for check in run_values.results['checks']:
            if not (np.isfinite(check['loss']) and check['weights']):
                raise NonFiniteError(run_values.results['step'])


def recover(checkpoint_dir):
    """The checkpoint to resume from (rundir.recover_checkpoints), each repair logged."""
    latest, problems = rundir.recover_checkpoints(checkpoint_dir)
    for problem in problems:
        log.warning('checkpoint start-up check: %s', problem)
    return latest


def train(args, extra_hooks=()):
    """Train as `args` say; `extra_hooks`: more SessionRunHooks, for a program embedding this
    (a hook's begin() makes no global variable: from --pretrained, the random initial values are
    drawn for the variables that exist when the hooks are made, model.initialized_elsewhere).
    In a cluster (args.task), the variables live on the parameter servers."""
    with tf.device(parallel.trainer_device_setter(args.task)):
        _train(args, extra_hooks)


def set_up_machine(args):
    """What this process trains on: whether it is the chief, its devices (one tower each), the
    precision, the session configuration, and in a cluster its server."""
    chief = parallel.is_chief(args.task)
    gpus = hardware.gpu_capabilities()
    devices = parallel.tower_devices(args.num_gpus, args.devices, args.batch_size, len(gpus))
    precision = hardware.resolve_precision(args.precision, gpus, cluster=args.task is not None)
    config = parallel.session_config(args.task, devices,
                                     hardware.session_config(precision, args.xla))
    server = parallel.start_server(args.task, config) if args.task else None
    return types.SimpleNamespace(chief=chief, devices=devices, precision=precision,
                                 config=config, server=server)


def open_run(args, machine):
    """The run directory made ready, before any graph: the newest usable checkpoint (repaired
    by the chief), the dataset with its unreadable images left out, the settings record and the
    plan written, the pretrained checkpoint checked, a stale best/ set aside."""
    chief = machine.chief
    if args.demo and not os.path.isdir(args.dataset):
        import demo
        log.info('making the demo dataset in %s, and sample images in %s-samples',
                 args.dataset, args.dataset)
        demo.make_dataset(args.dataset)
        demo.make_samples(args.dataset + '-samples')
    # Only the chief repairs the checkpoint directory; the others read what it left.
    latest = recover(args.checkpoint_dir) if chief else tf.train.latest_checkpoint(
        args.checkpoint_dir)
    check_inputs(args)
    dataset = data.load_dataset(args.dataset, args.val_fraction, args.seed)
    # The pretrained checkpoint is read back whole before the image check and before any graph
    # is built, so a broken download ends in one line saying what to do, not in the restore.
    init_fn, restored = None, {}
    if chief and not latest and args.pretrained != 'none':
        restored = model.vgg19_variables(len(dataset.class_ids),
                                         cli.comma_list(args.exclude_scopes))
        init_fn = model.pretrained_init_fn(args.pretrained, restored)
    if chief:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
    # The image check's cache is the chief's to write; the other workers reuse it when it
    # describes their copy of the dataset, and check that themselves otherwise.
    dataset = data.drop_unreadable(
        dataset, cache_file=os.path.join(args.checkpoint_dir, rundir.UNREADABLE_FILE),
        max_share=args.max_unreadable, write_cache=chief,
        resize_side=data.resize_side_range(args.image_size)[0])  # validation's resize
    data.check_classes(dataset)
    # Settings left by a run that never saved a checkpoint describe no model: replace them.
    previous = rundir.load_settings(args.checkpoint_dir) if latest else None
    settings = run_settings(args, dataset, previous)
    num_train, num_val = len(dataset.train.paths), len(dataset.validation.paths)
    if num_train < args.batch_size:
        raise data.DatasetError('--batch-size %d is larger than the %d training images of %s'
                                % (args.batch_size, num_train, args.dataset))
    # A synchronous step takes a batch from every worker: the same epochs in fewer steps.
    settings['plan'] = planned_steps(args, num_train, previous, parallel.num_trainers(
        args.task) if args.sync_replicas else 1)
    if chief:
        rundir.save_settings(args.checkpoint_dir, settings)
    best_dir = os.path.join(args.checkpoint_dir, rundir.BEST_DIR)
    if chief and not latest and os.path.isdir(best_dir):
        # The best of a model whose checkpoints are gone is not this run's: keep it aside.
        shutil.rmtree(best_dir + '.previous', ignore_errors=True)
        os.replace(best_dir, best_dir + '.previous')
        log.warning('%s belonged to an earlier model: moved to %s.previous', best_dir, best_dir)
    run = types.SimpleNamespace(
        dataset=dataset, settings=settings, latest=latest, init_fn=init_fn, restored=restored,
        num_classes=len(dataset.class_ids), num_val=num_val, last_step=settings['plan'][
            'last_step'], start_step=int(latest.rsplit('-', 1)[-1]) if latest else 0,
        step_images=args.batch_size * settings['plan']['workers'])
    log.info('dataset %s (%s): %d classes, %d training and %d validation images; %d steps of %d',
             args.dataset, dataset.layout, run.num_classes, num_train, num_val, run.last_step,
             run.step_images)
    if len(machine.devices) > 1 or args.task:
        log.info('%s%d tower(s) of %d images (%s)', '%s:%d of %s: ' % (
            args.task.job, args.task.index, args.task.cluster) if args.task else '',
            len(machine.devices), args.batch_size // len(machine.devices),
            ', '.join(d or 'default device' for d in machine.devices))
    return run


def build_input(args, machine, run):
    """What each stage reads, by `reads_cache[stage]`: the feature cache's stored features
    (`batches[True]`, from `cache`) or images (`batches[False]`, from `iterator`, its file list
    fed by `feed`); and `inputs_summary`, the images the network is fed."""
    # The frozen layers below the first trainable one (of the head stage, with --head-steps)
    # run once per stored view, not every step, where that pays (features.py).
    first = cli.comma_list(args.exclude_scopes) if args.head_steps else cli.comma_list(
        args.trainable_scopes)
    point = features.boundary([name for name in model.vgg19_variables(run.num_classes)
                               if not first or model.in_scopes(name, first)])
    cached, why = features.decide(
        args.feature_cache, point, len(machine.devices), bool(args.task),
        ((args.head_steps or run.last_step) - run.start_step) * run.step_images,
        len(run.dataset.train.paths), args.cache_views,
        after_head=bool(args.head_steps) and run.start_step >= args.head_steps)
    log.info('feature cache: %s (%s)', 'on, from %s up%s' % (
        point, ' in the head stage' if args.head_steps else '') if cached else 'off', why)
    source = types.SimpleNamespace(point=point, cache=None, batches={}, iterator=None,
                                   reads_cache={'main': cached and not args.head_steps})
    if args.head_steps:
        source.reads_cache['head'] = cached
    settings, dataset = run.settings, run.dataset
    if cached:
        source.cache = features.Cache(
            dataset.train, dataset.validation, point, lambda images, is_training, frozen: (
                network(images, settings, frozen=frozen, **network_options(args))
                if is_training else
                model.classifier(images, settings, is_training=False, reuse=True))[1],
            settings['global_pool'], dict(  # and fc6's dropout, where it lies below
                image_size=args.image_size, precision=machine.precision,
                preprocessing=settings['preprocessing'],
                dropout6=args.dropout_keep_prob if point == 'fc7' else None),
            args.image_size, args.batch_size, args.val_batch_size, args.cache_views,
            args.cache_dir, args.seed)
        source.batches[True] = source.cache.features, source.cache.labels
    if not all(source.reads_cache.values()):
        # The file list is fed to the iterator in each session made (FeedInitializerHook), not
        # written into the graph.
        placeholders = data.split_placeholders('train_split')
        source.iterator = tf.data.make_initializable_iterator(data.train_pipeline(
            placeholders, args.image_size, args.batch_size, seed=args.seed))
        source.feed = data.split_feed(placeholders, dataset.train)
        images, labels = source.iterator.get_next()
        source.batches[False] = images, tf.cast(labels, tf.int32)
    source.inputs_summary = tf.summary.image('inputs', data.to_viewable(
        source.cache.view_images if cached else source.batches[False][0]), max_outputs=4,
        collections=[])
    return source


def build_towers(args, machine, run, source):
    """The model and loss (cross entropy, smoothed and weighted as asked, plus the arg_scope's
    weight decay of what trains, in either stage) on each input of `source`, one tower per
    device on its share of the batch, sharing the variables: {stored: [tower]}, and their
    mean {stored: {loss, total_loss, train_accuracy}}; and the evaluation graph that
    evaluate.py runs, on the same variables."""
    trainable = cli.comma_list(args.trainable_scopes)
    trained = trainable and trainable + (cli.comma_list(args.exclude_scopes) if args.head_steps
                                         else [])
    per_class = None
    if args.class_weights == 'balanced':
        per_class = class_weights(run.dataset.train.labels, run.num_classes)
        log.info('class weights (balanced): %.3g to %.3g', per_class.min(), per_class.max())
    towers, metrics = {}, {}
    for stored, batch in source.batches.items():
        # With the cache, the prefix built on the views made the variables: all reuse them.
        towers[stored] = parallel.on_towers(
            machine.devices, args.task, lambda images, labels, reuse: tower_loss(
                images, labels, run.settings, args.label_smoothing, per_class,
                reuse=True if source.cache else reuse, start=source.point if stored else None,
                trained_scopes=trained or None, **network_options(args)), *batch)
        metrics[stored] = {key: parallel.mean([t[key] for t in towers[stored]])
                           for key in ('loss', 'total_loss', 'train_accuracy')}
    if source.reads_cache['main']:  # validation from its stored features too: its view is fixed
        stored, stored_labels, initializer, feed = source.cache.validation_batches(
            args.val_batch_size)
        evaluation = evaluate.on(stored, stored_labels, run.settings, initializer, feed,
                                 reuse=True, start=source.point)
    else:
        evaluation = evaluate.build(run.dataset.validation, run.settings, args.val_batch_size,
                                    reuse=True)
    return towers, metrics, evaluation


def build_stages(args, machine, run, source, towers, metrics, global_step, learning_rate):
    """Each stage's optimizer and update: `train_ops[stage]` (the step after the update),
    `updates` and `scalars` for the hooks, `sync_hooks` of synchronous replicas. Frozen
    variables get no gradients and no slots; the head stage has slots of its own, so both
    stages exist in every checkpoint and a restart can resume in either."""
    stages = {'main': variables_in(args.trainable_scopes, '--trainable-scopes')}
    if args.head_steps:
        stages['head'] = variables_in(args.exclude_scopes, '--exclude-scopes (the head)')
    built = types.SimpleNamespace(train_ops={}, updates=[], scalars=[], sync_hooks=[])
    rate, store_rate = learning_rate, []
    if args.sync_replicas:
        rate, store_rate = parallel.stored_on_ps(learning_rate)
    for stage, var_list in stages.items():  # main first: its names are a one-stage run's
        optimizer = hardware.loss_scaled(OPTIMIZERS[args.optimizer](
            rate, args, 'head_' if stage == 'head' else ''), machine.precision)
        if args.sync_replicas:
            optimizer, built.sync_hooks = parallel.sync_replicas(optimizer, args.task)
        stored = source.reads_cache[stage]
        update = parallel.minimize(optimizer, [t['total_loss'] for t in towers[stored]],
                                   machine.devices, args.task, var_list, global_step,
                                   before=store_rate)
        with tf.control_dependencies([update]):
            built.train_ops[stage] = global_step.read_value()  # the step after the update
        step_metrics = metrics[stored]
        built.updates.append((built.train_ops[stage], update, var_list,
                              step_metrics['total_loss']))
        built.scalars.append((built.train_ops[stage],
                              dict(step_metrics, learning_rate=learning_rate)))
        log.info('%s stage trains %d of %d variables (%s)', stage, len(var_list),
                 len(tf.trainable_variables()),
                 'steps 0-%d' % args.head_steps if stage == 'head' else
                 'steps %d-%d, %s schedule' % (args.head_steps, run.last_step, args.schedule))
    return built


def build_hooks(args, machine, run, source, evaluation, stages, global_step, extra_hooks):
    """(scaffold, hooks, chief-only hooks) of the session. The chief's write into
    --checkpoint-dir: summaries, validation and best/, checkpoints."""
    chief = machine.chief
    # Where no stage trains the layers below the cache's boundary, their weights are saved once
    # and linked into every checkpoint (features.LinkingSaver).
    saver_class = functools.partial(
        features.LinkingSaver, source.cache.frozen_variables, lambda: source.cache.weights_prefix
    ) if source.cache and all(source.reads_cache.values()) else tf.train.Saver
    best_saver = rundir.best_saver(args.checkpoint_dir,
                                   slim.get_model_variables() + [global_step], saver_class)
    validation = ValidationHook(evaluation, run.num_val, run.num_classes, args.validate_every,
                                args.checkpoint_dir, best_saver, args.early_stopping
                                ) if chief else None
    hooks = [tf.train.StopAtStepHook(last_step=run.last_step),
             LoggingHook(stages.scalars, run.last_step, run.step_images, args.log_every,
                         validation)]
    if source.iterator:  # the cache starts its reader itself, once it is filled
        hooks.insert(0, FeedInitializerHook(source.iterator.initializer, source.feed))
    if chief:
        hooks += [SummaryHook(stages.scalars, args.summary_every, args.checkpoint_dir),
                  validation]
        if not source.cache:  # (the cache writes the views it builds)
            hooks.insert(-1, tf.train.SummarySaverHook(
                save_steps=run.last_step + 1, output_dir=args.checkpoint_dir,
                summary_op=source.inputs_summary))
    hooks += list(extra_hooks)
    if args.task:
        hooks += stages.sync_hooks + [parallel.StepCountHook(args.task)]
    # The Scaffold's default saver, with --keep-checkpoints.
    scaffold = tf.train.Scaffold(init_fn=run.init_fn, init_op=model.initialized_elsewhere(
        run.restored) if run.init_fn else None, saver=saver_class(
        sharded=True, max_to_keep=args.keep_checkpoints, allow_empty=True))
    # The NaN guard runs ahead of the checkpoint saver, so a NaN step is never saved; the saver
    # ahead of the validation, whose best can then be the checkpoint just saved.
    chief_hooks = [NanGuardHook(stages.updates), CheckpointSaverHook(
        args.checkpoint_dir, save_secs=None if args.save_every_steps else args.save_every_secs,
        save_steps=args.save_every_steps or None, scaffold=scaffold)]
    return scaffold, hooks, chief_hooks


def open_session(args, machine, run, scaffold, hooks, chief_hooks):
    """The MonitoredTrainingSession, from the newest checkpoint, or the pretrained weights when
    the directory holds none (restored by the chief; the other workers wait for it)."""
    if not machine.chief:
        log.info('%s:%d: the chief restores the model, this worker waits for it',
                 args.task.job, args.task.index)
        parallel.wait_for_chief(machine.server.target, machine.config)
    elif run.latest:
        log.info('resuming from %s (step %d); --pretrained is not used when resuming',
                 run.latest, run.start_step)
    elif run.init_fn:
        log.info('starting from the pretrained weights in %s (not restored: %s)',
                 args.pretrained, args.exclude_scopes or 'nothing')
    else:
        log.info('starting from scratch: random initial weights')
    try:
        return tf.train.MonitoredTrainingSession(
            master=machine.server.target if machine.server else '', is_chief=machine.chief,
            config=machine.config, checkpoint_dir=args.checkpoint_dir, scaffold=scaffold,
            hooks=hooks, chief_only_hooks=chief_hooks, save_summaries_steps=None,  # SummaryHook
            save_checkpoint_secs=None, save_checkpoint_steps=None, log_step_count_steps=0)
    except tf.errors.NotFoundError as e:
        raise rundir.SettingsError(
            '%s does not hold what this run needs (%s): it was saved with another --optimizer, '
            '--trainable-scopes or --head-steps; resume with those, or use a new '
            '--checkpoint-dir' % (run.latest, e.message.splitlines()[0][:200]))


def _train(args, extra_hooks):
    # The machine, then the run directory: the chief alone writes into --checkpoint-dir.
    machine = set_up_machine(args)
    run = open_run(args, machine)
    global_step = tf.train.get_or_create_global_step()
    # Input: the stored features of the frozen layers where that pays (features.py), images
    # otherwise; then one tower per device on each, and the evaluation graph of evaluate.py.
    source = build_input(args, machine, run)
    towers, metrics, evaluation = build_towers(args, machine, run, source)
    # Optimizer: one per stage (with --head-steps, the head's first), its rate fed each step.
    learning_rate = tf.placeholder(tf.float32, [], name='learning_rate_fed')
    stages = build_stages(args, machine, run, source, towers, metrics, global_step,
                          learning_rate)
    scaffold, hooks, chief_hooks = build_hooks(args, machine, run, source, evaluation, stages,
                                               global_step, extra_hooks)
    session = open_session(args, machine, run, scaffold, hooks, chief_hooks)

    # The loop: each step runs the update of the stage that the step is in. A stored feature
    # that fails its checksum as it is read ends the run in one line (features.py).
    with source.cache.dropping_corrupted() if source.cache else contextlib.nullcontext(), \
            session:
        step, stage = session.run_step_fn(
            lambda step_context: step_context.session.run(global_step)), None
        if source.cache:  # the views it builds are what the network is fed: their summary
            summary = session.run_step_fn(lambda step_context: source.cache.fill(
                step_context.session, source.inputs_summary))
            if summary:
                tf.summary.FileWriterCache.get(args.checkpoint_dir).add_summary(summary, step)
        try:
            with interrupt_between_steps() as interrupted:
                while step < run.last_step and not session.should_stop():
                    if interrupted:
                        raise KeyboardInterrupt
                    now, rate = stage_at(step, args, run.last_step)
                    if now != stage:
                        log.info('%s stage from step %d', now, step)
                        stage = now
                    step = session.run(stages.train_ops[stage], {learning_rate: rate})
        except (KeyboardInterrupt, tf.errors.DataLossError):
            if not machine.chief:
                raise
            # Keep the steps since the last periodic checkpoint: save now, outside the hooks (a
            # stored record that failed its checksum stopped the step before its update ran).
            path = session.run_step_fn(lambda step_context: scaffold.saver.save(
                step_context.session, os.path.join(args.checkpoint_dir,
                                                   rundir.CHECKPOINT_PREFIX),
                global_step=global_step))
            log.info('saved %s', path)
            raise
    if not machine.chief:
        log.info('done: the chief saves the model in %s', args.checkpoint_dir)
        return
    curves = evaluate.plot_curves(args.checkpoint_dir)
    log.info('done: checkpoints in %s, training curves in %s; next: python evaluate.py '
             '--checkpoint-dir %s, python inference.py --checkpoint-dir %s IMAGE',
             args.checkpoint_dir, curves, args.checkpoint_dir, args.checkpoint_dir)


@contextlib.contextmanager
def interrupt_between_steps():
    """Ctrl-C (SIGINT) noted in the list this yields, for the training loop to act on between
    two steps. Python raises KeyboardInterrupt wherever the main thread happens to be, and
    where that is a finalizer or a callback it is printed and dropped: once a run with 1 ms
    steps went on to its end after a Ctrl-C (in the test suite; not pinned down further). In a
    thread other than the main one, signals are not this code's: nothing changes."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def variables_in(text, flag):
    """The trainable variables in the comma-separated scopes `text` (all when empty)."""
    wanted = cli.comma_list(text)
    found = [v for v in tf.trainable_variables() if not wanted or model.in_scopes(v.op.name,
                                                                                  wanted)]
    if not found:
        raise model.CheckpointError('%s %s matches no variable of the model' % (flag, text))
    return found


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format='%(asctime)s %(message)s', datefmt='%H:%M:%S', level=logging.INFO)
    tf.get_logger().setLevel(logging.ERROR)  # deprecation notices from TF's own v1 code
    tf.disable_eager_execution()
    try:
        if args.task and args.task.job == 'ps':
            parallel.serve(args.task)
            return 0
        with tf.Graph().as_default():
            train(args)
    except (data.DatasetError, model.CheckpointError, rundir.SettingsError,
            hardware.HardwareError, parallel.ClusterError, features.CacheError) as e:
        print('train.py: error: %s' % e, file=sys.stderr)
        return 2
    except NonFiniteError as e:
        flag, rate = (('--head-learning-rate', args.head_learning_rate) if e.step <=
                      args.head_steps else ('--learning-rate', args.learning_rate))
        print('train.py: error: %s; nothing of that step was saved. Lower %s (now %g) and run '
              'the same command again to resume from the last checkpoint.' % (e, flag, rate),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('train.py: interrupted; run the same command again to resume from the last '
              'checkpoint', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
