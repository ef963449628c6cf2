"""What this machine has, and how a session uses it: precision, XLA, threads.

The precision policy, one rule for every command (`--precision auto`, the default):
- Predicting (evaluate.py, inference.py, the SavedModel of export.py) runs float32 on every
  machine, so the same image gets the same probabilities wherever it lands; bf16 or fp16 only
  when asked for.
- Training picks the fastest precision the machine runs natively:
  fp16 (mixed float16 with dynamic loss scaling) on GPUs of compute capability 7.0 and later,
  where tensor cores run it several times faster than float32; bf16 (oneDNN's bfloat16 graph
  rewrite) on CPUs with native bfloat16 (AMX or AVX512-BF16), which keeps float32's range and so
  needs no loss scaling; fp32 everywhere else, and in a cluster, whose distributed runtime does
  not run oneDNN's bfloat16 kernels (a worker fails at its first step).
A precision the machine cannot run is refused in one line: TensorFlow would quietly run float32
under its name. The variables, and so the checkpoints, stay float32 in every mode.
"""
import argparse
import contextlib
import functools
import logging
import os
import re
import sys
import tempfile


# What TensorFlow's C++ start-up prints before its log level applies, whatever the run: on every
# machine without a GPU the same two lines at import (twice) and a cuInit error at the first
# device listing; on CPUs where oneDNN is on by default (Intel's, AMX and AVX-512 ones) a notice
# of round-off differences, at import, twice. Our own log says which device and precision run.
START_UP_NOISE = re.compile(r'absl::InitializeLog\(\) is called|Could not find cuda drivers|'
                            r'failed call to cuInit|oneDNN custom operations are on')


@contextlib.contextmanager
def quiet_native_stderr():
    """Run the block with the C++ side's stderr held back, then pass on all of it except
    TensorFlow's start-up notices (no GPU here, oneDNN on), which say nothing about the run."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors='replace').splitlines(keepends=True)
            sys.stderr.write(''.join(line for line in lines if not START_UP_NOISE.search(line)))


# Every command imports this module before TensorFlow, so TensorFlow starts quietly, and without
# loading Keras 3 (and matplotlib through it): TensorFlow imports Keras' optimizers for tf.keras,
# which nothing here uses, 0.7 s of every command's start on 2 cores. Pointed at the legacy
# tf_keras, which is not installed, it loads nothing.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
with quiet_native_stderr():
    import tensorflow.compat.v1 as tf  # noqa: E402
    from tensorflow.core.protobuf import rewriter_config_pb2  # noqa: E402
    from tensorflow.python.client import device_lib  # noqa: E402

log = logging.getLogger(__name__)

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
CPU_BF16_FLAGS = ('amx_bf16', 'avx512_bf16')
FP16_MIN_CAPABILITY = (7, 0)


class HardwareError(ValueError):
    """A precision this machine cannot run."""


def add_flags(parser):
    """--precision and --xla, for every program that runs the network."""
    parser.add_argument('--precision', choices=PRECISIONS, default='auto',
                        help='auto: training takes bf16 on CPUs with AMX/AVX512-BF16 and fp16 on '
                             'GPUs (fp32 elsewhere and in a cluster), predictions are fp32 on '
                             'every machine; bf16 and fp16 are mixed precisions')
    parser.add_argument('--xla', action=XlaFlag,
                        help='compile the graph with XLA (measure: it helps some machines)')


class XlaFlag(argparse.Action):
    """--xla, which also lets XLA compile for CPUs: TensorFlow does so only with
    --tf_xla_cpu_global_jit in TF_XLA_FLAGS, which it reads once, at the first session of the
    process. So it is set as the flag is parsed, before any session, and only then."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        flags = os.environ.get('TF_XLA_FLAGS', '')
        if '--tf_xla_cpu_global_jit' not in flags:
            os.environ['TF_XLA_FLAGS'] = (flags + ' --tf_xla_cpu_global_jit').strip()
        setattr(namespace, self.dest, True)


def cpu_info(field, cpuinfo='/proc/cpuinfo'):
    """The first CPU's `field` in /proc/cpuinfo ('' where there is none, as on macOS)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                name, _, value = line.partition(':')
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ''


def cpu_flags(cpuinfo='/proc/cpuinfo'):
    """The CPU's feature flags."""
    return set(cpu_info('flags', cpuinfo).split())


@functools.lru_cache(maxsize=None)
def gpu_capabilities():
    """(major, minor) compute capability of each visible GPU.

    Asked through device_lib, not tf.config: tf.config starts TensorFlow's eager runtime, whose
    thread pools then compete with the session's (measured: the demo's steps 40% slower, its
    validations 13 s instead of 1 s).
    """
    config = tf.ConfigProto()
    config.gpu_options.allow_growth = True  # listing must not take the GPUs' memory
    found = []
    with quiet_native_stderr():
        devices = device_lib.list_local_devices(config)
    for device in devices:
        if device.device_type == 'GPU':
            match = re.search(r'compute capability: (\d+)\.(\d+)', device.physical_device_desc)
            found.append((int(match.group(1)), int(match.group(2))) if match else (0, 0))
    return found


def choose_precision(requested, gpus, flags, training=True, cluster=False):
    """(precision, reason): `requested` made concrete for a job (`training`, else predicting)
    on GPUs of capabilities `gpus` and CPU feature `flags`, in a `cluster` or not. A choice the
    machine cannot run is a HardwareError: TensorFlow would quietly run it in float32."""
    cpu_bf16 = sorted(set(CPU_BF16_FLAGS) & set(flags))
    if requested == 'fp16' and not gpus:
        raise HardwareError('--precision fp16 needs a GPU and none is visible: use --precision '
                            'auto or fp32')
    if requested == 'bf16' and (gpus or not cpu_bf16):
        raise HardwareError('--precision bf16 is oneDNN on CPUs with %s, which %s: use '
                            '--precision auto%s' % (' or '.join(CPU_BF16_FLAGS),
                                                    'a GPU run does not use' if gpus else
                                                    'this CPU lacks', ' or fp16' if gpus else
                                                    ' or fp32'))
    if requested == 'bf16' and cluster:
        raise HardwareError('--precision bf16 does not run in a cluster (TensorFlow\'s '
                            'distributed runtime has no oneDNN bfloat16 kernels): use '
                            '--precision auto or fp32')
    if requested != 'auto':
        return requested, 'as asked'
    if not training:
        return 'fp32', ('predictions are float32 on every machine, so they do not change with '
                        'the machine; --precision %s is faster here' % (
                            'fp16' if gpus else 'bf16') if gpus or cpu_bf16 else
                        'predictions are float32 on every machine')
    if gpus and min(gpus) >= FP16_MIN_CAPABILITY:
        return 'fp16', 'GPU compute capability %d.%d has tensor cores' % min(gpus)
    if gpus:
        return 'fp32', 'GPU compute capability %d.%d is below 7.0' % min(gpus)
    if cpu_bf16 and cluster:
        return 'fp32', ('the CPU runs bfloat16 natively (%s), but not in a cluster: TensorFlow\'s '
                        'distributed runtime has no oneDNN bfloat16 kernels' % ', '.join(cpu_bf16))
    if cpu_bf16:
        return 'bf16', 'the CPU runs bfloat16 natively (%s)' % ', '.join(cpu_bf16)
    return 'fp32', 'no GPU, and the CPU has no native bfloat16 (%s)' % ', '.join(CPU_BF16_FLAGS)


def resolve_precision(requested, gpus=None, training=True, cluster=False):
    """choose_precision for this machine (its `gpus`, found when not given), logged with its
    reason."""
    gpus = gpu_capabilities() if gpus is None else gpus
    precision, reason = choose_precision(requested, gpus, cpu_flags(), training, cluster)
    log.info('precision %s: %s', precision, reason)
    return precision


def session_config(precision='fp32', xla=False):
    """A ConfigProto that runs the graph in `precision` (fp32, bf16, fp16), with XLA if asked.

    The mixed precisions are graph rewrites: matmuls and convolutions run in 16 bits, the
    variables and the numerically sensitive ops (softmax, losses, updates) stay float32.
    """
    gpu_capabilities()  # the process's first device listing, quiet: a Session's would not be
    config = tf.ConfigProto(allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    rewrites = config.graph_options.rewrite_options
    if precision == 'bf16':
        rewrites.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    elif precision == 'fp16':
        rewrites.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    if xla:
        config.graph_options.optimizer_options.global_jit_level = tf.OptimizerOptions.ON_1
    return config


def loss_scaled(optimizer, precision):
    """`optimizer` with dynamic loss scaling for fp16, whose small gradients would underflow
    to zero otherwise; as it is for the other precisions."""
    if precision != 'fp16':
        return optimizer
    return tf.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, 'dynamic')
