"""The run directory: what train.py writes into --checkpoint-dir, and how every tool finds and
repairs what is there. Its layout, by the names below:

    settings.json            the settings record (model_settings, and train.run_settings)
    checkpoint               TensorFlow's state file: the newest checkpoint, and the ones kept
    model.ckpt-<step>.*      whole-model checkpoints (weights, optimizer slots, global step)
    best/                    the best validation accuracy's checkpoint and best.json
    unreadable.json          the image check's result for the dataset (data.drop_unreadable)
    events.out.tfevents.*    TensorBoard's summaries; graph.pbtxt
    curves.png               the training curves (evaluate.plot_curves)
    eval/<split>/            evaluate.py's report
"""
import json
import os
import re
import shutil

import tensorflow.compat.v1 as tf
import tf_slim as slim

import data
import model


DEFAULT_CHECKPOINT_DIR = 'checkpoints/vgg19_food'
SETTINGS_FILE = 'settings.json'
CHECKPOINT_PREFIX = 'model.ckpt'  # what train.py saves: model.ckpt-<step>.{index,data-*}
BEST_DIR = 'best'  # <checkpoint-dir>/best: the weights with the best validation accuracy
BEST_FILE = 'best.json'  # beside them: their step and accuracy
UNREADABLE_FILE = 'unreadable.json'
CURVES_FILE = 'curves.png'
EVAL_DIR = 'eval'


# ---------------------------------------------------------------------------------------------
# The settings record: what the directory's model needs to be used, written once by training.


class SettingsError(ValueError):
    """A checkpoint directory without usable settings, or settings that do not fit the run."""


def save_settings(checkpoint_dir, settings):
    """Write `settings` (a JSON-able dict) beside the checkpoints, atomically."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, SETTINGS_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(settings, f, indent=1, ensure_ascii=False)
    os.replace(path + '.tmp', path)


def model_settings(class_ids, class_names, image_size):
    """The part of the settings record that every reader of a model needs (MODEL_KEYS): its
    classes, input size, the architecture that size gives, and the preprocessing it was
    trained with. train.py adds how the run was made (run_settings)."""
    padding, global_pool = model.fc_options(image_size)
    return {'class_ids': list(class_ids), 'class_names': list(class_names),
            'image_size': image_size, 'fc_conv_padding': padding, 'global_pool': global_pool,
            'preprocessing': data.preprocessing_settings(image_size)}


MODEL_KEYS = ('class_ids', 'class_names', 'image_size', 'fc_conv_padding', 'global_pool',
              'preprocessing')


def load_settings(checkpoint_dir, check_preprocessing=False):
    """The settings training wrote into `checkpoint_dir`, or None when it has none yet.

    With `check_preprocessing`, a model trained with other preprocessing than data.py applies
    is refused: its predictions would be wrong without an error.
    """
    path = os.path.join(checkpoint_dir, SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            settings = json.load(f)
        missing = [k for k in MODEL_KEYS if k not in settings]
    except (ValueError, OSError) as e:
        raise SettingsError('%s is not a readable settings file (%s)' % (path, e))
    if missing:
        raise SettingsError('%s lacks %s' % (path, ', '.join(missing)))
    if check_preprocessing and settings['preprocessing'] != data.preprocessing_settings(
            settings['image_size']):
        raise SettingsError('%s was trained with other preprocessing than this version of '
                            'data.py applies' % checkpoint_dir)
    return settings


# ---------------------------------------------------------------------------------------------
# Which checkpoint of a directory: the newest, or the best one that validation kept.

def best_saver(checkpoint_dir, var_list, saver_class=tf.train.Saver):
    """A Saver (of `saver_class`) for <checkpoint_dir>/best that keeps one checkpoint: it knows
    the one already there, so the next best replaces it, in this run as after a restart."""
    saver = saver_class(var_list=var_list, max_to_keep=1, save_relative_paths=True)
    state = tf.train.get_checkpoint_state(os.path.join(checkpoint_dir, BEST_DIR))
    if state:
        saver.recover_last_checkpoints(state.all_model_checkpoint_paths)
    return saver


def save_best(session, saver, checkpoint_dir, record):
    """Save the model with `saver` (from best_saver) into <checkpoint_dir>/best, replacing the
    previous best, and write `record` (step, accuracy, ...) beside it.

    When the newest checkpoint is of this very step (the end of a run, mostly), its files are
    linked into best/ instead: no second copy of 559 MB on disk, and 1.5 s less on 2 cores.
    """
    best_dir = os.path.join(checkpoint_dir, BEST_DIR)
    path = os.path.join(best_dir, '%s-%d' % (CHECKPOINT_PREFIX, record['step']))
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if not (latest and latest.endswith('-%d' % record['step']) and _linked(latest, path)):
        path = saver.save(session, os.path.join(best_dir, CHECKPOINT_PREFIX), record['step'],
                          write_meta_graph=False)
    else:  # what saver.save does after writing: the state file, then the old best removed
        previous = [p for p in saver.last_checkpoints if p != path]
        tf.train.update_checkpoint_state(best_dir, os.path.basename(path),
                                         [os.path.basename(path)])
        saver.recover_last_checkpoints([path])
        for old in previous:
            tf.train.remove_checkpoint(old)
    write_best_record(checkpoint_dir, dict(record, checkpoint=os.path.basename(path)))
    return path


def _linked(prefix, path):
    """Hard-link checkpoint `prefix`'s files as checkpoint `path`; False where the file system
    cannot (another device, no hard links), with nothing left behind."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    done = []
    try:
        for name in [prefix + '.index'] + tf.io.gfile.glob(prefix + '.data-*'):
            target = path + name[len(prefix):]
            os.link(name, target + '.tmp')
            done.append(target + '.tmp')
        for temporary in done:
            os.replace(temporary, temporary[:-len('.tmp')])
        return True
    except OSError:
        for temporary in done:
            os.remove(temporary)
        return False


def write_best_record(checkpoint_dir, record):
    """Write <checkpoint_dir>/best/best.json atomically."""
    path = os.path.join(checkpoint_dir, BEST_DIR, BEST_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(record, f, indent=1)
    os.replace(path + '.tmp', path)


def load_best(checkpoint_dir):
    """The record of the best checkpoint in `checkpoint_dir` ({step, accuracy, ...}), or None."""
    path = os.path.join(checkpoint_dir, BEST_DIR, BEST_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None  # no validation yet, or a damaged record: the next validation writes one
    if not isinstance(record, dict) or not {'step', 'accuracy'} <= set(record):
        return None
    # A kill between the weights and the record leaves a record of weights that are gone: it
    # describes nothing there, and the next validation writes both again.
    weights = tf.train.latest_checkpoint(os.path.dirname(path))
    if 'checkpoint' in record and (weights is None
                                   or os.path.basename(weights) != record['checkpoint']):
        return None
    return record


def trained_model(checkpoint_dir, which='latest'):
    """(settings, checkpoint prefix) of a trained model in `checkpoint_dir`, for evaluation and
    inference: `which` as in find_checkpoint, its preprocessing the one data.py applies."""
    settings = load_settings(checkpoint_dir, check_preprocessing=True)
    if settings is None:
        raise SettingsError('%s holds no trained model (no settings.json): train one with '
                            'train.py --checkpoint-dir %s' % (checkpoint_dir, checkpoint_dir))
    checkpoint = find_checkpoint(checkpoint_dir, which)
    if which not in ('latest', 'best'):  # a path of the user's, checked before any graph
        problem = model.checkpoint_problem(
            checkpoint, model.vgg19_variables(len(settings['class_ids'])))
        if problem:
            raise SettingsError('--checkpoint %s %s; pass a checkpoint that train.py wrote for '
                                'the model in %s, or --checkpoint latest or best'
                                % (checkpoint, problem[1], checkpoint_dir))
    return settings, checkpoint


def restored_session(checkpoint, config):
    """A session (with `config`) on the default graph, finalized here, its model variables
    restored from `checkpoint`: what a trained model predicts in."""
    saver = tf.train.Saver(slim.get_model_variables())
    graph = tf.get_default_graph()
    graph.finalize()
    # Inside the graph: a process that runs eagerly too (a notebook, Keras) restores through
    # the session all the same.
    session = tf.Session(graph=graph, config=config)
    restore(saver, session, checkpoint)
    return session


def restore(saver, session, checkpoint):
    """saver.restore, with a checkpoint that does not fit the model (or is damaged) turned into
    a SettingsError naming it."""
    try:
        saver.restore(session, checkpoint)
    except (tf.errors.OpError, ValueError) as e:
        raise SettingsError('cannot restore %s: %s' % (checkpoint, str(e).splitlines()[0][:200]))


# ---------------------------------------------------------------------------------------------
# What a kill, a full disk or a hand edit can leave in a checkpoint directory, found at start-up.

def checkpoints_on_disk(checkpoint_dir):
    """{step: prefix} of the model.ckpt-<step> checkpoints whose index file exists."""
    found = {}
    for name in os.listdir(checkpoint_dir) if os.path.isdir(checkpoint_dir) else []:
        match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r'-(\d+)\.index', name)
        if match:
            found[int(match.group(1))] = os.path.join(checkpoint_dir, name[:-len('.index')])
    return found


def _state_file_problem(checkpoint_dir):
    """(the prefix the `checkpoint` state file names or None, what is wrong with it or None)."""
    path = os.path.join(checkpoint_dir, 'checkpoint')
    if not os.path.exists(path):
        return None, None
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
    except (tf.errors.OpError, ValueError) as e:  # an empty file is a ValueError
        return None, 'the state file %s is unreadable (%s)' % (path, str(e).splitlines()[0])
    if state is None:  # TensorFlow swallows a parse error and would start from scratch
        return None, 'the state file %s is not a checkpoint state' % path
    named = state.model_checkpoint_path
    if not os.path.isfile(named + '.index'):
        return None, 'the state file %s names %s, which does not exist' % (path, named)
    return named, None


def recover_checkpoints(checkpoint_dir):
    """The newest checkpoint of `checkpoint_dir` that can be resumed from, or None when it
    holds none; (prefix, [what was wrong]). Repairs what a kill or a hand edit left behind.

    Leftover temporary files of an interrupted save are removed; a damaged state file, or one
    naming a checkpoint that is gone or damaged, is rewritten (atomically) to name the newest
    checkpoint that reads back whole and finite; newer damaged checkpoints are set aside as
    *.damaged. When checkpoints exist and none of them is usable, CheckpointError: starting
    again from scratch is the user's decision, never a silent one.
    """
    problems = []
    for name in sorted(os.listdir(checkpoint_dir) if os.path.isdir(checkpoint_dir) else []):
        path = os.path.join(checkpoint_dir, name)
        if '.tempstate' in name or (name.startswith(CHECKPOINT_PREFIX + '-')
                                    and name.endswith('_temp') and os.path.isdir(path)):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            problems.append('removed %s, left by an interrupted save' % name)
    named, state_problem = _state_file_problem(checkpoint_dir)
    if state_problem:
        problems.append(state_problem)
    found = checkpoints_on_disk(checkpoint_dir)
    damaged, chosen = [], None
    for step in sorted(found, reverse=True):
        why = model.checkpoint_problem(found[step])
        if why is None:
            chosen = step
            break
        damaged.append(found[step])
        problems.append('%s cannot be restored: it %s' % (found[step], why[1]))
    if found and chosen is None:
        raise model.CheckpointError(
            'no checkpoint in %s can be restored (%s): move them aside, or use a new '
            '--checkpoint-dir, to start again' % (checkpoint_dir, '; '.join(problems)[:400]))
    for prefix in damaged:
        for path in [p for p in tf.io.gfile.glob(prefix + '.*') if not p.endswith('.damaged')]:
            os.replace(path, path + '.damaged')
    if chosen is None:
        return None, problems
    if named is None and not state_problem:
        problems.append('no state file names the checkpoints')
    if named is None or os.path.abspath(named) != os.path.abspath(found[chosen]):
        # Absolute paths, as the Saver writes them; the older ones stay in its keep count.
        tf.train.update_checkpoint_state(
            checkpoint_dir, os.path.abspath(found[chosen]),
            [os.path.abspath(found[s]) for s in sorted(found) if s <= chosen])
        problems.append('the state file now names %s' % os.path.basename(found[chosen]))
    return found[chosen], problems


def add_checkpoint_flags(parser):
    """--checkpoint-dir and --checkpoint (for find_checkpoint), as the tools that use a trained
    model take them."""
    parser.add_argument('--checkpoint-dir', default=DEFAULT_CHECKPOINT_DIR,
                        help='what train.py wrote: checkpoints and settings.json')
    parser.add_argument('--checkpoint', default='latest',
                        help="'latest', 'best' (the best validation accuracy), or a checkpoint "
                             "path")


def find_checkpoint(checkpoint_dir, which='latest'):
    """The checkpoint prefix that `which` names: 'latest' or 'best' of `checkpoint_dir`, or a
    checkpoint path; raises SettingsError saying what to do when there is none."""
    if which == 'latest':
        path = tf.train.latest_checkpoint(checkpoint_dir)
        hint = 'train one with train.py --checkpoint-dir %s' % checkpoint_dir
    elif which == 'best':
        path = tf.train.latest_checkpoint(os.path.join(checkpoint_dir, BEST_DIR))
        hint = ('validation keeps one there; use --checkpoint latest, or train with '
                '--validate-every N')
    else:
        path = model.checkpoint_file(which)
        hint = 'pass latest, best, or the prefix of a model.ckpt-N checkpoint'
    if path is None:
        where = ('%s checkpoint in %s' % (which, checkpoint_dir) if which in ('latest', 'best')
                 else 'checkpoint %s' % which)
        raise SettingsError('no %s: %s' % (where, hint))
    return path
