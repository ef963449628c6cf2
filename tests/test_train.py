"""train.py: the schedule, the settings record, a short run that resumes, and its errors."""
import glob
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import train
from conftest import ROOT


def test_total_steps():
    assert train.total_steps(75750, 64, 20) == 20 * 1183
    assert train.total_steps(75750, 64, 20, max_steps=100) == 100
    assert train.total_steps(100, 32, 0.5) == 2


def test_learning_rate_at_follows_the_polynomial_decay_of_the_graph():
    step = tf.placeholder(tf.int64, [])
    graph_lr = tf.train.polynomial_decay(1e-3, step, 1000, 1e-7, power=1.0)
    with tf.Session() as session:
        for s in (0, 1, 250, 999, 1000, 1500):
            assert train.learning_rate_at(s, 1000, 1e-3) == pytest.approx(
                session.run(graph_lr, {step: s}), abs=1e-9)  # float32 in the graph
    assert train.learning_rate_at(0, 10, 1e-3) == 1e-3
    assert train.learning_rate_at(10, 10, 1e-3) == pytest.approx(1e-7)
    assert train.learning_rate_at(5, 10, 1.0, end=0.0, power=2.0) == pytest.approx(0.25)


def test_recipe_defaults():
    args = train.parse_args([])
    assert (args.dataset, args.pretrained, args.checkpoint_dir) == (
        'data/food-101', 'data/vgg_19.ckpt', 'checkpoints/vgg19_food')
    assert (args.image_size, args.epochs) == (224, 20)
    assert (args.batch_size, args.val_batch_size) == (64, 128)
    assert (args.learning_rate, args.end_learning_rate, args.momentum) == (1e-3, 1e-7, 0.9)
    assert (args.save_every_secs, args.summary_every, args.validate_every) == (600, 30, 500)
    assert args.exclude_scopes == 'vgg_19/fc8'


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
    for tag in ('loss', 'total_loss', 'learning_rate', 'accuracy', 'accuracy_top5'):
        assert tag in tags, tag
    assert sorted(tags['accuracy']) == [2, 3]  # every 2 steps and at the end
    assert 'validation at step 3: accuracy' in caplog.text and '(6 images' in caplog.text

    # Interrupted at step 3, run again with more steps: the global step continues and the
    # momentum comes back from the checkpoint rather than starting at zero.
    caplog.clear()
    assert train.main(flags + ['--max-steps', '5']) == 0
    assert 'resuming from' in caplog.text and '(step 3)' in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-5')
    saved = tf.train.load_checkpoint(out).get_variable_to_shape_map()
    assert 'vgg_19/fc8/weights/Momentum' in saved
    assert 'vgg_19/fc7/weights/Momentum' not in saved  # frozen: no slots
    assert 'step 5/5' in caplog.text and 'step 1/' not in caplog.text

    # Resuming with more variables to train (the last flag given wins) needs momentum slots the
    # checkpoint lacks.
    assert train.main(flags + ['--max-steps', '7', '--trainable-scopes', '']) == 2
    assert 'another --optimizer or --trainable-scopes' in capsys.readouterr().err


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
