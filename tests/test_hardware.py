"""hardware.py: which precision for which machine, and the session it makes."""
import pytest
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import hardware

ON = rewriter_config_pb2.RewriterConfig.ON
AMX = {'fma', 'avx2', 'avx512f', 'amx_tile', 'amx_bf16', 'avx512_bf16'}
AVX2 = {'fma', 'avx', 'avx2'}


@pytest.mark.parametrize('gpus, flags, expected', [
    ([(8, 0)], AVX2, 'fp16'),        # tensor cores
    ([(9, 0), (7, 0)], AMX, 'fp16'),  # a GPU wins over the CPU
    ([(6, 1)], AMX, 'fp32'),         # no tensor cores: fp16 would not pay
    ([], AMX, 'bf16'),               # Sapphire Rapids and later
    ([], {'avx512_bf16'}, 'bf16'),
    ([], AVX2, 'fp32'),              # no native bfloat16: emulated, slower
    ([], set(), 'fp32'),
])
def test_auto_picks_the_fastest_safe_precision_found(gpus, flags, expected):
    precision, reason = hardware.choose_precision('auto', gpus, flags)
    assert precision == expected and reason


def test_an_explicit_precision_stands_with_a_warning_where_it_is_emulated():
    assert hardware.choose_precision('fp32', [(8, 0)], AMX)[0] == 'fp32'
    precision, reason = hardware.choose_precision('bf16', [], AVX2)
    assert precision == 'bf16' and 'slower' in reason
    assert hardware.choose_precision('fp16', [(7, 5)], set()) == ('fp16', 'as asked')


def test_fp16_without_a_gpu_is_refused_with_what_to_use():
    with pytest.raises(hardware.HardwareError, match='--precision fp16 needs a GPU'):
        hardware.choose_precision('fp16', [], AMX)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nflags\t: other\n')
    assert hardware.cpu_flags(str(cpuinfo)) == {'fpu', 'avx2', 'amx_bf16'}
    assert hardware.cpu_flags(str(tmp_path / 'missing')) == set()


def test_session_config_turns_on_the_rewrite_of_each_precision(monkeypatch):
    monkeypatch.delenv('TF_XLA_FLAGS', raising=False)

    def rewrites(precision):
        return hardware.session_config(precision).graph_options.rewrite_options
    assert rewrites('bf16').auto_mixed_precision_onednn_bfloat16 == ON
    assert rewrites('fp16').auto_mixed_precision == ON
    fp32 = rewrites('fp32')
    assert fp32.auto_mixed_precision != ON and fp32.auto_mixed_precision_onednn_bfloat16 != ON
    assert hardware.session_config('fp32').graph_options.optimizer_options.global_jit_level == 0
    xla = hardware.session_config('fp32', xla=True)
    assert xla.graph_options.optimizer_options.global_jit_level == tf.OptimizerOptions.ON_1
    assert '--tf_xla_cpu_global_jit' in hardware.os.environ['TF_XLA_FLAGS']


def _compiled_by_xla(config):
    """Whether a small graph run under `config` went through an XLA cluster."""
    x = tf.placeholder(tf.float32, [16, 16])
    y = x
    for _ in range(4):
        y = tf.nn.relu(tf.matmul(y, x)) * 0.01 + 1
    metadata = tf.RunMetadata()
    with tf.Session(config=config) as session:
        session.run(y, {x: [[1.0] * 16] * 16}, run_metadata=metadata,
                    options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))
    return any('xla_run' in node.node_name for device in metadata.step_stats.dev_stats
               for node in device.node_stats)


def test_xla_compiles_the_graph_on_this_cpu():
    assert not _compiled_by_xla(hardware.session_config('fp32'))
    assert _compiled_by_xla(hardware.session_config('fp32', xla=True))


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
