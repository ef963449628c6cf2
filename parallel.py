"""Where training runs: towers on the devices of one machine, and a cluster of machines on
TensorFlow's own distributed runtime (tf.train.Server, ClusterSpec, replica_device_setter).

One machine: the batch is split into one tower per device; the towers share the variables, each
computes the gradients of its share, and one update applies their average. A cluster: parameter
servers (job `ps`) hold the variables, workers (job `worker`, and `chief` if the cluster names
one) each run that graph on their own batches; the chief (`chief`:0, else `worker`:0) alone
restores the pretrained weights and writes checkpoints, summaries and validations.

The cluster comes from TF_CONFIG, as TensorFlow's own tools read it,

    {"cluster": {"ps": ["h0:2222"], "worker": ["h1:2222", "h2:2222"]},
     "task": {"type": "worker", "index": 0}}

or from the flags --ps-hosts, --worker-hosts, --job-name and --task-index. Reading them is plain
Python (`task_from`); only `start_server` and the graph functions need TensorFlow.
"""
import collections
import contextlib
import json
import logging
import signal
import threading
import time

import tensorflow.compat.v1 as tf

import cli

log = logging.getLogger('parallel')

TRAINER_JOBS = ('chief', 'worker')
JOBS = ('ps',) + TRAINER_JOBS

# cluster: {job: [host:port, ...]}; job and index: this process's task in it.
Task = collections.namedtuple('Task', 'cluster job index')


class ClusterError(ValueError):
    """A TF_CONFIG or cluster flags that do not describe a cluster and a task in it."""


# ---------------------------------------------------------------------------------------------
# The cluster and this process's task in it: plain Python.

def parse_tf_config(text):
    """The Task that TF_CONFIG's `text` describes, or None when it names no cluster."""
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ClusterError('TF_CONFIG is not JSON (%s): expected {"cluster": {"ps": [...], '
                           '"worker": [...]}, "task": {"type": "worker", "index": 0}}' % e)
    if not isinstance(config, dict):
        raise ClusterError('TF_CONFIG must be a JSON object with "cluster" and "task"')
    cluster, task = config.get('cluster') or {}, config.get('task') or {}
    if not cluster:
        return None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterError('TF_CONFIG: "cluster" must map job names to lists of host:port, '
                           'and "task" must be {"type": ..., "index": ...}')
    if 'type' not in task:
        raise ClusterError('TF_CONFIG names a cluster but no "task": {"type": ..., "index": ...}')
    index = task.get('index', 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise ClusterError('TF_CONFIG: task index %r is not an integer' % (index,))
    return check_task(Task(cluster, task['type'], index), 'TF_CONFIG')


def from_flags(ps_hosts, worker_hosts, job_name, task_index):
    """The Task the cluster flags describe, or None when none is given."""
    if not (ps_hosts or worker_hosts or job_name):
        return None
    if not (ps_hosts and worker_hosts and job_name):
        raise ClusterError('a cluster needs --ps-hosts, --worker-hosts and --job-name together '
                           '(and --task-index)')
    cluster = {'ps': cli.comma_list(ps_hosts), 'worker': cli.comma_list(worker_hosts)}
    return check_task(Task(cluster, job_name, task_index), '--job-name/--task-index')


def check_task(task, source):
    """`task` when its cluster is one this tool runs and it names a task of it."""
    unknown = sorted(set(task.cluster) - set(JOBS))
    if unknown:
        raise ClusterError('%s: cluster job %s is not one of %s' % (source, unknown[0],
                                                                    ', '.join(JOBS)))
    for job, addresses in task.cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ':' in a for a in addresses)):
            raise ClusterError('%s: cluster job %s must list host:port addresses, got %r'
                               % (source, job, addresses))
    if not task.cluster.get('ps'):
        raise ClusterError('%s: the cluster has no ps job; the parameter servers hold the '
                           'variables' % source)
    if len(task.cluster.get('chief', [])) > 1:
        raise ClusterError('%s: the cluster has %d chiefs; it can have one'
                           % (source, len(task.cluster['chief'])))
    if task.job not in task.cluster:
        raise ClusterError('%s: task type %s is not a job of the cluster (%s)'
                           % (source, task.job, ', '.join(sorted(task.cluster))))
    if not 0 <= task.index < len(task.cluster[task.job]):
        raise ClusterError('%s: the cluster has no task %s:%d (its %s job has %d task(s))'
                           % (source, task.job, task.index, task.job,
                              len(task.cluster[task.job])))
    return task


def task_from(args, tf_config):
    """This process's Task from the cluster flags in `args` or TF_CONFIG's text (None: no
    cluster, one machine). Raises ClusterError, also when both are given."""
    flagged = from_flags(args.ps_hosts, args.worker_hosts, args.job_name, args.task_index)
    configured = parse_tf_config(tf_config)
    if flagged and configured:
        raise ClusterError('both TF_CONFIG and --ps-hosts/--worker-hosts/--job-name describe a '
                           'cluster: unset TF_CONFIG or leave out the flags')
    return flagged or configured


def is_chief(task):
    """True when `task` restores, saves and validates: the only task without a cluster."""
    if task is None:
        return True
    chief = ('chief', 0) if task.cluster.get('chief') else ('worker', 0)
    return (task.job, task.index) == chief


def num_trainers(task):
    return 1 if task is None else sum(len(task.cluster.get(j, [])) for j in TRAINER_JOBS)


def task_device(task):
    return '/job:%s/task:%d' % (task.job, task.index)


def device_filters(task):
    """A trainer sees the parameter servers and itself, never waits on the other workers."""
    return ['/job:ps', task_device(task)]


# ---------------------------------------------------------------------------------------------
# Towers on one machine.

def tower_devices(num_gpus, devices, batch_size, visible_gpus):
    """The devices of the towers: `devices` (comma-separated) when given, else GPU 0 to
    `num_gpus` - 1 (None: all `visible_gpus`). [None] is one tower wherever TensorFlow puts it,
    as on a machine without GPUs. Each tower gets an equal share of `batch_size`."""
    if devices:
        towers = cli.comma_list(devices)
    else:
        num_gpus = visible_gpus if num_gpus is None else num_gpus
        if num_gpus > visible_gpus:
            raise ClusterError('--num-gpus %d: this machine has %d visible GPU(s)'
                               % (num_gpus, visible_gpus))
        towers = ['/device:GPU:%d' % i for i in range(num_gpus)] if num_gpus > 1 else [None]
    if batch_size % len(towers):
        raise ClusterError('--batch-size %d does not split evenly over %d towers: make it a '
                           'multiple of %d' % (batch_size, len(towers), len(towers)))
    return towers


def cpu_count(devices):
    """How many CPU devices the towers name (/cpu:1 needs two): for ConfigProto.device_count."""
    numbers = [tf.DeviceSpec.from_string(d).device_index or 0 for d in devices
               if d and (tf.DeviceSpec.from_string(d).device_type or '').upper() == 'CPU']
    return max(numbers) + 1 if numbers else 1


# The op types replica_device_setter sends to the parameter servers.
VARIABLE_OPS = ('Variable', 'VariableV2', 'VarHandleOp', 'AutoReloadVariable',
                'MutableHashTable', 'MutableHashTableOfTensors', 'MutableDenseHashTable')


def tower_device_setter(device, task, variables_device):
    """Where a tower's ops go: on `device` (of this task in a cluster), with the variables on
    the parameter servers in a cluster, else on `variables_device`, shared by all towers: the
    first tower's device, as tf_cnn_benchmarks keeps them on a GPU, since VGG19's 575 MB of
    weights would otherwise cross from the CPU to every GPU at every step (not measured here:
    no GPU on the development machines)."""
    if task is not None:
        worker = task_device(task) + (device or '')
        return tf.train.replica_device_setter(worker_device=worker,
                                              cluster=tf.train.ClusterSpec(task.cluster))
    if device is None:
        return None

    def place(op):
        return variables_device if op.type in VARIABLE_OPS else device
    return place


def on_towers(devices, task, build, *tensors):
    """Split each of `tensors` (batch-major) evenly over `devices` and return the list of
    build(*shares, reuse) for each tower: the first tower creates the variables, the others
    reuse them."""
    if len(devices) == 1:
        with placed(tower_device_setter(devices[0], task, devices[0])):
            return [build(*tensors, reuse=None)]
    shares = [tf.split(t, len(devices)) for t in tensors]
    results = []
    for i, device in enumerate(devices):
        with placed(tower_device_setter(device, task, devices[0])), tf.name_scope(
                'tower_%d' % i):
            results.append(build(*[s[i] for s in shares], reuse=True if i else None))
    return results


def placed(device_function):
    """tf.device(`device_function`), or nothing for None (tf.device(None) would clear the
    placement of the scopes around it)."""
    return contextlib.nullcontext() if device_function is None else tf.device(device_function)


def mean(tensors):
    """The average of the towers' `tensors` (the one tower's own when there is one)."""
    return tensors[0] if len(tensors) == 1 else tf.add_n(tensors) / len(tensors)


def average_gradients(tower_gradients):
    """[[(gradient, variable)] of each tower] -> [(mean gradient, variable)]; a variable that
    gets no gradient in a tower gets none in the mean."""
    averaged = []
    for pairs in zip(*tower_gradients):
        variable, gradients = pairs[0][1], [g for g, _ in pairs]
        averaged.append((None if any(g is None for g in gradients) else mean(gradients),
                         variable))
    return averaged


def tower_gradients(optimizer, losses, devices, task, var_list, before=()):
    """[(gradient, variable)] over `var_list`: the average of the gradients of `losses` (one per
    tower, each computed on its own device, after the ops `before`)."""
    gradients = []
    for loss, device in zip(losses, devices):
        with placed(tower_device_setter(device, task, devices[0])), tf.control_dependencies(
                before):
            # Ungated, as Keras' GradientTape: compat.v1's default (GATE_OP) adds control edges
            # between an op's gradients that keep oneDNN from fusing each bias gradient into its
            # convolution's filter gradient (measured on AMX: the bf16 step 11% slower).
            gradients.append(optimizer.compute_gradients(
                loss, var_list=var_list, gate_gradients=tf.train.Optimizer.GATE_NONE))
    return average_gradients(gradients)


def minimize(optimizer, losses, devices, task, var_list, global_step, before=()):
    """One update with the towers' averaged gradients (`tower_gradients`)."""
    return optimizer.apply_gradients(
        tower_gradients(optimizer, losses, devices, task, var_list, before), global_step)


# ---------------------------------------------------------------------------------------------
# Running in a cluster.

def trainer_device_setter(task):
    """Where a trainer's graph goes in a cluster: variables on the parameter servers, the rest
    on this task (None without a cluster)."""
    if task is None:
        return None
    return tf.train.replica_device_setter(worker_device=task_device(task),
                                          cluster=tf.train.ClusterSpec(task.cluster))


def sync_replicas(optimizer, task):
    """`optimizer` made synchronous over the trainers of `task`'s cluster (every update averages
    as many batches as there are trainers), and the hooks it needs."""
    workers = num_trainers(task)
    optimizer = tf.train.SyncReplicasOptimizer(optimizer, replicas_to_aggregate=workers,
                                               total_num_replicas=workers)
    return optimizer, [SyncReplicasHook(optimizer, task)]


class SyncReplicasHook(tf.train.SessionRunHook):
    """What SyncReplicasOptimizer's own hook does (initial tokens; the chief's thread that
    aggregates the gradients and hands out the tokens of the next step), without its hang at
    the end: synchronous training needs every worker at every step, so it ends for all when one
    ends. A worker that ends raises a flag on the parameter servers and hands out tokens, so
    those waiting for a step that can no longer be aggregated return, see the flag and stop."""

    def __init__(self, sync_optimizer, task):
        self._optimizer = sync_optimizer
        self._chief, self._workers = is_chief(task), num_trainers(task)

    def begin(self):
        optimizer = self._optimizer
        if self._chief:
            self._local_init = optimizer.chief_init_op
            self._start_tokens = optimizer.get_init_tokens_op()
            self._aggregate = optimizer.get_chief_queue_runner().enqueue_ops[0]
        else:
            self._local_init = optimizer.local_step_init_op
        # A local variable: on the parameter servers, but not in checkpoints (a resumed run
        # would end at once), and set back by every worker that starts.
        with tf.device(tf.train.get_global_step().device):
            self._done = tf.Variable(False, trainable=False, name='sync_replicas_done',
                                     collections=[tf.GraphKeys.LOCAL_VARIABLES])
            self._set_done = self._done.assign(True)
            self._end_tokens = optimizer.get_init_tokens_op(self._workers)

    def after_create_session(self, session, coord):
        missing = session.run(self._optimizer.ready_for_local_init_op)
        if len(missing):
            raise RuntimeError('SyncReplicasOptimizer: variables not initialised: %s' % missing)
        session.run(self._local_init)
        if self._chief:
            session.run(self._start_tokens)
            # Not registered with `coord`: at the end it waits on gradients that will not come,
            # until closing the session cancels it.
            threading.Thread(target=self._aggregate_steps, args=(session, coord),
                             daemon=True).start()

    def _aggregate_steps(self, session, coord):
        try:
            while not coord.should_stop():
                session.run(self._aggregate)
        except (tf.errors.CancelledError, tf.errors.OutOfRangeError, tf.errors.AbortedError,
                tf.errors.UnavailableError):
            return  # the session closed, or a task went away: the training loop sees to it
        except Exception as e:  # anything else stops training, with its error
            coord.request_stop(e)

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(self._done)

    def after_run(self, run_context, run_values):
        if run_values.results:
            log.info('another worker has ended: synchronous training stops here')
            run_context.request_stop()

    def end(self, session):
        session.run(self._set_done)
        session.run(self._end_tokens)


def stored_on_ps(fed):
    """(variable, [op]): placeholder `fed`'s value kept in a variable beside the global step,
    and the op that stores it, to run before each step's gradients: SyncReplicasOptimizer makes
    its update in the chief's thread, where nothing is fed."""
    with tf.device(tf.train.get_global_step().device):
        stored = tf.Variable(0.0, trainable=False, name=fed.op.name + '_stored',
                             collections=[tf.GraphKeys.LOCAL_VARIABLES])
    return stored, [stored.assign(fed)]


class StepCountHook(tf.train.SessionRunHook):
    """Counts the steps this trainer ran and says so at the end: in a cluster, what each
    worker contributed."""

    def __init__(self, task):
        self._name, self._steps = '%s:%d' % (task.job, task.index), 0

    def after_create_session(self, session, coord):
        # A second one in a log: the session was made again, after a task of the cluster failed.
        log.info('%s: session ready at global step %d', self._name,
                 session.run(tf.train.get_global_step()))

    def after_run(self, run_context, run_values):
        self._steps += 1

    def end(self, session):
        log.info('%s ran %d steps of the global step %d', self._name, self._steps,
                 session.run(tf.train.get_global_step()))


def wait_for_chief(target, config, timeout_secs=3600):
    """Wait until the chief has initialised (or restored) the model, checking every second:
    MonitoredTrainingSession's worker session checks every 30 s."""
    uninitialized = tf.report_uninitialized_variables(tf.global_variables())
    deadline = time.time() + timeout_secs
    with tf.Session(target, config=config) as session:
        while time.time() < deadline:
            try:
                if not len(session.run(uninitialized)):
                    return
            except (tf.errors.UnavailableError, tf.errors.AbortedError):
                log.debug('a parameter server is not up yet')
            time.sleep(1)
    raise ClusterError('the chief did not initialise the model within %d s' % timeout_secs)


def session_config(task, devices, config):
    """`config` (a ConfigProto) with what this trainer adds: the device filters in a cluster, as
    many logical CPU devices as the towers name, and ops without a kernel for a tower's device
    (a GPU) moved to one that has."""
    config.allow_soft_placement = True
    if devices != [None]:
        config.device_count['CPU'] = cpu_count(devices)
    if task is not None:
        config.device_filters.extend(device_filters(task))
    return config


def start_server(task, config=None):
    """This task's tf.train.Server, serving at once; a port in use is a ClusterError."""
    try:
        return tf.train.Server(tf.train.ClusterSpec(task.cluster), job_name=task.job,
                               task_index=task.index, config=config, start=True)
    except (tf.errors.OpError, ValueError) as e:
        raise ClusterError('cannot serve %s:%d at %s: %s; is the port in use, or the host not '
                           'this machine?' % (task.job, task.index,
                                              task.cluster[task.job][task.index],
                                              str(e).strip().splitlines()[0][:200]))


def serve(task):
    """A parameter server: hold the variables for the workers until SIGTERM or Ctrl-C."""
    start_server(task)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log.info('parameter server ps:%d serving at %s; stop it with Ctrl-C or SIGTERM',
             task.index, task.cluster['ps'][task.index])
    while not stop.wait(0.5):  # a timeout keeps the signal handlers running
        pass
    log.info('parameter server ps:%d stopped', task.index)
