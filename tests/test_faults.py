"""Faults: damaged checkpoint state, kills at random moments (during saves too), a NaN on a save
step, a dataset with planted bad files, hostile images at inference, and memory over time."""
import json
import logging
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import PIL.Image
import tensorflow.compat.v1 as tf

import data
import evaluate
import export
import inference
import model
import rundir
import tiny_train
import train
from conftest import (BROKEN_PRETRAINED, CHEAP_RUN, CONV1, EXCEPT_CONV1_1, PHOTOS, ROOT,
                      conv1_values, model_settings, random_image, save_variables,
                      usage_error)


def _save_steps(directory, steps, poison=None):
    """model.ckpt-<step> checkpoints of two small variables, as train.py's Saver writes them;
    the one at step `poison` holds a NaN."""
    with tf.Graph().as_default():
        weights = tf.Variable(np.arange(1000, dtype=np.float32), name='weights')
        step = tf.train.get_or_create_global_step()
        saver = tf.train.Saver(sharded=True, max_to_keep=10)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            for s in steps:
                session.run([step.assign(s), weights.assign(
                    np.full(1000, np.nan if s == poison else s, np.float32))])
                saver.save(session, os.path.join(directory, 'model.ckpt'), global_step=s)


def _truncate(path):
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:len(content) // 2])


def _state(directory, content):
    with open(os.path.join(directory, 'checkpoint'), 'w') as f:
        f.write(content)


@pytest.mark.parametrize('damage, expected, problem', [
    (lambda d: _state(d, 'garbage {{{'), 3, 'is not a checkpoint state'),
    (lambda d: _state(d, ''), 3, 'is unreadable'),
    (lambda d: _state(d, 'model_checkpoint_path: "/gone/model.ckpt-9"\n'), 3, 'does not exist'),
    (lambda d: os.remove(os.path.join(d, 'checkpoint')), 3, 'no state file'),
    (lambda d: _truncate(os.path.join(d, 'model.ckpt-3.data-00000-of-00001')), 2,
     'model.ckpt-3 cannot be restored'),
    (lambda d: _truncate(os.path.join(d, 'model.ckpt-3.index')), 2,
     'model.ckpt-3 cannot be restored'),
    (lambda d: open(os.path.join(d, 'model.ckpt-3.index'), 'w').close(), 2,
     'model.ckpt-3 cannot be restored'),
    (lambda d: os.remove(os.path.join(d, 'model.ckpt-3.data-00000-of-00001')), 2,
     'model.ckpt-3 cannot be restored'),
])
def test_damaged_state_leads_to_the_newest_checkpoint_that_restores(tmp_path, damage, expected,
                                                                    problem):
    directory = str(tmp_path)
    _save_steps(directory, [1, 2, 3])
    damage(directory)
    chosen, problems = rundir.recover_checkpoints(directory)
    assert chosen == os.path.join(directory, 'model.ckpt-%d' % expected)
    assert any(problem in p for p in problems), problems
    assert 'the state file now names model.ckpt-%d' % expected in problems[-1]
    # TensorFlow's own lookup, as MonitoredTrainingSession makes it, now finds it, and it
    # restores; a damaged newer one is set aside, not deleted.
    assert tf.train.latest_checkpoint(directory) == chosen
    assert tf.train.load_checkpoint(chosen).get_tensor('weights')[0] == expected
    if expected == 2:
        assert not os.path.exists(os.path.join(directory, 'model.ckpt-3.index'))
        assert [n for n in os.listdir(directory) if n.startswith('model.ckpt-3.')
                and n.endswith('.damaged')]
    # Repaired: the next start finds nothing wrong.
    assert rundir.recover_checkpoints(directory) == (chosen, [])


def test_a_checkpoint_with_nan_is_never_resumed_from(tmp_path):
    _save_steps(str(tmp_path), [1, 2], poison=2)
    chosen, problems = rundir.recover_checkpoints(str(tmp_path))
    assert chosen.endswith('model.ckpt-1') and 'NaN or infinite values in weights' in problems[0]


def test_leftovers_of_an_interrupted_save_are_removed(tmp_path):
    directory = str(tmp_path)
    _save_steps(directory, [1])
    os.makedirs(os.path.join(directory, 'model.ckpt-2_temp'))
    open(os.path.join(directory, 'model.ckpt-2_temp', 'part-00000-of-00001.index'), 'w').close()
    open(os.path.join(directory, 'checkpoint.tempstate123'), 'w').close()
    chosen, problems = rundir.recover_checkpoints(directory)
    assert chosen.endswith('model.ckpt-1') and len(problems) == 2
    assert sorted(os.listdir(directory)) == ['checkpoint', 'model.ckpt-1.data-00000-of-00001',
                                             'model.ckpt-1.index', 'model.ckpt-1.meta']


def test_a_directory_whose_checkpoints_are_all_damaged_is_an_error(tmp_path):
    directory = str(tmp_path)
    _save_steps(directory, [1])
    _truncate(os.path.join(directory, 'model.ckpt-1.index'))
    with pytest.raises(model.CheckpointError, match='no checkpoint in .* can be restored'):
        rundir.recover_checkpoints(directory)
    assert os.path.exists(os.path.join(directory, 'model.ckpt-1.index'))  # left as it was
    assert rundir.recover_checkpoints(str(tmp_path / 'new')) == (None, [])


def test_best_record_describes_the_weights_beside_it_or_nothing(tmp_path):
    directory = str(tmp_path)
    with tf.Graph().as_default():
        tf.Variable(1.0, name='w')
        saver = rundir.best_saver(directory, tf.global_variables())
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            rundir.save_best(session, saver, directory, {'step': 5, 'accuracy': 0.5})
            assert rundir.load_best(directory)['checkpoint'] == 'model.ckpt-5'
            # Killed after the weights of step 9 were saved, before their record was written:
            saver.save(session, os.path.join(directory, rundir.BEST_DIR, 'model.ckpt'), 9,
                       write_meta_graph=False)
            assert rundir.load_best(directory) is None
            rundir.save_best(session, saver, directory, {'step': 9, 'accuracy': 0.25})
            assert rundir.load_best(directory)['accuracy'] == 0.25


# ---------------------------------------------------------------------------------------------
# Hostile images: each gives a clear per-file message or the right pixels, never a traceback.

def _png_header(path, width, height):
    """A PNG whose header claims width x height (its pixel data is missing): decoding it would
    allocate width * height * 3 bytes before noticing."""
    def chunk(kind, body):
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff))
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))
    return path


def _hostile_files(directory):
    """{name: (path, what read_rgb must give: an array, or a piece of its error message)}."""
    rgb = _smooth()
    files = {}

    def save(name, image, expected, **options):
        path = os.path.join(directory, name)
        image.save(path, **options)
        files[name] = (path, expected)
    save('photo.jpg', PIL.Image.fromarray(rgb), None, quality=95)
    with open(files['photo.jpg'][0], 'rb') as f:
        jpeg = f.read()
    for name, content, message in (('empty.jpg', b'', 'cannot identify image file'),
                                   ('random.jpg', os.urandom(2000), 'cannot identify image file'),
                                   ('truncated.jpg', jpeg[:len(jpeg) // 2], 'truncated')):
        with open(os.path.join(directory, name), 'wb') as f:
            f.write(content)
        files[name] = (os.path.join(directory, name), message)
    save('one.png', PIL.Image.fromarray(rgb[:1, :1]), rgb[:1, :1])
    save('strip.png', PIL.Image.fromarray(rgb[:1, :]), rgb[:1, :])
    save('palette.png', PIL.Image.fromarray(rgb).convert('P', palette=PIL.Image.ADAPTIVE),
         'palette')
    save('cmyk.jpg', PIL.Image.fromarray(rgb).convert('CMYK'), 'cmyk')
    save('deep.png', PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
         np.repeat(rgb[..., :1], 3, axis=2))
    frames = [PIL.Image.fromarray(rgb), PIL.Image.fromarray(255 - rgb)]
    save('animated.gif', frames[0], 'first frame', save_all=True, append_images=frames[1:])
    exif = PIL.Image.Exif()
    exif[inference.EXIF_ORIENTATION] = 6  # stored turned left: shown turned right
    save('rotated.jpg', PIL.Image.fromarray(rgb), 'rotated', quality=95, exif=exif)
    files['huge.png'] = (_png_header(os.path.join(directory, 'huge.png'), 30000, 30000),
                         '30000x30000 pixels is over --max-pixels')
    files['bomb.png'] = (_png_header(os.path.join(directory, 'bomb.png'), 100000, 100000),
                         '100000x100000 pixels is over --max-pixels')
    files['long.png'] = (_png_header(os.path.join(directory, 'long.png'), 1, 20000000),
                         'short side resized to 36')
    return files


def test_each_hostile_image_reads_right_or_fails_with_a_message(tmp_path):
    files = _hostile_files(str(tmp_path))
    photo = inference.read_rgb(files['photo.jpg'][0], 50e6)
    for name, (path, expected) in files.items():
        if isinstance(expected, str) and expected not in ('palette', 'cmyk', 'rotated',
                                                          'first frame'):
            with pytest.raises(Exception) as error:
                inference.read_rgb(path, 50e6, resize_side=36)
            assert expected.lower() in str(error.value).lower(), name
            continue
        image = inference.read_rgb(path, 50e6, resize_side=36)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(image, expected, err_msg=name)
        elif expected == 'rotated':  # the same JPEG pixels, shown turned right
            np.testing.assert_array_equal(image, np.rot90(photo, -1))
        else:  # near the picture it was made from (JPEG, palette and CMYK round a little)
            assert np.abs(image.astype(float) - _smooth()).mean() < 8, name


def _smooth():
    """A 40x60 picture with smooth colours, which JPEG and a palette keep nearly as it is."""
    y, x = np.mgrid[0:40, 0:60]
    return np.stack([x * 4, y * 6, 255 - x * 2 - y], axis=2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Training killed, poisoned and fed bad files.

# The cheapest real run: the demo's 32 px and frozen base, a small batch, frequent saves.
CHEAP = CHEAP_RUN + ['--init', 'he', '--trainable-scopes', 'vgg_19/fc8', '--validate-every', '0',
                     '--save-every-steps', '2', '--keep-checkpoints', '2', '--log-every', '1']


def _step(prefix):
    return int(prefix.rsplit('-', 1)[1]) if prefix else -1


def _names(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _kill_when(process, log_path, directory, ready, timeout=600):
    """Wait until `ready(log text, file names)` holds, then kill -9 the process group."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        with open(log_path) as f:
            text = f.read()
        if ready(text, _names(directory)):
            assert process.poll() is None, 'ended before the kill'
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return
        time.sleep(0.01)
    with open(log_path) as f:
        raise AssertionError('%s (exit status %s) never got there:\n%s'
                             % (log_path, process.poll(), f.read()[-3000:]))


@pytest.mark.slow
def test_kill_9_at_random_moments_and_during_saves_then_resume_to_the_planned_end(
        photo_dataset, tmp_path, capsys):
    out, last_step = str(tmp_path / 'run'), 16
    command = [sys.executable, os.path.join(ROOT, 'train.py'), '--dataset', photo_dataset,
               '--checkpoint-dir', out, '--max-steps', str(last_step)] + CHEAP
    rng = random.Random(7)
    resumed, plans, resumes = -1, [], []

    def saving(text, names):  # a checkpoint past the last resume is being written
        # (once this run removed what the last kill left: it logs its stage by then)
        return 'stage from step' in text and any(
            n.endswith('_temp') and _step(n[:-len('_temp')]) > max(resumed, 0) for n in names)

    def stepped(text, names):  # the run has logged step `target` (set below) or a later one
        steps = re.findall(r'step (\d+)/', text)
        return bool(steps) and int(steps[-1]) >= target
    # Before the fourth start the state file is garbage, which TensorFlow alone would take
    # for no checkpoint at all.
    moments = [saving, stepped, saving, stepped, saving, None]
    for attempt, moment in enumerate(moments):
        named = _step(tf.train.latest_checkpoint(out))
        if attempt == 3:
            with open(os.path.join(out, 'checkpoint'), 'w') as f:
                f.write('garbage {{{')
        log_path = str(tmp_path / ('log%d' % attempt))
        with open(log_path, 'w') as log:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                       start_new_session=True)
        # A random step 2 to 4 past where this run resumes (a run does not log its first
        # step), read from the log: a sleep instead would stand for another number of steps,
        # or the end, on a loaded machine.
        target = rng.randint(max(named, 0) + 2, max(named, 0) + 4)
        assert moment is not stepped or target < last_step, (attempt, named)
        try:
            if moment:
                _kill_when(process, log_path, out, moment)
            else:
                assert process.wait(timeout=600) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        with open(log_path) as f:
            text = f.read()
        assert 'Traceback' not in text, text[-3000:]
        if named >= 0:  # a checkpoint to resume from (a run saves its first at a step)
            match = re.search(r'resuming from \S+ \(step (\d+)\)', text)
            assert match, text[-3000:]
            step = int(match.group(1))
            assert step >= max(resumed, named), (attempt, step, resumed, named)
            resumed = step
            resumes.append(step)
        else:  # killed before its first checkpoint, or during it: a start from scratch
            assert 'starting from scratch' in text, text[-3000:]
        if attempt == 3:
            assert 'is not a checkpoint state' in text
        if attempt and moments[attempt - 1] is saving:  # what the killed save left is gone
            assert re.search(r'removed model\.ckpt-\d+_temp, left by an interrupted save', text)
        with open(os.path.join(out, rundir.SETTINGS_FILE)) as f:
            plans.append(json.load(f)['plan']['last_step'])
    with capsys.disabled():
        print('resumed at steps', resumes)
    assert plans == [last_step] * 6 and resumed > 0
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-%d' % last_step)
    assert not [n for n in _names(out) if n.endswith('_temp') or 'tempstate' in n]

    # The validation at the end of the last run saw the weights of the last checkpoint.
    steps, values = evaluate.read_scalars(out, ['accuracy'])['accuracy']
    assert steps == [last_step]
    capsys.readouterr()
    assert evaluate.main(['--checkpoint-dir', out, '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['step'] == last_step and report['top1'] == pytest.approx(values[-1], abs=1e-6)


@pytest.mark.slow
def test_nan_on_a_save_step_stops_before_the_save(photo_dataset, tmp_path, monkeypatch, capsys,
                                                  caplog):
    caplog.set_level(logging.INFO)
    out = str(tmp_path / 'run')
    flags = ['--dataset', photo_dataset, '--checkpoint-dir', out, '--max-steps', '6'] + CHEAP
    schedule = train.stage_at

    def poisoned(step, args, last_step):  # the update from step 3 to 4, a save step, goes NaN
        stage, rate = schedule(step, args, last_step)
        return stage, float('nan') if step == 3 else rate
    monkeypatch.setattr(train, 'stage_at', poisoned)
    assert train.main(flags) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith('train.py: error: the loss or the weights became NaN or infinite at '
                            'step 4; nothing of that step was saved. Lower --learning-rate')
    latest = tf.train.latest_checkpoint(out)
    assert latest.endswith('model.ckpt-2') and not os.path.exists(
        os.path.join(out, 'model.ckpt-4.index'))
    assert model.checkpoint_problem(latest) is None  # every value reads back, finite
    monkeypatch.setattr(train, 'stage_at', schedule)
    assert train.main(flags) == 0  # and it restores: the same command resumes there
    assert 'resuming from %s (step 2)' % latest in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-6')


def _planted_dataset(root, photo_dataset, outside):
    """The photo dataset with bad files planted in a class folder: {path: what is wrong}."""
    shutil.copytree(photo_dataset, root)
    folder = os.path.join(root, 'camera')
    good = sorted(os.listdir(folder))[0]
    with open(os.path.join(folder, good), 'rb') as f:
        jpeg = f.read()
    bad = {}
    for name, content in (('empty.jpg', b''), ('truncated.jpg', jpeg[:len(jpeg) // 3]),
                          ('text.png', b'<html>not an image</html>')):
        bad[os.path.join(folder, name)] = 'cannot be decoded'
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(content)
    bad[_png_header(os.path.join(folder, 'huge.png'), 30000, 30000)] = '30000x30000 pixels'
    bad[_png_header(os.path.join(folder, 'strip.png'), 200000, 1)] = 'short side resized to 73'
    shutil.copy(os.path.join(folder, good), outside)
    os.symlink(outside, os.path.join(folder, 'link.jpg'))
    return bad


def test_planted_bad_files_are_found_named_and_counted(photo_dataset, tmp_path, caplog):
    root = str(tmp_path / 'planted')
    bad = _planted_dataset(root, photo_dataset, str(tmp_path / 'outside.jpg'))
    dataset = data.load_dataset(root)
    assert 'that are links to files outside' in caplog.text and 'link.jpg' in caplog.text
    everything = dataset.train.paths + dataset.validation.paths
    assert not [p for p in everything if p.endswith('link.jpg')] and set(bad) <= set(everything)
    with pytest.raises(data.DatasetError, match=r'5 of the 29 images .* \(17\.2%\) cannot be '
                                                r'used, more than --max-unreadable 0\.1'):
        data.drop_unreadable(dataset, max_share=0.1, resize_side=73)
    caplog.clear()
    cache = str(tmp_path / 'unreadable.json')
    kept = data.drop_unreadable(dataset, cache, max_share=0.2, resize_side=73)
    assert len(kept.train.paths) + len(kept.validation.paths) == 24
    for path, why in bad.items():
        assert path in caplog.text and why in json.load(open(cache))['unreadable'][path]
    assert 'skipping 3 file(s) that cannot be decoded' in caplog.text
    assert 'skipping 2 file(s) too large to decode' in caplog.text


class _Memory(tf.train.SessionRunHook):
    """After each step (and the validation in it): the process's resident memory, and whether
    the graph is finalized."""

    def __init__(self):
        self.rss, self.finalized = [], []

    def after_run(self, run_context, run_values):
        with open('/proc/self/statm') as f:
            self.rss.append(int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE'))
        self.finalized.append(run_context.session.graph.finalized)


@pytest.mark.slow
def test_planted_dataset_trains_and_memory_stays_flat_over_validations(photo_dataset, tmp_path,
                                                                       capsys, caplog,
                                                                       monkeypatch):
    caplog.set_level(logging.INFO)
    root = str(tmp_path / 'planted')
    _planted_dataset(root, photo_dataset, str(tmp_path / 'outside.jpg'))
    out = str(tmp_path / 'run')
    flags = ['--dataset', root, '--checkpoint-dir', out, '--max-steps', '20'] + CHEAP
    assert train.main(flags) == 2
    assert '--max-unreadable 0.1 allows' in capsys.readouterr().err.strip().splitlines()[-1]
    # tiny_train's network in place of VGG19, whose 575 MB of weights move the resident memory
    # by megabytes at a time: a leak of a batch would drown. What validates (the pipeline, the
    # hook, evaluate.predict) is the same. 96 px makes a batch 110 KB an image.
    monkeypatch.setattr(model, 'vgg_19', tiny_train.tiny_vgg_19)
    warm, passes, size = 40, 100, 96
    memory = _Memory()
    with tf.Graph().as_default():
        train.train(train.parse_args(flags + [
            '--max-unreadable', '0.2', '--validate-every', '1', '--save-every-steps', '1000',
            '--image-size', str(size), '--epochs', '1000', '--max-steps', str(warm + passes),
            '--feature-cache', 'off']),  # the tiny network has no end point to start from
            [memory])
    assert len(memory.rss) == warm + passes and all(memory.finalized)
    assert 'validation at step %d' % (warm + passes) in caplog.text
    images, = set(re.findall(r'validation at step \d+: .*\((\d+) images', caplog.text))
    batch = int(images) * size * size * 3 * 4  # the whole split: one batch of float32 inputs
    # The first passes grow the allocator's pools and tf.data's buffers (~20 MB, in jumps of up
    # to 10 MB); after them, the least-squares growth per pass (~40 KB measured) stays under half
    # a batch, which a leak of one batch per pass breaks.
    slope = np.polyfit(np.arange(passes), np.array(memory.rss[warm:], float), 1)[0]
    with capsys.disabled():
        print('RSS over %d validations after %d: %+.0f KB a pass (a batch: %d KB)'
              % (passes, warm, slope / 1024, batch >> 10))
    assert slope < batch / 2


@pytest.mark.slow
def test_inference_on_hostile_files_answers_each_with_bounded_memory(tmp_path, checkpoint_dir):
    files = _hostile_files(str(tmp_path))
    errors = {name for name, (_, expected) in files.items() if isinstance(expected, str)
              and expected not in ('palette', 'cmyk', 'rotated', 'first frame')}
    paths = [path for path, _ in files.values()]

    def run(paths, name):
        with open(tmp_path / (name + '.out'), 'w') as out, \
                open(tmp_path / (name + '.err'), 'w') as err:
            process = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, 'inference.py'), '--checkpoint-dir',
                 checkpoint_dir, '--json'] + paths, stdout=out, stderr=err,
                start_new_session=True)
        timer = threading.Timer(300, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)  # with the child's peak memory
        finally:
            timer.cancel()
        return (os.waitstatus_to_exitcode(status), usage.ru_maxrss << 10,
                (tmp_path / (name + '.out')).read_text(), (tmp_path / (name + '.err')).read_text())
    returncode, peak, out, err = run(paths, 'hostile')
    assert returncode == 1 and 'Traceback' not in err
    by_name = {os.path.basename(line['image']): line for line in map(json.loads, out.splitlines())}
    assert sorted(by_name) == sorted(files)
    assert {name for name, line in by_name.items() if 'error' in line} == errors
    for name in errors:
        assert 'inference.py: %s: cannot read image: ' % files[name][0] in err
    # The model and TensorFlow take what they take on this CPU (1.9 to 2.3 GB seen, by the
    # oneDNN build); against one good photo's run, the hostile files add next to nothing, where
    # a 30000x30000 RGB image decoded would add 2.7 GB and the 100000x100000 bomb 30 GB.
    returncode, baseline, _, _ = run([files['photo.jpg'][0]], 'photo')
    assert returncode == 0
    print('inference peak RSS: %d MB hostile, %d MB one photo' % (peak >> 20, baseline >> 20))
    assert peak - baseline < 300 << 20


def test_the_planned_step_count_is_kept_on_resume_unless_its_flags_change():
    args = train.parse_args(['--epochs', '2', '--batch-size', '4'])
    plan = train.planned_steps(args, 18)
    assert plan['last_step'] == 8 and plan['train_images'] == 18
    assert train.planned_steps(args, 9, {'plan': plan}) == plan  # files went bad since
    args.epochs = 3
    assert train.planned_steps(args, 9, {'plan': plan})['last_step'] == 6
    args.max_steps = 5
    assert train.planned_steps(args, 18)['last_step'] == 5


@pytest.mark.parametrize('flags, message', [
    (['--max-unreadable', '1.5'], '--max-unreadable must be between 0 and 1'),
    (['--save-every-steps', '-1'], '--save-every-steps must not be negative'),
    (['--keep-checkpoints', '0'], '--keep-checkpoints must be at least 1'),
])
def test_new_flags_are_checked(flags, message, capsys):
    assert message in usage_error(train.parse_args, flags, capsys)


def _too_early(*args, **kwargs):
    raise AssertionError('ran before the checkpoint check')


@pytest.mark.parametrize('case', ['vgg16', 'keras .h5', 'truncated .data', 'truncated V1 file',
                                  '.tar.gz as is'])
def test_a_broken_pretrained_checkpoint_is_one_line_before_any_graph(
        photo_dataset, tmp_path, monkeypatch, capsys, case):
    """The rows of issue 18 (a small stand-in for each: train.py restores conv1_1 alone)."""
    make, _, message = BROKEN_PRETRAINED[case]
    (tmp_path / 'data').mkdir()
    path = make(tmp_path / 'data')
    # Neither the image check nor the graph may come first.
    monkeypatch.setattr(data, 'drop_unreadable', _too_early)
    monkeypatch.setattr(model, 'vgg_19', _too_early)
    out = str(tmp_path / 'run')
    assert train.main(['--dataset', photo_dataset, '--pretrained', path, '--checkpoint-dir', out,
                       '--exclude-scopes', EXCEPT_CONV1_1, '--image-size', '32']) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith('train.py: error: pretrained checkpoint %s ' % path), err
    assert re.search(message, line) and 'Traceback' not in err, err
    assert not os.path.exists(out)  # nothing written


@pytest.mark.slow
def test_training_starts_from_a_float64_vgg_19_ckpt_unpacked_in_a_directory(
        photo_dataset, tmp_path, caplog):
    # The download unpacks to vgg_19.ckpt (V1, no state file); a careless conversion wrote
    # float64 values: restored as float32.
    caplog.set_level(logging.INFO)
    (tmp_path / 'data').mkdir()
    save_variables(conv1_values(np.float64), str(tmp_path / 'data' / 'vgg_19.ckpt'),
                   tf.train.SaverDef.V1)
    out = str(tmp_path / 'run')
    assert train.main(['--dataset', photo_dataset, '--pretrained', str(tmp_path / 'data'),
                       '--checkpoint-dir', out, '--exclude-scopes', EXCEPT_CONV1_1,
                       '--trainable-scopes', 'vgg_19/fc8', '--image-size', '32',
                       '--batch-size', '4', '--max-steps', '1', '--validate-every', '0']) == 0
    assert 'starting from the pretrained weights in %s' % (tmp_path / 'data') in caplog.text
    reader = tf.train.load_checkpoint(out)
    for name, value in conv1_values(np.float32).items():  # frozen: as restored
        assert reader.get_tensor(name).dtype == np.float32
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=name)


# What --checkpoint PATH names instead of a checkpoint of the model: what the line says it is.
BROKEN_PATHS = {'vgg16': 'has no variable vgg_19/conv1/conv1_1/weights',
                'keras .h5': 'is an HDF5 file', 'truncated .data': 'does not read back whole',
                '.tar.gz as is': 'is a .tar.gz or .tar archive'}


@pytest.mark.parametrize('tool', ['evaluate', 'inference', 'export'])
@pytest.mark.parametrize('case', sorted(BROKEN_PATHS))
def test_a_broken_checkpoint_path_is_one_line_before_any_graph(tmp_path, monkeypatch, capsys,
                                                               tool, case):
    directory = str(tmp_path / 'run')
    rundir.save_settings(directory, model_settings(PHOTOS))
    path = BROKEN_PRETRAINED[case][0](tmp_path)
    # conv1_1 stands in for the whole network, so that a truncated file of the right variables
    # is what the check meets.
    monkeypatch.setattr(model, 'vgg19_variables', lambda num_classes: dict(CONV1))
    monkeypatch.setattr(model, 'vgg_19', _too_early)
    flags = ['--checkpoint-dir', directory, '--checkpoint', path]
    image = str(tmp_path / 'photo.png')
    PIL.Image.fromarray(random_image(40, 40)).save(image)
    main, argv = {'evaluate': (evaluate.main, flags),
                  'inference': (inference.main, flags + [image]),
                  'export': (export.main, [str(tmp_path / 'exported')] + flags)}[tool]
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith('%s.py: error: --checkpoint %s %s' % (tool, path, BROKEN_PATHS[case]))
    assert line.endswith('pass a checkpoint that train.py wrote for the model in %s, or '
                         '--checkpoint latest or best' % directory)
    assert 'Traceback' not in err and not os.path.exists(str(tmp_path / 'exported'))


def test_a_checkpoint_path_of_the_model_is_taken(checkpoint_dir):
    path = rundir.find_checkpoint(checkpoint_dir)
    assert rundir.trained_model(checkpoint_dir, path)[1] == path
