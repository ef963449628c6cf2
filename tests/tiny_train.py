"""train.py with a tiny network in place of VGG19, for the cluster tests: on a parameter server
the real one would send ~560 MB of weights to every worker at every step.

    python tests/tiny_train.py [train.py flags]

VGGTINY_STEP_SECS=s makes each step last at least s seconds, so that a test can act mid-run.
VGGTINY_CPU_FLAGS="avx2 avx512_bf16" makes the precision policy see those CPU flags instead of
this machine's, so that a test covers each kind of CPU on any of them.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow.compat.v1 as tf  # noqa: E402
import tf_slim as slim  # noqa: E402

import hardware  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402


def tiny_vgg_19(inputs, num_classes=1000, is_training=True, dropout_keep_prob=0.5,
                spatial_squeeze=True, reuse=None, scope='vgg_19', fc_conv_padding='VALID',
                global_pool=False, start=None, frozen=()):
    """model.vgg_19's signature and scope names, two small layers under the caller's arg_scope
    (no end points to start from: runs of it use no feature cache)."""
    assert start is None, 'tiny_vgg_19 has no end point %s' % start
    with tf.variable_scope(scope, 'vgg_19', [inputs], reuse=reuse):
        net = slim.conv2d(inputs, 8, [3, 3], stride=4, scope='conv1/conv1_1')
        net = tf.reduce_mean(net, [1, 2], keepdims=True)
        net = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, scope='fc8')
        return tf.squeeze(net, [1, 2]), {}


class StepTime(tf.train.SessionRunHook):
    def __init__(self, seconds):
        self._seconds = seconds

    def after_run(self, run_context, run_values):
        time.sleep(self._seconds)


if __name__ == '__main__':
    model.vgg_19 = tiny_vgg_19
    if 'VGGTINY_CPU_FLAGS' in os.environ:
        hardware.cpu_flags = lambda cpuinfo=None: set(os.environ['VGGTINY_CPU_FLAGS'].split())
    step_secs = float(os.environ.get('VGGTINY_STEP_SECS', 0))
    real_train = train.train
    train.train = lambda args, extra_hooks=(): real_train(
        args, list(extra_hooks) + ([StepTime(step_secs)] if step_secs else []))
    sys.exit(train.main())
