"""train.py: schedules and stages, optimizers, the settings record, runs that resume, best
checkpoints, early stopping, and the errors."""
import argparse
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import demo
import evaluate
import inference
import train
from conftest import ROOT


def test_total_steps():
    assert train.total_steps(75750, 64, 20) == 20 * 1183
    assert train.total_steps(75750, 64, 20, max_steps=100) == 100
    assert train.total_steps(100, 32, 0.5) == 2


def test_polynomial_schedule_is_tensorflows_polynomial_decay():
    step = tf.placeholder(tf.int64, [])
    graph_lr = tf.train.polynomial_decay(1e-3, step, 1000, 1e-7, power=1.0)
    with tf.Session() as session:
        for s in (0, 1, 250, 999, 1000, 1500):
            assert train.learning_rate_at(s, 1000, 1e-3) == pytest.approx(
                session.run(graph_lr, {step: s}), abs=1e-9)  # float32 in the graph
    assert train.learning_rate_at(5, 10, 1.0, end=0.0, power=2.0) == pytest.approx(0.25)


@pytest.mark.parametrize('schedule, middle', [
    ('polynomial', 0.5005), ('cosine', 0.5005), ('exponential', 0.1 * 0.001 ** 0.5 * 10),
    ('constant', 1.0)])
def test_each_schedule_runs_from_base_to_end(schedule, middle):
    def rate(step):
        return train.learning_rate_at(step, 100, 1.0, schedule, end=1e-3)
    end = 1.0 if schedule == 'constant' else 1e-3
    assert rate(0) == pytest.approx(1.0)
    assert rate(50) == pytest.approx(middle)
    assert rate(100) == pytest.approx(end) and rate(150) == pytest.approx(end)
    assert all(rate(s + 1) <= rate(s) for s in range(100))
    if schedule == 'cosine':  # flat at both ends, steepest in the middle
        assert rate(0) - rate(5) < rate(50) - rate(55)


def test_warmup_ramps_linearly_into_the_schedule():
    def rate(step):
        return train.learning_rate_at(step, 100, 1.0, 'constant', warmup_steps=4)
    assert [rate(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_stages_switch_at_the_head_steps_and_the_schedule_starts_there():
    args = argparse.Namespace(head_steps=10, head_learning_rate=0.01, learning_rate=1e-3,
                              schedule='polynomial', end_learning_rate=0.0, decay_power=1.0,
                              warmup_steps=0)
    assert train.stage_at(0, args, 110) == ('head', 0.01)
    assert train.stage_at(9, args, 110) == ('head', 0.01)
    assert train.stage_at(10, args, 110) == ('main', pytest.approx(1e-3))
    assert train.stage_at(60, args, 110) == ('main', pytest.approx(5e-4))
    assert train.stage_at(110, args, 110) == ('main', pytest.approx(0.0))
    args.head_steps = 0
    assert train.stage_at(0, args, 100) == ('main', pytest.approx(1e-3))


@pytest.mark.parametrize('name, first_step', [
    ('sgd', lambda lr, g: -lr * g),
    ('momentum', lambda lr, g: -lr * g),
    ('adam', lambda lr, g: -lr * np.sign(g)),  # bias-corrected: lr * g / |g|
    # TensorFlow's RMSProp starts its mean square at 1, not 0
    ('rmsprop', lambda lr, g: -lr * g / np.sqrt(0.9 + 0.1 * g * g + 1e-7)),
])
def test_each_optimizer_takes_the_fed_learning_rate(name, first_step):
    args = argparse.Namespace(momentum=0.9)
    lr = tf.placeholder(tf.float32, [])
    w = tf.Variable([1.0, -2.0, 3.0])
    target = np.array([0.5, 0.5, 0.5], np.float32)
    loss = tf.reduce_sum(tf.square(w - target)) / 2  # gradient: w - target
    update = train.OPTIMIZERS[name](lr, args, 'head_' if name == 'adam' else '').minimize(loss)
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        before = session.run(w)
        session.run(update, {lr: 0.01})
        np.testing.assert_allclose(session.run(w) - before, first_step(0.01, before - target),
                                   rtol=1e-4)


def test_momentum_carries_the_previous_step():
    w = tf.Variable(1.0)
    update = train.OPTIMIZERS['momentum'](0.1, argparse.Namespace(momentum=0.9), '').minimize(
        w * 2.0)  # gradient 2 at every step
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        session.run(update)
        session.run(update)
        assert session.run(w) == pytest.approx(1.0 - 0.1 * 2 - 0.1 * (0.9 * 2 + 2))


def test_balanced_class_weights():
    weights = train.class_weights([0, 0, 0, 1, 2, 2], 4)
    np.testing.assert_allclose(weights, [6 / 9, 2.0, 1.0, 0.0])


def test_recipe_defaults():
    args = train.parse_args([])
    assert (args.dataset, args.pretrained, args.checkpoint_dir) == (
        'data/food-101', 'data/vgg_19.ckpt', 'checkpoints/vgg19_food')
    assert (args.image_size, args.epochs) == (224, 20)
    assert (args.batch_size, args.val_batch_size) == (64, 128)
    assert (args.learning_rate, args.end_learning_rate, args.momentum) == (1e-3, 1e-7, 0.9)
    assert (args.save_every_secs, args.summary_every, args.validate_every) == (600, 30, 500)
    assert args.exclude_scopes == 'vgg_19/fc8'


@pytest.mark.parametrize('flags, message', [
    (['--schedule', 'exponential', '--end-learning-rate', '0'], 'for --schedule exponential'),
    (['--early-stopping', '3', '--validate-every', '0'], '--early-stopping needs'),
    (['--label-smoothing', '1'], '--label-smoothing must be in [0, 1)'),
    (['--head-steps', '-1'], '--head-steps must not be negative'),
    (['--head-learning-rate', '0'], 'must be positive'),
    (['--head-steps', '5', '--exclude-scopes', ''], '--head-steps trains the head'),
    (['--head-steps', '5', '--max-steps', '5'], '--max-steps must be larger than --head-steps'),
])
def test_bad_flags_are_one_line_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        train.parse_args(flags)
    assert exit.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]
    train.parse_args(['--schedule', 'cosine', '--end-learning-rate', '0'])  # to zero is fine


def test_demo_defaults_yield_to_explicit_flags():
    args = train.parse_args(['--demo', '--epochs', '2'])
    assert args.dataset == 'data/demo' and args.pretrained == 'none' and args.epochs == 2


def _events(directory):
    tags = {}
    for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
        for event in tf.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


@pytest.mark.slow
def test_short_run_writes_everything_and_resumes(photo_dataset, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    out = str(tmp_path / 'run')
    flags = ['--dataset', photo_dataset, '--pretrained', 'none', '--checkpoint-dir', out,
             '--image-size', '32', '--batch-size', '4', '--val-batch-size', '5',
             '--trainable-scopes', 'vgg_19/fc8', '--validate-every', '2', '--summary-every', '1',
             '--log-every', '1']
    assert train.main(flags + ['--max-steps', '3']) == 0
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-3')
    assert 'starting from scratch' in caplog.text
    settings = train.model.load_settings(out)
    assert settings['class_ids'] == ['astronaut', 'camera', 'coffee']
    assert settings['image_size'] == 32 and settings['fc_conv_padding'] == 'SAME'
    tags = _events(out)
    for tag in ('loss', 'total_loss', 'learning_rate', 'accuracy', 'accuracy_top5',
                'train_accuracy', 'inputs/image/0'):
        assert tag in tags, tag
    assert sorted(tags['accuracy']) == [2, 3]  # every 2 steps and at the end
    assert tags['inputs/image/0'] == [1]  # once at the start
    assert os.path.isfile(os.path.join(out, 'curves.png'))
    assert 'validation at step 3: accuracy' in caplog.text and '(6 images' in caplog.text

    # Interrupted at step 3, run again with more steps: the global step continues and the
    # momentum comes back from the checkpoint rather than starting at zero.
    # The precision is how steps run, not part of the model: a resumed run chooses again.
    caplog.clear()
    assert train.main(flags + ['--max-steps', '5', '--precision', 'fp32']) == 0
    assert 'resuming from' in caplog.text and '(step 3)' in caplog.text
    assert 'precision fp32: as asked' in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-5')
    saved = tf.train.load_checkpoint(out).get_variable_to_shape_map()
    assert 'vgg_19/fc8/weights/Momentum' in saved
    assert 'vgg_19/fc7/weights/Momentum' not in saved  # frozen: no slots
    assert tf.train.load_checkpoint(out).get_tensor('vgg_19/fc8/weights').dtype == np.float32
    assert 'step 5/5' in caplog.text and 'step 1/' not in caplog.text
    # The same command again: the run is over, no step more.
    assert train.main(flags + ['--max-steps', '5']) == 0
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-5')

    # Resuming with more variables to train (the last flag given wins) needs momentum slots the
    # checkpoint lacks.
    assert train.main(flags + ['--max-steps', '7', '--trainable-scopes', '']) == 2
    assert 'another --optimizer, --trainable-scopes' in capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(photo_dataset, tmp_path, capsys):
    out = str(tmp_path / 'run')
    train.model.save_settings(out, {'class_ids': ['x', 'y'], 'class_names': ['x', 'y'],
                                    'image_size': 32, 'fc_conv_padding': 'SAME',
                                    'global_pool': True, 'preprocessing': {}})
    flags = ['--dataset', photo_dataset, '--pretrained', 'none', '--checkpoint-dir', out,
             '--image-size', '32', '--batch-size', '4', '--max-steps', '1', '--validate-every', '0',
             '--trainable-scopes', 'vgg_19/fc8']
    # Settings without a checkpoint describe no model yet: a new run replaces them.
    assert train.main(flags) == 0
    assert train.model.load_settings(out)['class_ids'] == ['astronaut', 'camera', 'coffee']
    assert train.main(flags + ['--image-size', '64']) == 2
    assert 'other image size (32)' in capsys.readouterr().err
    assert train.main(flags + ['--val-fraction', '0.5']) == 2
    assert 'other split (class folders, split 20%' in capsys.readouterr().err


def _cli(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py')] + list(args),
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_missing_inputs_are_one_line_errors(tmp_path, photo_dataset):
    rc, line = _cli('--dataset', str(tmp_path / 'food-101'))
    assert rc == 2 and line.startswith('train.py: error: dataset') and '--dataset' in line
    rc, line = _cli('--dataset', photo_dataset, '--checkpoint-dir', str(tmp_path / 'c'),
                    '--pretrained', str(tmp_path / 'vgg_19.ckpt'))
    assert rc == 2 and 'vgg_19_2016_08_28.tar.gz' in line and '--pretrained none' in line
    if not train.hardware.gpu_capabilities():
        rc, line = _cli('--dataset', photo_dataset, '--checkpoint-dir', str(tmp_path / 'c'),
                        '--precision', 'fp16')
        assert rc == 2 and line.startswith('train.py: error: --precision fp16 needs a GPU')
        assert not os.path.exists(str(tmp_path / 'c'))  # refused before anything is written


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(photo_dataset, tmp_path,
                                                                     capsys):
    out = str(tmp_path / 'run')
    flags = ['--dataset', photo_dataset, '--pretrained', 'none', '--checkpoint-dir', out,
             '--image-size', '32', '--batch-size', '4', '--trainable-scopes', 'vgg_19/fc8',
             '--init', 'he', '--validate-every', '0']
    assert train.main(flags + ['--max-steps', '2']) == 0
    assert train.main(flags + ['--max-steps', '50', '--learning-rate', '1e30']) == 1
    assert 'NaN or infinite' in capsys.readouterr().err
    latest = tf.train.latest_checkpoint(out)
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        assert np.all(np.isfinite(value)), (latest, name)


@pytest.mark.slow
def test_ctrl_c_mid_run_then_the_same_command_resumes(photo_dataset, tmp_path):
    out = str(tmp_path / 'run')
    command = [sys.executable, os.path.join(ROOT, 'train.py'), '--dataset', photo_dataset,
               '--pretrained', 'none', '--checkpoint-dir', out, '--image-size', '32',
               '--batch-size', '4', '--trainable-scopes', 'vgg_19/fc8', '--validate-every', '0',
               '--save-every-secs', '2', '--max-steps', '100000']
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            latest = tf.train.latest_checkpoint(out)
            if latest and int(latest.rsplit('-', 1)[1]) > 0:
                break
            time.sleep(0.5)
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and 'interrupted' in err.strip().splitlines()[-1]
    step = int(tf.train.latest_checkpoint(out).rsplit('-', 1)[1])
    assert step > 0 and 'saved %s' % tf.train.latest_checkpoint(out) in err
    command[-1] = str(step + 2)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'resuming from' in result.stderr and '(step %d)' % step in result.stderr
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-%d' % (step + 2))


class _InterruptAt(tf.train.SessionRunHook):
    """Ctrl-C as soon as the global step reaches `step`."""

    def __init__(self, step):
        self._at = step

    def begin(self):
        self._step = tf.train.get_global_step()

    def after_run(self, run_context, run_values):
        if run_context.session.run(self._step) >= self._at:
            raise KeyboardInterrupt


def _train(flags, hooks=()):
    with tf.Graph().as_default():
        train.train(train.parse_args(flags), hooks)


@pytest.mark.slow
def test_two_stages_freeze_what_they_should_and_resume_in_either(photo_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = str(tmp_path / 'run')
    flags = ['--dataset', photo_dataset, '--pretrained', 'none', '--checkpoint-dir', out,
             '--image-size', '32', '--batch-size', '4', '--validate-every', '0', '--init', 'he',
             '--head-steps', '3', '--trainable-scopes', 'vgg_19/fc7,vgg_19/fc8',
             '--max-steps', '6', '--summary-every', '1', '--save-every-secs', '3600']
    with pytest.raises(KeyboardInterrupt):
        _train(flags, [_InterruptAt(2)])  # in the head stage
    assert 'head stage from step 0' in caplog.text
    caplog.clear()
    with pytest.raises(KeyboardInterrupt):
        _train(flags, [_InterruptAt(4)])  # in the main stage
    assert 'head stage from step 2' in caplog.text and 'main stage from step 3' in caplog.text
    caplog.clear()
    _train(flags)
    assert 'main stage from step 4' in caplog.text and 'head stage from' not in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-6')

    saved = {step: tf.train.load_checkpoint(os.path.join(out, 'model.ckpt-%d' % step))
             for step in (0, 2, 4, 6)}

    def same(name, a, b):
        return np.array_equal(saved[a].get_tensor(name), saved[b].get_tensor(name))
    for name in ('vgg_19/conv1/conv1_1/weights', 'vgg_19/conv5/conv5_4/biases',
                 'vgg_19/fc6/weights'):
        assert same(name, 0, 6), name  # frozen in both stages
    assert not same('vgg_19/fc8/weights', 0, 2)  # the head stage trains the head...
    assert same('vgg_19/fc7/weights', 0, 2)  # ...alone
    assert not same('vgg_19/fc7/weights', 2, 4) and not same('vgg_19/fc7/weights', 4, 6)
    assert not same('vgg_19/fc8/weights', 4, 6)

    # Slots for what each stage trains, none for the frozen variables, and no gradient either.
    names = saved[0].get_variable_to_shape_map()
    assert {'vgg_19/fc8/weights/head_Momentum', 'vgg_19/fc7/weights/Momentum',
            'vgg_19/fc8/weights/Momentum'} <= set(names)
    assert not [n for n in names if n.startswith(('vgg_19/conv', 'vgg_19/fc6/')) and
                'Momentum' in n]
    with open(os.path.join(out, 'graph.pbtxt')) as f:
        nodes = [line.split('"')[1] for line in f if line.startswith('  name: ')]
    gradients = [n for n in nodes if n.startswith('gradients')]
    assert [n for n in gradients if '/fc7/' in n]
    assert not [n for n in gradients if '/conv' in n or '/fc6/' in n]

    # The learning rate each step ran with (summarised at the step after it): 0.01 in the head
    # stage, then the polynomial decay from 1e-3 over the 3 remaining steps.
    steps, rates = evaluate.read_scalars(out, ['learning_rate'])['learning_rate']
    assert steps == [1, 2, 3, 4, 5, 6]
    args = train.parse_args(flags)
    assert rates == pytest.approx([train.stage_at(s - 1, args, 6)[1] for s in steps], rel=1e-6)
    assert rates[:3] == pytest.approx([0.01] * 3) and rates[3] == pytest.approx(1e-3)


@pytest.mark.slow
def test_best_checkpoint_and_evaluate_agree_with_validation(photo_dataset, tmp_path, capsys):
    out = str(tmp_path / 'run')
    flags = ['--dataset', photo_dataset, '--pretrained', 'none', '--checkpoint-dir', out,
             '--image-size', '32', '--batch-size', '4', '--val-batch-size', '4',
             '--trainable-scopes', 'vgg_19/fc8', '--init', 'he', '--dropout-keep-prob', '1',
             '--learning-rate', '3e-3', '--validate-every', '2', '--max-steps', '6']
    assert train.main(flags) == 0
    steps, values = evaluate.read_scalars(out, ['accuracy'])['accuracy']
    accuracy = dict(zip(steps, values))
    assert steps == [2, 4, 6]
    best = train.model.load_best(out)
    assert best['accuracy'] == pytest.approx(max(values))
    assert best['step'] == min(s for s in steps if accuracy[s] == max(values))
    capsys.readouterr()

    def run_evaluate(*flags):
        assert evaluate.main(['--checkpoint-dir', out, '--batch-size', '4', '--json'] +
                             list(flags)) == 0
        return json.loads(capsys.readouterr().out)
    latest = run_evaluate()
    assert latest['step'] == 6 and latest['num_examples'] == 6
    assert latest['top1'] == pytest.approx(accuracy[6], abs=1e-6)
    of_best = run_evaluate('--checkpoint', 'best')
    assert of_best['step'] == best['step']
    assert (of_best['top1'], of_best['top5']) == (best['accuracy'], best['accuracy_top5'])
    for name in ('confusion_matrix.csv', 'confusion_matrix.png', 'misclassified.csv',
                 'report.json'):
        assert os.path.isfile(os.path.join(out, 'eval', 'validation', name)), name
    sample = of_best['misclassified'][0]['image'] if of_best['misclassified'] else glob.glob(
        os.path.join(photo_dataset, '*', '*.jpg'))[0]
    assert inference.main(['--checkpoint-dir', out, '--checkpoint', 'best', '--json',
                           sample]) == 0
    assert json.loads(capsys.readouterr().out)['predictions']


@pytest.mark.slow
def test_early_stopping_after_validations_without_progress(photo_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = str(tmp_path / 'run')
    # A learning rate too small to move a float32 weight: every validation ties the first.
    flags = ['--dataset', photo_dataset, '--pretrained', 'none', '--checkpoint-dir', out,
             '--image-size', '32', '--batch-size', '4', '--trainable-scopes', 'vgg_19/fc8',
             '--learning-rate', '1e-15', '--end-learning-rate', '1e-15', '--schedule',
             'constant', '--validate-every', '1', '--early-stopping', '2', '--max-steps', '20',
             '--label-smoothing', '0.1', '--class-weights', 'balanced']
    assert train.main(flags) == 0
    assert 'early stopping: no better accuracy in 2 validations since step 1' in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-3')
    assert train.model.load_best(out)['step'] == 1


def _tiny_run(dataset, out, *flags):
    """tests/tiny_train.py for one step on `dataset` into `out`; its stderr."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tests', 'tiny_train.py'), '--dataset', dataset,
         '--checkpoint-dir', out, '--pretrained', 'none', '--image-size', '32', '--batch-size',
         '4', '--max-steps', '1', '--validate-every', '0'] + list(flags),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


@pytest.mark.slow
def test_the_graph_does_not_grow_with_the_dataset(tmp_path):
    # The file lists of training and validation are fed, not written into the graph: the graph,
    # every checkpoint's .meta and evaluate.py's graph are the same size for 50 as for 5,000
    # images (same classes, names of the same length).
    sizes = []
    for count in (50, 5000):
        root, out = str(tmp_path / ('d%d' % count)), str(tmp_path / ('run%d' % count))
        demo.make_many(root, count, classes=5)
        _tiny_run(root, out)
        # In a process of its own, as each run: the names of tf.data's functions count up
        # through a process.
        eval_graph = subprocess.run([sys.executable, '-c', EVAL_GRAPH_SIZE, root, out], cwd=ROOT,
                                    capture_output=True, text=True, timeout=300)
        assert eval_graph.returncode == 0, eval_graph.stderr[-2000:]
        sizes.append((os.path.getsize(os.path.join(out, 'graph.pbtxt')),
                      os.path.getsize(os.path.join(out, 'model.ckpt-1.meta')),
                      int(eval_graph.stdout)))
    assert sizes[0] == sizes[1]


EVAL_GRAPH_SIZE = """if True:
    import sys
    import tensorflow.compat.v1 as tf
    import data, evaluate, model
    tf.disable_eager_execution()
    evaluation = evaluate.build(data.load_dataset(sys.argv[1]).validation,
                                model.load_settings(sys.argv[2]), batch_size=8)
    print(tf.get_default_graph().as_graph_def().ByteSize())
"""
