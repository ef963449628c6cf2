"""parallel.py and train.py's towers and cluster: the cluster read from TF_CONFIG or flags,
towers that compute what one device computes, and loopback clusters of separate processes
(1 ps + 2 workers) that train tests/tiny_train.py's small network."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
import tf_slim as slim

import hardware
import parallel
import train
from conftest import CHEAP_RUN, ROOT, usage_error

CLUSTER = {'ps': ['h0:2222'], 'worker': ['h1:2222', 'h2:2222']}


def _tf_config(cluster=CLUSTER, job='worker', index=0):
    return json.dumps({'cluster': cluster, 'task': {'type': job, 'index': index}})


def test_tf_config_and_flags_give_the_same_task():
    task = parallel.parse_tf_config(_tf_config(index=1))
    assert task == parallel.Task(CLUSTER, 'worker', 1)
    assert parallel.from_flags('h0:2222', 'h1:2222,h2:2222', 'worker', 1) == task
    assert parallel.parse_tf_config('') is None and parallel.parse_tf_config('{}') is None
    assert parallel.from_flags('', '', None, 0) is None
    assert parallel.device_filters(task) == ['/job:ps', '/job:worker/task:1']
    assert parallel.num_trainers(task) == 2 and parallel.num_trainers(None) == 1


def test_the_chief_is_the_chief_job_else_worker_0():
    assert parallel.is_chief(None)
    assert parallel.is_chief(parallel.Task(CLUSTER, 'worker', 0))
    assert not parallel.is_chief(parallel.Task(CLUSTER, 'worker', 1))
    assert not parallel.is_chief(parallel.Task(CLUSTER, 'ps', 0))
    with_chief = dict(CLUSTER, chief=['h3:2222'])
    assert parallel.is_chief(parallel.Task(with_chief, 'chief', 0))
    assert not parallel.is_chief(parallel.Task(with_chief, 'worker', 0))
    assert parallel.num_trainers(parallel.Task(with_chief, 'chief', 0)) == 3


@pytest.mark.parametrize('text, message', [
    ('{"cluster": ', 'TF_CONFIG is not JSON'),
    ('[1]', 'must be a JSON object'),
    (json.dumps({'cluster': CLUSTER}), 'names a cluster but no "task"'),
    (_tf_config(index=2), 'no task worker:2 (its worker job has 2 task(s))'),
    (_tf_config(job='evaluator'), 'task type evaluator is not a job of the cluster'),
    (_tf_config(cluster={'worker': ['h1:1']}), 'the cluster has no ps job'),
    (_tf_config(cluster=dict(CLUSTER, evaluator=['h:1'])), 'job evaluator is not one of'),
    (_tf_config(cluster=dict(CLUSTER, worker='h1:1')), 'must list host:port addresses'),
    (_tf_config(cluster=dict(CLUSTER, worker=['h1'])), 'must list host:port addresses'),
    (_tf_config(index='0'), 'task index \'0\' is not an integer'),
])
def test_bad_tf_config_is_one_clear_line(text, message):
    with pytest.raises(parallel.ClusterError) as error:
        parallel.parse_tf_config(text)
    assert message in str(error.value) and '\n' not in str(error.value)


def test_tower_devices():
    assert parallel.tower_devices(None, '', 64, 0) == [None]  # no GPU: one tower, the CPU
    assert parallel.tower_devices(None, '', 64, 1) == [None]
    assert parallel.tower_devices(None, '', 64, 4) == ['/device:GPU:%d' % i for i in range(4)]
    assert parallel.tower_devices(2, '', 64, 4) == ['/device:GPU:0', '/device:GPU:1']
    assert parallel.tower_devices(None, '/cpu:0, /cpu:1', 64, 4) == ['/cpu:0', '/cpu:1']
    with pytest.raises(parallel.ClusterError, match='--num-gpus 2: this machine has 1'):
        parallel.tower_devices(2, '', 64, 1)
    with pytest.raises(parallel.ClusterError, match='does not split evenly over 3 towers'):
        parallel.tower_devices(3, '', 64, 3)
    assert parallel.cpu_count(['/cpu:0', '/device:CPU:2']) == 3
    assert parallel.cpu_count([None]) == parallel.cpu_count(['/device:GPU:1']) == 1
    assert not parallel.session_config(None, [None], tf.ConfigProto()).device_count
    assert parallel.session_config(None, ['/device:GPU:0', '/device:GPU:1'],
                                   tf.ConfigProto()).allow_soft_placement


def test_gpu_towers_are_placed_with_the_variables_on_the_first():
    """Graph placement only (no GPU here): each tower's ops on its GPU, one set of variables."""
    devices = parallel.tower_devices(2, '', 8, 2)

    def build(images, reuse):
        with tf.variable_scope('net', reuse=reuse):
            weights = tf.get_variable('weights', [3, 2])
            return tf.reduce_sum(tf.matmul(images, weights))
    losses = parallel.on_towers(devices, None, build, tf.ones([8, 3]))
    gradients = parallel.tower_gradients(tf.train.GradientDescentOptimizer(0.1), losses, devices,
                                         None, tf.trainable_variables())
    assert [v.op.name for v in tf.global_variables()] == ['net/weights']
    assert tf.global_variables()[0].device.upper() == '/DEVICE:GPU:0'
    assert [loss.device.upper() for loss in losses] == ['/DEVICE:GPU:0', '/DEVICE:GPU:1']
    graph = tf.get_default_graph()
    assert any(op.device.upper() == '/DEVICE:GPU:1' and op.name.startswith('gradients_1/')
               for op in graph.get_operations())
    assert gradients[0][1] is tf.global_variables()[0]


@pytest.mark.parametrize('flags, tf_config, message', [
    (['--sync-replicas'], None, '--sync-replicas needs a cluster'),
    (['--num-gpus', '0'], None, '--num-gpus must be at least 1'),
    (['--num-gpus', '2', '--devices', '/cpu:0'], None, '--num-gpus and --devices'),
    (['--ps-hosts', 'h0:1'], None, 'a cluster needs --ps-hosts, --worker-hosts and --job-name'),
    (['--ps-hosts', 'h0:1', '--worker-hosts', 'h1:1', '--job-name', 'worker', '--task-index',
      '1'], None, 'no task worker:1'),
    (['--ps-hosts', 'h0:1', '--worker-hosts', 'h1:1', '--job-name', 'ps'], _tf_config(),
     'both TF_CONFIG and --ps-hosts'),
    ([], '{"cluster": {', 'TF_CONFIG is not JSON'),
    ([], _tf_config(index=5), 'TF_CONFIG: the cluster has no task worker:5'),
    (['--sync-replicas', '--head-steps', '5'], _tf_config(), 'does not go with --head-steps'),
])
def test_bad_cluster_settings_are_one_line_usage_errors(flags, tf_config, message, capsys,
                                                        monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    if tf_config:
        monkeypatch.setenv('TF_CONFIG', tf_config)
    assert message in usage_error(train.parse_args, flags, capsys)


def test_parse_args_reads_the_task(monkeypatch):
    monkeypatch.setenv('TF_CONFIG', _tf_config(index=1))
    assert train.parse_args(['--sync-replicas']).task == parallel.Task(CLUSTER, 'worker', 1)
    monkeypatch.delenv('TF_CONFIG')
    assert train.parse_args([]).task is None


def test_a_port_in_use_is_a_cluster_error():
    with socket.socket() as used:
        used.bind(('localhost', 0))
        used.listen()
        address = 'localhost:%d' % used.getsockname()[1]
        with pytest.raises(parallel.ClusterError, match='cannot serve ps:0 at %s' % address):
            parallel.start_server(parallel.Task({'ps': [address], 'worker': ['localhost:1']},
                                                'ps', 0))


# ---------------------------------------------------------------------------------------------
# Towers: two on two logical CPU devices compute what one computes on the whole batch.

def test_the_update_lets_onednn_fuse_each_bias_gradient_into_its_filter_gradient():
    """Gated gradients (compat.v1's default) add control edges that keep the two apart: the
    bf16 step measured 11% slower on AMX, and behind Keras'."""
    x = tf.constant(np.ones([2, 8, 8, 3]), tf.float32)
    y = slim.conv2d(slim.conv2d(x, 4, 3, scope='a'), 4, 3, scope='b')
    update = parallel.minimize(tf.train.MomentumOptimizer(0.1, 0.9), [tf.reduce_sum(y)], [None],
                               None, tf.trainable_variables(), None)
    metadata = tf.RunMetadata()
    with tf.Session(config=hardware.session_config('fp32')) as session:
        session.run(tf.global_variables_initializer())
        session.run(update, run_metadata=metadata,
                    options=tf.RunOptions(output_partition_graphs=True))
    ops = [node.op for graph in metadata.partition_graphs for node in graph.node]
    if not any(op.startswith('_Mkl') for op in ops):
        pytest.skip('TensorFlow runs without oneDNN here (TF_ENABLE_ONEDNN_OPTS=0)')
    assert ops.count('_MklNativeConv2DBackpropFilterWithBias') == 2, sorted(ops)
    assert 'BiasAddGrad' not in ops


@pytest.mark.slow
def test_two_towers_give_the_gradients_and_the_step_of_one_tower_on_the_double_batch():
    args = train.parse_args(['--image-size', '32', '--dropout-keep-prob', '1',
                             '--label-smoothing', '0.1', '--init', 'he', '--optimizer', 'sgd'])
    settings = {'class_ids': ['a', 'b', 'c'], 'fc_conv_padding': 'SAME', 'global_pool': True}
    rng = np.random.RandomState(0)
    images = tf.constant(rng.normal(0, 50, [4, 32, 32, 3]), tf.float32)
    labels = tf.constant([0, 2, 1, 0], tf.int32)
    devices = ['/cpu:0', '/cpu:1']

    def build(images, labels, reuse):
        return train.tower_loss(images, labels, settings, args.label_smoothing, reuse=reuse,
                                **train.network_options(args))
    two = parallel.on_towers(devices, None, build, images, labels)
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
        one = parallel.on_towers([None], None, build, images, labels)
    # The first convolution, a middle one and the classifier: gradients through the whole net,
    # without the 100 M-parameter update of fc6 that a CPU takes seconds for.
    var_list = [v for v in tf.trainable_variables() if v.op.name in (
        'vgg_19/conv1/conv1_1/weights', 'vgg_19/conv4/conv4_2/weights', 'vgg_19/fc7/biases',
        'vgg_19/fc8/weights', 'vgg_19/fc8/biases')]
    assert len(var_list) == 5
    sgd = train.OPTIMIZERS['sgd'](0.01, args, '')
    gradients_two = parallel.tower_gradients(sgd, [t['total_loss'] for t in two], devices, None,
                                             var_list)
    gradients_one = parallel.tower_gradients(sgd, [one[0]['total_loss']], [None], None,
                                             var_list)
    step_two = sgd.apply_gradients(gradients_two)
    step_one = sgd.apply_gradients(gradients_one)
    # Each tower on its device, the shared variables on the first CPU.
    graph = tf.get_default_graph()

    def device(name):
        return graph.get_tensor_by_name(name).device.upper()
    assert device('tower_1/vgg_19/conv1/conv1_1/Conv2D:0').endswith('CPU:1')
    assert device('tower_0/vgg_19/conv1/conv1_1/Conv2D:0').endswith('CPU:0')
    assert device('vgg_19/conv1/conv1_1/weights:0').endswith('CPU:0')
    assert len(tf.losses.get_regularization_losses()) == len(
        [v for v in tf.trainable_variables() if v.op.name.endswith('weights')])  # once each

    config = parallel.session_config(None, devices, tf.ConfigProto())
    assert config.device_count['CPU'] == 2
    with tf.Session(config=config) as session:
        session.run(tf.global_variables_initializer())
        found = [d.name for d in session.list_devices()]
        assert any(n.endswith('CPU:1') for n in found), found
        for (g2, v), (g1, _) in zip(session.run(gradients_two), session.run(gradients_one)):
            assert np.linalg.norm(g2 - g1) / np.linalg.norm(g1) < 1e-5
            assert np.linalg.norm(g1) > 0
        loss_two = session.run([t['total_loss'] for t in two])
        assert np.mean(loss_two) == pytest.approx(session.run(one[0]['total_loss']), rel=1e-6)
        before = session.run(var_list)
        session.run(step_two)
        after_two = session.run(var_list)
        for variable, value in zip(var_list, before):
            variable.load(value, session)
        session.run(step_one)
        after_one = session.run(var_list)
    for b, a2, a1 in zip(before, after_two, after_one):
        assert not np.array_equal(a1, b)
        np.testing.assert_allclose(a2, a1, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_training_on_two_logical_cpu_towers(photo_dataset, tmp_path, caplog):
    caplog.set_level('INFO')
    out = str(tmp_path / 'run')
    assert train.main(['--dataset', photo_dataset, '--checkpoint-dir', out] + CHEAP_RUN + [
                       '--trainable-scopes', 'vgg_19/fc8', '--validate-every', '0',
                       '--max-steps', '2',
                       '--devices', '/cpu:0,/cpu:1']) == 0
    assert '2 tower(s) of 2 images (/cpu:0, /cpu:1)' in caplog.text
    assert tf.train.latest_checkpoint(out).endswith('model.ckpt-2')


# ---------------------------------------------------------------------------------------------
# Loopback clusters: a parameter server and two workers, each a process of its own.

def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(('localhost', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """1 ps + 2 workers of tests/tiny_train.py on free loopback ports; every process in a
    process group of its own, all killed by close()."""

    def __init__(self, tmp_path, dataset, step_secs=0.0, cpu_flags=None):
        self.dir, self.processes = tmp_path, {}
        ps, w0, w1 = ('localhost:%d' % p for p in _free_ports(3))
        self.flags = ['--dataset', dataset] + CHEAP_RUN + [
            '--validate-every', '0', '--log-every', '10', '--epochs', '1000', '--ps-hosts', ps,
            '--worker-hosts', w0 + ',' + w1]
        self.env = dict(os.environ, VGGTINY_STEP_SECS=str(step_secs))
        if cpu_flags is not None:
            self.env['VGGTINY_CPU_FLAGS'] = ' '.join(sorted(cpu_flags))
        self.env.pop('TF_CONFIG', None)
        self.chief_dir, self.worker_dir = str(tmp_path / 'chief'), str(tmp_path / 'worker1')

    def start(self, name, *flags):
        """Start `name` (ps, w0 or w1) with `flags`; its output goes to <name>.log (appended)."""
        job, index, out = {'ps': ('ps', 0, self.chief_dir), 'w0': ('worker', 0, self.chief_dir),
                           'w1': ('worker', 1, self.worker_dir)}[name]
        command = [sys.executable, os.path.join(ROOT, 'tests', 'tiny_train.py')] + self.flags + [
            '--job-name', job, '--task-index', str(index), '--checkpoint-dir', out] + list(flags)
        with open(self.log_path(name), 'a') as log:
            self.processes[name] = subprocess.Popen(command, stdout=log, stderr=log, env=self.env,
                                                    start_new_session=True)

    def start_all(self, *flags):
        """The parameter server, then both workers with the same `flags`."""
        self.start('ps')
        self.start('w0', *flags)
        self.start('w1', *flags)

    def log_path(self, name):
        return str(self.dir / (name + '.log'))

    def log(self, name):
        with open(self.log_path(name)) as f:
            return f.read()

    def wait_for(self, condition, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError('no %s within %d s:\n%s' % (what, timeout, self.logs()))

    def wait(self, name, timeout):
        try:
            return self.processes[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('%s still running after %d s:\n%s' % (name, timeout, self.logs()))

    def kill(self, name, signum=signal.SIGKILL):
        """Send `signum` to the process group of `name`; wait for its end unless the signal
        stops or continues it."""
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, signum)
        if signum not in (signal.SIGSTOP, signal.SIGCONT):
            process.wait(30)

    def close(self):
        for name in self.processes:
            try:
                self.kill(name, signal.SIGCONT)  # a stopped process dies only when continued
                self.kill(name)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    def logs(self):
        return '\n'.join('--- %s\n%s' % (n, self.log(n)[-3000:]) for n in self.processes)

    def steps_ran(self, name):
        """The steps each run of `name` says it ran."""
        return [int(n) for n in re.findall(r'ran (\d+) steps of the global step', self.log(name))]

    def logged_step(self):
        """The last global step the workers logged (every 10 steps that each of them sees)."""
        return max([int(n) for name in ('w0', 'w1') if name in self.processes
                    for n in re.findall(r'step (\d+)/', self.log(name))] + [-1])

    def last_checkpoint_step(self):
        latest = tf.train.latest_checkpoint(self.chief_dir)
        return int(latest.rsplit('-', 1)[1]) if latest else -1


@pytest.fixture
def cluster(tmp_path, photo_dataset):
    clusters = []

    def make(step_secs=0.0, cpu_flags=None):
        clusters.append(Cluster(tmp_path, photo_dataset, step_secs, cpu_flags))
        return clusters[-1]
    yield make
    for c in clusters:
        c.close()


@pytest.mark.slow
def test_cluster_trains_with_both_workers_and_only_the_chief_writes(cluster):
    c = cluster(step_secs=0.02)
    c.start_all('--max-steps', '60')
    assert c.wait('w0', 600) == 0 and c.wait('w1', 600) == 0, c.logs()
    ran = c.steps_ran('w0') + c.steps_ran('w1')
    assert len(ran) == 2 and min(ran) > 0 and sum(ran) >= 60, ran  # both contributed
    assert 60 <= c.last_checkpoint_step() <= 61  # a step in flight may land after the last
    assert os.path.isfile(os.path.join(c.chief_dir, 'settings.json'))
    assert not os.path.exists(c.worker_dir)  # the other worker wrote nothing anywhere
    assert 'the chief restores the model, this worker waits for it' in c.log('w1')
    c.kill('ps', signal.SIGTERM)  # a parameter server ends cleanly on SIGTERM
    assert c.processes['ps'].returncode == 0 and 'ps:0 stopped' in c.log('ps')


@pytest.mark.slow
def test_a_killed_worker_rejoins_and_the_run_reaches_its_last_step(cluster):
    c = cluster(step_secs=0.05)
    c.start_all('--max-steps', '400')
    c.wait_for(lambda: 'session ready' in c.log('w1') and c.logged_step() >= 20, 600,
               'step 20 with worker 1 in')
    c.kill('w1')
    # Worker 0 waits, stopped, until the new worker 1 has stepped: however long its start takes
    # on a loaded machine, the run cannot end without it.
    c.kill('w0', signal.SIGSTOP)
    c.start('w1', '--max-steps', '400')
    c.wait_for(lambda: re.search(r'step \d+/400', c.log('w1').split('session ready')[-1])
               and c.log('w1').count('session ready') == 2, 600, 'a step of the new worker 1')
    c.kill('w0', signal.SIGCONT)
    assert c.wait('w0', 600) == 0 and c.wait('w1', 600) == 0, c.logs()
    ran = c.steps_ran('w1')
    assert len(ran) == 1 and ran[0] > 0, c.logs()  # the killed run says nothing: the new one
    assert c.log('w1').count('session ready') == 2
    assert 400 <= c.last_checkpoint_step() <= 401


@pytest.mark.slow
def test_workers_recover_from_the_last_checkpoint_when_the_ps_restarts(cluster):
    c = cluster(step_secs=0.05)
    c.start_all('--max-steps', '200', '--save-every-secs', '1')
    c.wait_for(lambda: c.last_checkpoint_step() >= 20, 600, 'a checkpoint after step 20')
    c.kill('ps')
    saved = c.last_checkpoint_step()
    c.start('ps')
    assert c.wait('w0', 600) == 0 and c.wait('w1', 600) == 0, c.logs()
    # The chief made a new session, at the step of the last checkpoint, which it restored: the
    # one named at the kill, or the next, if the ps finished it just before it died and the
    # chief named it after (a save a second; two workers step at most 20 times a second each).
    steps = [int(s) for s in re.findall(r'worker:0: session ready at global step (\d+)',
                                        c.log('w0'))]
    assert len(steps) >= 2 and saved <= steps[-1] <= saved + 45, (saved, steps, c.logs())
    assert 200 <= c.last_checkpoint_step() <= 201


@pytest.mark.slow
@pytest.mark.parametrize('chief_steps', [30, 1000])
def test_synchronous_training_ends_for_all_when_one_worker_ends(cluster, chief_steps):
    """At the end together, or worker 1 first: SyncReplicasOptimizer's own hook would leave a
    worker waiting for a token, or the chief for a gradient, forever."""
    c = cluster(step_secs=0.02)
    c.start('ps')
    c.start('w0', '--sync-replicas', '--max-steps', str(chief_steps))
    c.start('w1', '--sync-replicas', '--max-steps', '30')
    # Deadlines only for a hang: the step count, not the time, tells that the chief stopped.
    assert c.wait('w1', 600) == 0 and c.wait('w0', 600) == 0, c.logs()
    step = c.last_checkpoint_step()
    assert 30 <= step <= 32, step  # one step in flight, not the 1000 the chief was told
    if chief_steps > 30:
        assert 'another worker has ended: synchronous training stops here' in c.log('w0')
    assert min(c.steps_ran('w0') + c.steps_ran('w1')) > 0
    assert 'Traceback' not in c.log('w0') + c.log('w1')


@pytest.mark.slow
@pytest.mark.parametrize('cpu', ['avx512_bf16', 'amx_bf16'])
def test_a_cluster_on_bfloat16_cpus_trains_to_its_end_with_the_default_precision(cluster, cpu):
    # On such CPUs a one-machine run trains in bf16; oneDNN's bfloat16 kernels are not in the
    # distributed runtime, where every worker died at its first step: the cluster takes fp32.
    c = cluster(cpu_flags={'fma', 'avx2', 'avx512f', cpu})
    c.start_all('--max-steps', '20')
    assert c.wait('w0', 600) == 0 and c.wait('w1', 600) == 0, c.logs()
    for name in ('w0', 'w1'):
        assert 'precision fp32: the CPU runs bfloat16 natively (%s), but not in a cluster' % cpu \
            in c.log(name)
    assert 20 <= c.last_checkpoint_step() <= 21  # a step in flight may land after the last


def test_bf16_in_a_cluster_is_a_one_line_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(hardware, 'cpu_flags', lambda cpuinfo=None: {'avx2', 'avx512_bf16'})
    ps, worker = ('localhost:%d' % p for p in _free_ports(2))
    assert train.main(['--ps-hosts', ps, '--worker-hosts', worker, '--job-name', 'worker',
                       '--precision', 'bf16', '--dataset', '.', '--pretrained', 'none']) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('train.py: error: --precision bf16 does not run in a cluster')
