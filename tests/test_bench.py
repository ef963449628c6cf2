"""bench.py runs end to end on a few small steps (its figures are for the README, not tests)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import bench
import data
import demo
import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_reports_the_median_of_neighbouring_ratios():
    rates = iter([100, 100, 10, 5, 30, 10, 8, 2])  # warm-up pair, then ratios 2, 3, 4
    result = bench.paired(lambda: next(rates), lambda: next(rates), pairs=3)
    assert (result['ratio'], result['ratio_min'], result['ratio_max']) == (3, 2, 4)
    assert (result['a'], result['b']) == (10, 5)


def test_a_training_step_is_three_forwards_of_19_6_g_multiply_adds():
    assert bench.train_gflop_per_image(224) == pytest.approx(117.6)
    assert bench.train_gflop_per_image(112) == pytest.approx(117.6 / 4)


def test_the_cache_parts_random_base_passes_its_photos_on_at_unit_scale(tmp_path):
    # He initialisation keeps the mean square of a ReLU layer's output at its input's (halved
    # and doubled): what the first layer makes of the pixels, every layer above passes on.
    demo.make_dataset(str(tmp_path), 2, photos=bench.CACHE_PHOTOS)
    paths = [os.path.join(root, name) for root, _, names in os.walk(str(tmp_path))
             for name in names]
    kernel = model.vgg19_shapes(1000)['vgg_19/conv1/conv1_1']
    weights = np.random.default_rng(0).normal(0, bench.he_std('vgg_19/conv1/conv1_1', kernel),
                                              kernel).astype(np.float32)
    with tf.Graph().as_default():
        images = tf.stack([data.preprocess_for_eval(data.decode_image(tf.io.read_file(path)),
                                                    128) for path in paths])
        out = tf.nn.relu(tf.nn.conv2d(images, weights, 1, 'SAME'))
        with tf.Session() as session:
            mean_square = np.mean(session.run(out) ** 2)
    assert len(paths) == 24 and 0.5 < mean_square < 2


@pytest.mark.slow
def test_bench_runs_every_part_and_prints_the_speedups(tmp_path):
    # Keras needs eager execution, which the test process has turned off: a process of its own.
    out = subprocess.run(
        [sys.executable, 'bench.py', '--json', '--images', '12', '--long-side', '64',
         '--image-size', '32', '--batch-size', '2', '--classes', '3', '--pairs', '1',
         '--pipeline-batches', '2', '--scale-images', '202,404', '--cache-image-size', '32',
         '--cache-epochs', '1'],
        cwd=ROOT, capture_output=True, text=True, timeout=450,
        env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result['pipeline_speedup'] > 0
    # A table per precision the machine trains in: fp32, and bf16 where the CPU has it.
    assert list(result['precisions']) == bench.precisions('all')
    for figures in result['precisions'].values():
        for name in ('train', 'inference'):
            assert figures[name + '_speedup'] > 0 and figures[name]['a'] > 0
        assert figures['matmul_gflops'] > 0 and 0 < figures['train_share_of_ceiling']
    # Each side of the cache part ran to its end and was validated, in training's precision.
    cache = result['precisions'][bench.precisions('all')[-1]]['cache']
    for side in ('cached', 'reused', 'uncached', 'keras'):
        assert cache[side]['seconds'] > 0 and 0 <= cache[side]['accuracy'] <= 1
        assert (0 <= cache[side]['held_out'] <= 1) if side != 'keras' else (
            'held_out' not in cache[side])
    small, large = result['scale']['sizes']
    assert (small['images'], large['images']) == (202, 404)
    # The file lists stay out of the graph.
    assert small['graph_mb'] == large['graph_mb'] and small['meta_mb'] == large['meta_mb']
    assert result['scale']['ratio']['check_images_per_s'] > 0
    assert small['reused_cache_startup_s'] > 0 and large['reused_cache_startup_s'] > 0
    assert os.listdir(str(tmp_path)) == []  # its JPEGs and checkpoint removed


@pytest.mark.parametrize('flags, expected', [
    ({'avx2'}, ['fp32']), ({'avx2', 'avx512_bf16'}, ['fp32', 'bf16']),
    ({'amx_bf16', 'avx512_bf16'}, ['fp32', 'bf16'])])
def test_every_precision_training_runs_here_gets_its_table(monkeypatch, flags, expected):
    monkeypatch.setattr(bench.hardware, 'cpu_flags', lambda cpuinfo=None: flags)
    monkeypatch.setattr(bench.hardware, 'gpu_capabilities', lambda: [])
    assert bench.precisions('all') == expected
    assert bench.precisions('fp32') == ['fp32']


@pytest.mark.parametrize('flags, message', [
    (['--pairs', '0'], '--pairs must be at least 1'),
    (['--scale-images', '5000'], '--scale-images must be two sizes of at least 202, e.g. '
                                 '2020,8080'),
    (['--skip', 'pipeline,trian'],
     '--skip trian: the parts are pipeline,train,inference,matmul,scale,cache'),
])
def test_bad_flags_are_one_line_errors(flags, message):
    out = subprocess.run([sys.executable, 'bench.py'] + flags, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].endswith(message)
