"""hardware.py: which precision for which machine, and the session it makes."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import hardware
from conftest import ROOT

ON = rewriter_config_pb2.RewriterConfig.ON
# The flags of each kind of CPU this project lands on, as /proc/cpuinfo lists them.
AMX = {'fma', 'avx2', 'avx512f', 'amx_tile', 'amx_bf16', 'avx512_bf16'}  # Sapphire Rapids
ZEN4 = {'fma', 'avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni'}  # AVX-512 with bfloat16, no AMX
AVX2 = {'fma', 'avx', 'avx2'}
NATIVE_BF16 = bool(set(hardware.CPU_BF16_FLAGS) & hardware.cpu_flags())


@pytest.mark.parametrize('gpus, flags, expected', [
    ([(8, 0)], AVX2, 'fp16'),        # tensor cores
    ([(9, 0), (7, 0)], AMX, 'fp16'),  # a GPU wins over the CPU
    ([(6, 1)], AMX, 'fp32'),         # no tensor cores: fp16 would not pay
    ([], AMX, 'bf16'),
    ([], ZEN4, 'bf16'),
    ([], AVX2, 'fp32'),              # no native bfloat16: emulated, slower
    ([], set(), 'fp32'),
])
def test_auto_trains_in_the_fastest_precision_the_machine_runs(gpus, flags, expected):
    precision, reason = hardware.choose_precision('auto', gpus, flags)
    assert precision == expected and reason


@pytest.mark.parametrize('gpus, flags', [([(8, 0)], AVX2), ([], AMX), ([], ZEN4), ([], AVX2),
                                         ([(6, 1)], set())])
def test_auto_predicts_in_fp32_on_every_machine(gpus, flags):
    # The same image must get the same answer on whichever server it lands on.
    precision, reason = hardware.choose_precision('auto', gpus, flags, training=False)
    assert precision == 'fp32' and 'every machine' in reason


@pytest.mark.parametrize('flags', [AMX, ZEN4, AVX2])
def test_auto_trains_in_fp32_in_a_cluster_on_every_cpu(flags):
    # oneDNN's bfloat16 kernels are not in the distributed runtime: a worker dies at step one.
    assert hardware.choose_precision('auto', [], flags, cluster=True)[0] == 'fp32'


def test_an_explicit_precision_stands_where_the_machine_runs_it():
    assert hardware.choose_precision('fp32', [(8, 0)], AMX) == ('fp32', 'as asked')
    assert hardware.choose_precision('bf16', [], AMX) == ('bf16', 'as asked')
    assert hardware.choose_precision('bf16', [], ZEN4, training=False) == ('bf16', 'as asked')
    assert hardware.choose_precision('fp16', [(6, 1)], set()) == ('fp16', 'as asked')


@pytest.mark.parametrize('requested, gpus, flags, cluster, message', [
    ('fp16', [], AMX, False,
     '--precision fp16 needs a GPU and none is visible: use --precision auto'),
    # TensorFlow would leave the graph float32 (checked below): say so rather than pretend.
    ('bf16', [], AVX2, False, 'this CPU lacks: use --precision auto or fp32'),
    ('bf16', [(8, 0)], AMX, False, 'a GPU run does not use: use --precision auto or fp16'),
    ('bf16', [], ZEN4, True, 'does not run in a cluster .*: use --precision auto or fp32'),
])
def test_a_precision_the_machine_cannot_run_is_refused(requested, gpus, flags, cluster,
                                                       message):
    with pytest.raises(hardware.HardwareError, match=message):
        hardware.choose_precision(requested, gpus, flags, cluster=cluster)


def _ops(config):
    """{(op, dtype)} of the convolutions of a training step (forward, and the gradients of its
    input and weights), as the session ran them. oneDNN renames them (_MklNativeFusedConv2D,
    _MklNativeConv2DBackpropFilter, ...). The gradients feed an update, as in training: a
    gradient fetched as it is would stay float32."""
    x = tf.placeholder(tf.float32, [2, 8, 8, 3])
    w1, w2 = tf.Variable(tf.ones([3, 3, 3, 4])), tf.Variable(tf.ones([3, 3, 4, 4]))
    y = tf.nn.relu(tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(x, w1, 1, 'SAME')), w2, 1, 'SAME'))
    step = tf.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(y))
    metadata = tf.RunMetadata()
    with tf.Session(config=config) as session:
        session.run(tf.global_variables_initializer())
        session.run(step, {x: np.ones([2, 8, 8, 3])}, run_metadata=metadata,
                    options=tf.RunOptions(output_partition_graphs=True))
    ops = {(node.op, tf.as_dtype(node.attr['T'].type).name)
           for graph in metadata.partition_graphs for node in graph.node
           if 'Conv2D' in node.op}
    names = {re.sub('^_|Mkl|Native|Fused', '', op) for op, _ in ops}
    assert names == {'Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'}, ops
    return ops


@pytest.mark.skipif(not NATIVE_BF16, reason='needs a CPU with native bfloat16 (amx_bf16 or '
                                            'avx512_bf16); the decision is tested above by flags')
def test_bf16_runs_the_convolutions_in_bfloat16_on_a_cpu_that_has_it():
    assert {dtype for _, dtype in _ops(hardware.session_config('bf16'))} == {'bfloat16'}


def test_fp32_runs_float32_and_the_bf16_rewrite_does_nothing_without_the_hardware():
    assert {dtype for _, dtype in _ops(hardware.session_config('fp32'))} == {'float32'}
    if not NATIVE_BF16:
        assert {dtype for _, dtype in _ops(hardware.session_config('bf16'))} == {'float32'}


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nflags\t: other\n')
    assert hardware.cpu_flags(str(cpuinfo)) == {'fpu', 'avx2', 'amx_bf16'}
    assert hardware.cpu_flags(str(tmp_path / 'missing')) == set()


def test_session_config_turns_on_the_rewrite_of_each_precision():
    def rewrites(precision):
        return hardware.session_config(precision).graph_options.rewrite_options
    assert rewrites('bf16').auto_mixed_precision_onednn_bfloat16 == ON
    assert rewrites('fp16').auto_mixed_precision == ON
    fp32 = rewrites('fp32')
    assert fp32.auto_mixed_precision != ON and fp32.auto_mixed_precision_onednn_bfloat16 != ON
    assert hardware.session_config('fp32').graph_options.optimizer_options.global_jit_level == 0
    xla = hardware.session_config('fp32', xla=True)
    assert xla.graph_options.optimizer_options.global_jit_level == tf.OptimizerOptions.ON_1


XLA_PROCESS = """if True:
    import argparse, sys
    import hardware
    import tensorflow.compat.v1 as tf
    tf.disable_eager_execution()
    parser = argparse.ArgumentParser()
    hardware.add_flags(parser)
    args = parser.parse_args(sys.argv[1:])
    x = tf.placeholder(tf.float32, [16, 16])
    y = x
    for _ in range(4):
        y = tf.nn.relu(tf.matmul(y, x)) * 0.01 + 1
    metadata = tf.RunMetadata()
    with tf.Session(config=hardware.session_config('fp32', args.xla)) as session:
        session.run(y, {x: [[1.0] * 16] * 16}, run_metadata=metadata,
                    options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))
    print(any('xla_run' in node.node_name for device in metadata.step_stats.dev_stats
              for node in device.node_stats))
"""


@pytest.mark.parametrize('flags, compiled', [(['--xla'], 'True'), ([], 'False')])
def test_xla_compiles_the_graph_on_this_cpu_when_asked(flags, compiled):
    # In a process of its own: TensorFlow reads XLA's flags at the first session of a process.
    env = dict(os.environ)
    env.pop('TF_XLA_FLAGS', None)
    result = subprocess.run([sys.executable, '-c', XLA_PROCESS] + flags, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [compiled]


IMPORTS = """if True:
    import os, warnings
    import PIL.Image
    import tensorflow.compat.v1 as tf
    import tf_slim
    before = (PIL.Image.MAX_IMAGE_PIXELS, os.environ.get('TF_XLA_FLAGS'), list(warnings.filters))
    import bench, data, evaluate, export, features, hardware, inference, model, parallel
    import explain, rundir, train
    after = (PIL.Image.MAX_IMAGE_PIXELS, os.environ.get('TF_XLA_FLAGS'), list(warnings.filters))
    print(before == after)
"""


def test_importing_the_modules_changes_nothing_in_the_process():
    # Pillow's pixel limit, XLA's flags and the warning filters are set where they are needed.
    result = subprocess.run([sys.executable, '-c', IMPORTS], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['True']


def test_fp16_gets_dynamic_loss_scaling_and_the_others_the_optimizer_as_it_is():
    optimizer = tf.train.MomentumOptimizer(0.1, 0.9)
    assert hardware.loss_scaled(optimizer, 'fp32') is optimizer
    assert hardware.loss_scaled(optimizer, 'bf16') is optimizer
    scaled = hardware.loss_scaled(optimizer, 'fp16')
    assert isinstance(scaled, tf.mixed_precision.MixedPrecisionLossScaleOptimizer)
    # It still trains: the scale is divided out of the gradients before the update.
    w = tf.Variable(1.0)
    step = scaled.minimize(tf.square(w))
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        session.run(step)
        assert session.run(w) == pytest.approx(1 - 0.1 * 2)


@pytest.mark.slow
@pytest.mark.parametrize('command', ['train.py', 'evaluate.py', 'inference.py', 'export.py',
                                     'model.py'])
def test_help_prints_nothing_of_tensorflow(command):
    # TensorFlow's C++ start-up prints its CUDA probes (twice) on a machine without a GPU, and
    # its oneDNN notice (twice) on Intel CPUs.
    result = subprocess.run([sys.executable, os.path.join(ROOT, command), '--help'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and 'usage:' in result.stdout and result.stderr == ''


def test_native_stderr_passes_on_all_but_the_start_up_notices(capfd):
    # The lines as TensorFlow 2.21 prints them: the first two on every machine without a GPU,
    # the third on Intel CPUs (CI's machine of 2026-12-01 failed on it).
    with hardware.quiet_native_stderr():
        os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\n'
                    b'E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n'
                    b'I0000 port.cc:153] oneDNN custom operations are on. You may see slightly '
                    b'different numerical results due to floating-point round-off errors\n'
                    b'W0000 something that matters\n')
    assert capfd.readouterr().err == 'W0000 something that matters\n'
