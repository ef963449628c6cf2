"""bench.py runs end to end on a few small steps (its figures are for the README, not tests)."""
import json
import os
import subprocess
import sys

import pytest

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_reports_the_median_of_neighbouring_ratios():
    rates = iter([100, 100, 10, 5, 30, 10, 8, 2])  # warm-up pair, then ratios 2, 3, 4
    result = bench.paired(lambda: next(rates), lambda: next(rates), pairs=3)
    assert (result['ratio'], result['ratio_min'], result['ratio_max']) == (3, 2, 4)
    assert (result['a'], result['b']) == (10, 5)


def test_a_training_step_is_three_forwards_of_19_6_g_multiply_adds():
    assert bench.train_gflop_per_image(224) == pytest.approx(117.6)
    assert bench.train_gflop_per_image(112) == pytest.approx(117.6 / 4)


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
