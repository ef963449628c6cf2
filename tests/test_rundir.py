"""rundir.py: the settings record, the best checkpoint's bookkeeping, checkpoint lookup."""
import glob
import os

import pytest
import tensorflow.compat.v1 as tf

import rundir


def test_settings_round_trip_and_damage(tmp_path):
    assert rundir.load_settings(str(tmp_path)) is None
    settings = {'class_ids': ['a'], 'class_names': ['A'], 'image_size': 32,
                'fc_conv_padding': 'SAME', 'global_pool': True, 'preprocessing': {}}
    rundir.save_settings(str(tmp_path), settings)
    assert rundir.load_settings(str(tmp_path)) == settings
    (tmp_path / rundir.SETTINGS_FILE).write_text('{"class_ids": [')
    with pytest.raises(rundir.SettingsError, match='settings.json'):
        rundir.load_settings(str(tmp_path))


def test_best_checkpoint_bookkeeping(tmp_path):
    directory = str(tmp_path)
    with pytest.raises(rundir.SettingsError, match='no best checkpoint in .*--checkpoint latest'):
        rundir.find_checkpoint(directory, 'best')
    assert rundir.load_best(directory) is None
    weight = tf.Variable(1.0)
    with tf.Session() as session:
        session.run(weight.initializer)
        rundir.save_best(session, rundir.best_saver(directory, [weight]), directory,
                         {'step': 10, 'accuracy': 0.5})
        session.run(weight.assign(2.0))
        # a new saver, as after a restart, still replaces the best that is there
        rundir.save_best(session, rundir.best_saver(directory, [weight]), directory,
                         {'step': 20, 'accuracy': 0.75})
    assert rundir.load_best(directory) == {'step': 20, 'accuracy': 0.75,
                                           'checkpoint': 'model.ckpt-20'}
    best = rundir.find_checkpoint(directory, 'best')
    assert best == os.path.join(directory, 'best', 'model.ckpt-20')
    assert tf.train.load_checkpoint(best).get_tensor('Variable') == 2.0
    assert not glob.glob(os.path.join(directory, 'best', 'model.ckpt-10*'))  # replaced
    assert rundir.find_checkpoint(directory, best) == best
    with pytest.raises(rundir.SettingsError, match='no latest checkpoint'):
        rundir.find_checkpoint(directory, 'latest')
    # The best of a step that has its checkpoint already shares that checkpoint's files.
    with tf.Session() as session:
        session.run(weight.assign(3.0))
        latest = tf.train.Saver(sharded=True).save(session, os.path.join(directory, 'model.ckpt'),
                                                   30)
        saver = rundir.best_saver(directory, [weight])
        rundir.save_best(session, saver, directory, {'step': 30, 'accuracy': 0.8})
        best = rundir.find_checkpoint(directory, 'best')
        assert best == os.path.join(directory, 'best', 'model.ckpt-30')
        assert os.path.samefile(glob.glob(best + '.data-*')[0], glob.glob(latest + '.data-*')[0])
        assert tf.train.load_checkpoint(best).get_tensor('Variable') == 3.0
        assert not glob.glob(os.path.join(directory, 'best', 'model.ckpt-20*'))
        # and a later best without a checkpoint of its step is saved, the link removed
        session.run(weight.assign(4.0))
        rundir.save_best(session, saver, directory, {'step': 40, 'accuracy': 0.9})
    assert rundir.load_best(directory)['checkpoint'] == 'model.ckpt-40'
    assert sorted(os.listdir(os.path.join(directory, 'best'))) == [
        'best.json', 'checkpoint', 'model.ckpt-40.data-00000-of-00001', 'model.ckpt-40.index']
    assert tf.train.load_checkpoint(latest).get_tensor('Variable') == 3.0
    with pytest.raises(rundir.SettingsError, match='no checkpoint nowhere'):
        rundir.find_checkpoint(directory, 'nowhere')


def test_settings_of_other_preprocessing_are_refused(tmp_path):
    settings = {'class_ids': ['a'], 'class_names': ['a'], 'image_size': 32,
                'fc_conv_padding': 'SAME', 'global_pool': True, 'preprocessing': {'name': 'old'}}
    rundir.save_settings(str(tmp_path), settings)
    assert rundir.load_settings(str(tmp_path)) == settings
    with pytest.raises(rundir.SettingsError, match='other preprocessing'):
        rundir.load_settings(str(tmp_path), check_preprocessing=True)


def test_a_checkpoint_that_does_not_fit_is_a_settings_error(tmp_path):
    with tf.Graph().as_default():
        other = tf.Variable(1.0, name='other')
        with tf.Session() as session:
            session.run(other.initializer)
            path = tf.train.Saver([other]).save(session, str(tmp_path / 'model.ckpt'))
    weight = tf.Variable(1.0, name='weight')
    with tf.Session() as session:
        with pytest.raises(rundir.SettingsError, match='cannot restore .*model.ckpt: '):
            rundir.restore(tf.train.Saver([weight]), session, path)
