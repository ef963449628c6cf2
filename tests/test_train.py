"""train.py: schedules and stages, optimizers, the settings record, runs that resume, best
checkpoints, early stopping, and the errors."""
import argparse
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import tensorflow.compat.v1 as tf

import data
import demo
import evaluate
import inference
import model
import rundir
import tiny_train
import train
from conftest import CHEAP_RUN, ROOT, random_image, run_script, usage_error


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


def test_a_trigger_fires_once_per_multiple_even_where_the_steps_jump():
    # Logging and validation every 3 steps; an asynchronous cluster's chief sees 98 then 101.
    assert [s for s in range(1, 11) if train.crossed(s - 1, s, 3)] == [3, 6, 9]
    assert train.crossed(98, 101, 100) and not train.crossed(101, 150, 100)
    assert not train.crossed(0, 5, 0)  # 0: never


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
    assert message in usage_error(train.parse_args, flags, capsys)
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
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out] + CHEAP_RUN + [
             '--val-batch-size', '5',
             '--trainable-scopes', 'vgg_19/fc8', '--validate-every', '2', '--summary-every', '1',
             '--log-every', '1']
    assert train.main(flags + ['--max-steps', '3']) == 0
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-3')
    assert 'starting from scratch' in caplog.text
    settings = rundir.load_settings(out)
    assert settings['class_ids'] == ['astronaut', 'camera', 'coffee']
    assert settings['image_size'] == 32 and settings['fc_conv_padding'] == 'SAME'
    tags = _events(out)
    for tag in ('loss', 'total_loss', 'learning_rate', 'accuracy', 'train_accuracy',
                'inputs/image/0'):
        assert tag in tags, tag
    assert 'accuracy_top5' not in tags  # of 3 classes, always 1
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
    rundir.save_settings(out, {'class_ids': ['x', 'y'], 'class_names': ['x', 'y'],
                               'image_size': 32, 'fc_conv_padding': 'SAME',
                               'global_pool': True, 'preprocessing': {}})
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out] + CHEAP_RUN + [
             '--max-steps', '1', '--validate-every', '0',
             '--trainable-scopes', 'vgg_19/fc8']
    # Settings without a checkpoint describe no model yet: a new run replaces them.
    assert train.main(flags) == 0
    assert rundir.load_settings(out)['class_ids'] == ['astronaut', 'camera', 'coffee']
    assert train.main(flags + ['--image-size', '64']) == 2
    assert 'other image size (32)' in capsys.readouterr().err
    assert train.main(flags + ['--val-fraction', '0.5']) == 2
    assert 'other split (class folders, split 20%' in capsys.readouterr().err


def _cli(*args):
    code, _, err = run_script('train.py', *args)
    return code, err.strip().splitlines()[-1]


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
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out] + CHEAP_RUN + [
             '--trainable-scopes', 'vgg_19/fc8',
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
               '--checkpoint-dir', out] + CHEAP_RUN + [
        '--trainable-scopes', 'vgg_19/fc8', '--validate-every', '0', '--save-every-secs', '2',
        '--epochs', '100000', '--max-steps', '100000']
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


def test_ctrl_c_during_the_loop_is_noted_for_it_and_the_handler_put_back():
    before = signal.getsignal(signal.SIGINT)
    with train.interrupt_between_steps() as interrupted:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here, wherever that is
        time.sleep(0.01)
        assert interrupted == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before


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
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out] + CHEAP_RUN + [
             '--validate-every', '0', '--init', 'he',
             '--head-steps', '3', '--trainable-scopes', 'vgg_19/fc7,vgg_19/fc8',
             '--max-steps', '6', '--summary-every', '1', '--save-every-steps', '1',
             '--keep-checkpoints', '6']
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

    # Checkpoint k holds the weights after k updates: 1-3 of the head stage, 4-6 of the main.
    saved = {step: tf.train.load_checkpoint(os.path.join(out, 'model.ckpt-%d' % step))
             for step in range(1, 7)}

    def same(name, a, b):
        return np.array_equal(saved[a].get_tensor(name), saved[b].get_tensor(name))
    for name in ('vgg_19/conv1/conv1_1/weights', 'vgg_19/conv5/conv5_4/biases',
                 'vgg_19/fc6/weights'):
        assert same(name, 1, 6), name  # frozen in both stages
    assert not same('vgg_19/fc8/weights', 1, 2)  # the head stage trains the head...
    assert same('vgg_19/fc7/weights', 1, 3)  # ...alone
    assert not same('vgg_19/fc7/weights', 3, 4) and not same('vgg_19/fc7/weights', 4, 6)
    assert not same('vgg_19/fc8/weights', 4, 6)

    # Slots for what each stage trains, none for the frozen variables, and no gradient either.
    names = saved[1].get_variable_to_shape_map()
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
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out] + CHEAP_RUN + [
             '--val-batch-size', '4',
             '--trainable-scopes', 'vgg_19/fc8', '--init', 'he', '--dropout-keep-prob', '1',
             '--learning-rate', '3e-3', '--validate-every', '2', '--max-steps', '6']
    assert train.main(flags) == 0
    steps, values = evaluate.read_scalars(out, ['accuracy'])['accuracy']
    accuracy = dict(zip(steps, values))
    assert steps == [2, 4, 6]
    best = rundir.load_best(out)
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
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out] + CHEAP_RUN + [
             '--trainable-scopes', 'vgg_19/fc8',
             '--learning-rate', '1e-15', '--end-learning-rate', '1e-15', '--schedule',
             'constant', '--validate-every', '1', '--early-stopping', '2', '--max-steps', '20',
             '--label-smoothing', '0.1', '--class-weights', 'balanced']
    assert train.main(flags) == 0
    assert 'early stopping: no better accuracy in 2 validations since step 1' in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-3')
    assert rundir.load_best(out)['step'] == 1


def test_a_dataset_of_one_class_is_a_one_line_error(tmp_path, capsys):
    # It used to train, and report validation accuracy 1.0.
    (tmp_path / 'only').mkdir()
    for i in range(4):
        PIL.Image.fromarray(random_image(40, 40)).save(str(tmp_path / 'only' / ('%d.jpg' % i)))
    assert train.main(['--dataset', str(tmp_path), '--pretrained', 'none',
                       '--checkpoint-dir', str(tmp_path / 'run')]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        'has 1 class (only): a classifier needs two or more, one folder of images each')


def test_time_left_counts_the_validations_still_to_come():
    assert train.time_left(0, 100, 1.0, 0, 5.0) == 100 + 5  # the one at the end
    # Validations at 30, 60, 90, and at the end (100): 4 of them.
    assert train.time_left(10, 100, 2.0, 30, 4.0) == 90 * 2 + 4 * 4
    assert train.time_left(30, 90, 1.0, 30, 10.0) == 60 + 2 * 10  # 60, 90 (the end)
    assert train.time_left(100, 100, 1.0, 30, 10.0) == 10  # the last step's, still to run


def test_clock_reads_in_minutes_and_seconds_below_an_hour():
    assert [train.clock(s) for s in (42, 59.6, 65, 3599, 3725)] == [
        '42s', '1m00s', '1m05s', '59m59s', '1h02m']


def test_training_from_scratch_starts_from_he_initialisation():
    # Glorot's scale shrinks the signal through 19 ReLU layers: from scratch it sat at chance.
    assert train.parse_args(['--pretrained', 'none']).init == 'he'
    assert train.parse_args([]).init == 'xavier'  # the new head over ImageNet weights, as slim
    assert train.parse_args(['--pretrained', 'none', '--init', 'xavier']).init == 'xavier'


# ---------------------------------------------------------------------------------------------
# Runs of train.py with tests/tiny_train.py's two-layer network in place of VGG19: what these
# check (the loss, the data, the checkpoint directory across restarts) is train.py's, and a
# step takes milliseconds, not seconds.

@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(model, 'vgg_19', tiny_train.tiny_vgg_19)


# fp32 on every CPU kind: the loss is compared with a formula in float64. No feature cache:
# the tiny network has no end points to start from.
TINY = CHEAP_RUN + ['--log-every', '1', '--summary-every', '1', '--save-every-secs', '3600',
                    '--precision', 'fp32', '--feature-cache', 'off']


def _colour_dataset(root, per_class=10):
    """Three classes of noisy grey squares, a little red, green or blue: told apart by colour
    alone. Near the means, so that they make small inputs: the random first weights give logits
    near 0, a loss near ln 3, and gradients that are not saturated."""
    rng = np.random.RandomState(0)
    for channel, name in enumerate(('red', 'green', 'blue')):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            image = np.round(data.MEANS) + rng.randint(-1, 2, [40, 40, 3])
            image[..., channel] += 4
            PIL.Image.fromarray(image.astype(np.uint8)).save(
                os.path.join(root, name, '%d.png' % i))
    return root


@pytest.mark.slow
def test_training_learns(tiny, tmp_path, monkeypatch):
    # The same first weights every time: from some random ones (about 1 in 6 runs) this small
    # network's loss swung for the 60 steps instead of settling.
    def seeded(*args, **kwargs):
        tf.set_random_seed(1)
        return tiny_train.tiny_vgg_19(*args, **kwargs)
    monkeypatch.setattr(model, 'vgg_19', seeded)
    out = str(tmp_path / 'run')
    flags = ['--dataset', _colour_dataset(str(tmp_path / 'colours')), '--checkpoint-dir', out,
             '--max-steps', '60', '--validate-every', '0', '--learning-rate', '0.01',
             '--schedule', 'constant'] + TINY
    assert train.main(flags) == 0
    steps, losses = evaluate.read_scalars(out, ['loss'])['loss']
    assert steps == list(range(1, 61))
    # From near ln 3 = 1.1 (chance) at the start to ~0.005 (measured); labels that do not
    # belong to their images cannot go under ~1 on average.
    assert np.mean(losses[-10:]) < 0.1, losses
    steps, accuracy = evaluate.read_scalars(out, ['accuracy'])['accuracy']
    assert steps == [60] and accuracy == [1.0]  # 6 validation images; chance 1/3


class _Fetch(tf.train.SessionRunHook):
    """The values of `fetches()` (made once the graph is built) at every step."""

    def __init__(self, fetches):
        self._make, self.values = fetches, []

    def begin(self):
        self._fetches = self._make()

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(self._fetches)

    def after_run(self, run_context, run_values):
        self.values.append(run_values.results)


@pytest.mark.slow
def test_label_smoothing_and_class_weights_reach_the_loss(tiny, tmp_path, photo_dataset,
                                                          monkeypatch):
    # Imbalanced: coffee keeps 3 of its 8 photos, so 2 for training (and 6 of each other).
    root = str(tmp_path / 'imbalanced')
    shutil.copytree(photo_dataset, root)
    for name in sorted(os.listdir(os.path.join(root, 'coffee')))[3:]:
        os.remove(os.path.join(root, 'coffee', name))
    towers, tower_loss = [], train.tower_loss

    def recorded(images, labels, *args, **kwargs):
        towers.append(dict(tower_loss(images, labels, *args, **kwargs), labels=labels))
        return towers[-1]
    monkeypatch.setattr(train, 'tower_loss', recorded)
    fetch = _Fetch(lambda: {key: towers[0][key] for key in ('logits', 'labels', 'loss')})
    smoothing = 0.2
    _train(['--dataset', root, '--checkpoint-dir', str(tmp_path / 'run'), '--max-steps', '5',
            '--validate-every', '0', '--label-smoothing', str(smoothing),
            '--class-weights', 'balanced'] + TINY, [fetch])
    assert len(towers) == 1 and len(fetch.values) == 5
    # README: the true class's target is 1 - s + s/K, every other class's s/K; each image
    # weighs images / (classes x images of its class): 14 / (3 x 6) and 14 / (3 x 2).
    counts = np.bincount(data.load_dataset(root).train.labels)
    assert counts.tolist() == [6, 6, 2]
    weight = 14 / (3 * counts)
    for value in fetch.values:
        logits = value['logits'].astype(np.float64)
        log_p = logits - logits.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        target = np.full(logits.shape, smoothing / 3)
        target[np.arange(4), value['labels']] = 1 - smoothing + smoothing / 3
        expected = np.mean(weight[value['labels']] * -(target * log_p).sum(1))
        assert value['loss'] == pytest.approx(expected, rel=1e-5)
    # A batch of 4 from 14 images, 2 of them coffee: over 5 steps, some hold both weights.
    assert len({w for value in fetch.values for w in weight[value['labels']]}) == 2


def test_total_loss_holds_the_weight_decay_of_what_trains_and_nothing_frozen(tiny):
    settings = {'class_ids': ['a', 'b', 'c'], 'fc_conv_padding': 'SAME', 'global_pool': True}
    images = tf.constant(np.random.RandomState(0).normal(0, 50, [2, 32, 32, 3]), tf.float32)
    labels = tf.constant([0, 2], tf.int32)
    options = dict(weight_decay=0.01, init='he', dropout_keep_prob=1.0)
    head = train.tower_loss(images, labels, settings, trained_scopes=['vgg_19/fc8'], **options)
    whole = train.tower_loss(images, labels, settings, reuse=True, **options)
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        head, whole, weights = session.run((head, whole, {v.op.name: v for v in
                                                          tf.trainable_variables()}))
    # slim's l2_regularizer(0.01): 0.01 * sum(w^2) / 2, for each layer's weights (not biases).
    decay = {name: 0.01 * np.sum(np.square(w.astype(np.float64))) / 2
             for name, w in weights.items() if name.endswith('weights')}
    assert sorted(decay) == ['vgg_19/conv1/conv1_1/weights', 'vgg_19/fc8/weights']
    assert head['total_loss'] - head['loss'] == pytest.approx(decay['vgg_19/fc8/weights'],
                                                              rel=1e-4)
    assert whole['total_loss'] - whole['loss'] == pytest.approx(sum(decay.values()), rel=1e-4)


@pytest.mark.parametrize('trained, windows', [
    (['vgg_19/fc8'], False), (['vgg_19/fc7', 'vgg_19/fc8'], False),
    (['vgg_19/fc6', 'vgg_19/fc7', 'vgg_19/fc8'], True), (['vgg_19'], True), (None, True)])
def test_a_tower_takes_fc6_through_all_its_windows_only_where_a_stage_trains_it(trained, windows):
    settings = {'class_ids': ['a', 'b', 'c'], 'fc_conv_padding': 'SAME', 'global_pool': True}
    train.tower_loss(tf.zeros([1, 128, 128, 3]), tf.constant([0]), settings,
                     trained_scopes=trained)
    ops = {op.type for op in tf.get_default_graph().get_operations()}
    assert ('ExtractImagePatches' in ops) == windows


def _checkpoint_steps(directory):
    return sorted(int(n.split('-')[1].split('.')[0]) for n in os.listdir(directory)
                  if n.startswith('model.ckpt-') and n.endswith('.index'))


@pytest.mark.slow
def test_keep_checkpoints_keeps_that_many_across_restarts(tiny, tmp_path, photo_dataset):
    out = str(tmp_path / 'run')
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out, '--validate-every', '0',
             '--save-every-steps', '1', '--keep-checkpoints', '2'] + TINY
    assert train.main(flags + ['--max-steps', '6']) == 0
    assert _checkpoint_steps(out) == [5, 6]
    assert train.main(flags + ['--max-steps', '9']) == 0
    assert _checkpoint_steps(out) == [8, 9]
    state = tf.train.get_checkpoint_state(out)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        'model.ckpt-8', 'model.ckpt-9']


@pytest.mark.slow
def test_resuming_with_other_classes_is_refused(tiny, tmp_path, photo_dataset, capsys):
    root, out = str(tmp_path / 'photos'), str(tmp_path / 'run')
    shutil.copytree(photo_dataset, root)
    flags = ['--dataset', root, '--checkpoint-dir', out, '--max-steps', '1',
             '--validate-every', '0'] + TINY
    assert train.main(flags) == 0
    # As many classes as before (the same head shape), under another name.
    os.rename(os.path.join(root, 'coffee'), os.path.join(root, 'tea'))
    assert train.main(flags + ['--max-steps', '2']) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "train.py: error: %s holds a model trained with other classes (['astronaut', 'camera', "
        "'coffee']) than this run (['astronaut', 'camera', 'tea']): use a new --checkpoint-dir"
        % out)
    assert _checkpoint_steps(out) == [1]  # nothing written


@pytest.mark.slow
def test_early_stopping_counts_the_validations_before_a_restart(tiny, tmp_path, photo_dataset,
                                                                caplog):
    caplog.set_level(logging.INFO)
    out = str(tmp_path / 'run')
    # Too small a learning rate to move a float32 weight: every validation ties the first.
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out, '--learning-rate', '1e-15',
             '--end-learning-rate', '1e-15', '--schedule', 'constant', '--validate-every', '1',
             '--early-stopping', '3'] + TINY
    assert train.main(flags + ['--max-steps', '2']) == 0  # the best at step 1, then one more
    assert rundir.load_best(out)['step'] == 1
    assert train.main(flags + ['--max-steps', '20']) == 0  # two more, at steps 3 and 4
    assert 'early stopping: no better accuracy in 3 validations since step 1' in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-4')


def _tiny_run(dataset, out, *flags):
    """tests/tiny_train.py for one step on `dataset` into `out`; its stderr."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tests', 'tiny_train.py'), '--dataset', dataset,
         '--checkpoint-dir', out, '--max-steps', '1', '--validate-every', '0'] + CHEAP_RUN
        + list(flags),
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
    import data, evaluate, rundir
    tf.disable_eager_execution()
    evaluation = evaluate.build(data.load_dataset(sys.argv[1]).validation,
                                rundir.load_settings(sys.argv[2]), batch_size=8)
    print(tf.get_default_graph().as_graph_def().ByteSize())
"""
