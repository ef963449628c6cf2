"""export.py: a SavedModel that predicts as the checkpoint does, from bytes or from pixels."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import export
import inference
import rundir
from conftest import PHOTOS, image_files, make_checkpoint_dir, random_image, run_script


# The way TF Serving and TF2 users load it: eager, tf.saved_model.load, the named signatures.
LOAD_IN_TF2 = """
import sys
import numpy as np
import PIL.Image
import tensorflow as tf
saved = tf.saved_model.load(sys.argv[1])
images = [open(p, 'rb').read() for p in sys.argv[3:]]
out = {'bytes_' + k: v.numpy()
       for k, v in saved.signatures['serving_default'](images=tf.constant(images)).items()}
pixels = np.asarray(PIL.Image.open(sys.argv[3]).convert('RGB'), np.float32)[None]
out.update({'pixels_' + k: v.numpy()
            for k, v in saved.signatures['pixels'](pixels=tf.constant(pixels)).items()})
np.savez(sys.argv[2], **out)
"""


def assert_same_probabilities(ours, expected):
    """Equal to 1e-5, and so are the logarithms: the random test model's softmax is often near
    one-hot, where a plain 1e-5 would not see the small classes."""
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(np.log(ours), np.log(expected), atol=1e-4)


@pytest.fixture(scope='module')
def saved_model(checkpoint_dir, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp('export') / '1')
    assert export.export(checkpoint_dir, directory) == rundir.find_checkpoint(checkpoint_dir)
    return directory


@pytest.mark.slow
def test_an_export_with_test_time_augmentation_predicts_as_the_checkpoint_with_it(
        tmp_path, checkpoint_dir):
    saved_model = str(tmp_path / 'export' / '1')
    export.export(checkpoint_dir, saved_model, tta='flip')
    images = [random_image(90, 60, seed=5), random_image(40, 70, seed=6)]
    checkpoint = inference.Predictor(checkpoint_dir, tta='flip')
    expected = checkpoint.probabilities([checkpoint.preprocess(i) for i in images])
    exported = inference.SavedModelPredictor(saved_model)
    assert exported.tta == 'flip' and exported.settings['tta'] == 'flip'
    assert_same_probabilities(exported.probabilities(images), expected)
    with pytest.raises(rundir.SettingsError, match='exported with --tta flip'):
        inference.SavedModelPredictor(saved_model, tta='10crop')


@pytest.mark.slow
def test_saved_model_predicts_as_the_checkpoint(tmp_path, checkpoint_dir, saved_model):
    paths = image_files(str(tmp_path))  # JPEG (RGB, gray, CMYK), PNG (alpha, 16 bit), GIF, BMP
    images = [inference.read_rgb(p, 50e6) for p in paths] + [random_image(90, 60, seed=5)]
    checkpoint = inference.Predictor(checkpoint_dir)
    expected = checkpoint.probabilities([checkpoint.preprocess(i) for i in images])
    exported = inference.SavedModelPredictor(saved_model)
    assert exported.settings == checkpoint.settings
    ours = exported.probabilities([exported.preprocess(i) for i in images])
    assert_same_probabilities(ours, expected)


@pytest.mark.slow
def test_tf2_loads_both_signatures_with_class_names_inside(tmp_path, checkpoint_dir,
                                                           saved_model):
    paths = image_files(str(tmp_path))  # JPEG (RGB, gray, CMYK), PNG (alpha, 16 bit), GIF, BMP
    subprocess.run([sys.executable, '-c', LOAD_IN_TF2, saved_model, str(tmp_path / 'out.npz')]
                   + paths, check=True, timeout=300)
    out = np.load(tmp_path / 'out.npz', allow_pickle=True)
    checkpoint = inference.Predictor(checkpoint_dir)
    expected = checkpoint.probabilities([checkpoint.preprocess(inference.read_rgb(p, 50e6))
                                         for p in paths])
    assert_same_probabilities(out['bytes_probabilities'], expected)
    assert_same_probabilities(out['pixels_probabilities'], expected[:1])
    settings = checkpoint.settings
    order = np.argsort(-expected, axis=1, kind='stable')
    np.testing.assert_array_equal(out['bytes_classes'], order)
    np.testing.assert_allclose(out['bytes_scores'], np.sort(expected)[:, ::-1], atol=1e-5)
    names = np.array(settings['class_names'])[order]
    assert [[n.decode() for n in row] for row in out['bytes_labels']] == names.tolist()
    ids = np.array(settings['class_ids'])[order]
    assert [[n.decode() for n in row] for row in out['bytes_class_ids']] == ids.tolist()


@pytest.mark.slow
def test_inference_cli_with_saved_model_prints_what_the_checkpoint_does(tmp_path, checkpoint_dir,
                                                                        saved_model):
    paths = image_files(str(tmp_path))

    def cli(*args):
        code, out, err = run_script('inference.py', '--json', *args, *paths)
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines()]
    for a, b in zip(cli('--saved-model', saved_model), cli('--checkpoint-dir', checkpoint_dir)):
        assert a['image'] == b['image']
        assert [p['class'] for p in a['predictions']] == [p['class'] for p in b['predictions']]
        np.testing.assert_allclose([p['probability'] for p in a['predictions']],
                                   [p['probability'] for p in b['predictions']], atol=1e-5)


def test_export_refuses_a_used_directory_and_a_missing_model(tmp_path, checkpoint_dir):
    used = tmp_path / 'models' / '1'
    used.mkdir(parents=True)
    (used / 'saved_model.pb').write_bytes(b'earlier version')
    with pytest.raises(export.ExportError, match='already exists and is not empty'):
        export.export(checkpoint_dir, str(used))
    assert (used / 'saved_model.pb').read_bytes() == b'earlier version'
    with pytest.raises(export.ExportError, match='is a file'):
        export.export(checkpoint_dir, str(used / 'saved_model.pb' / '2'))
    with pytest.raises(export.ExportError, match='not a directory to export into'):
        export.export(checkpoint_dir, '')
    with pytest.raises(rundir.SettingsError, match='holds no trained model'):
        export.export(str(tmp_path / 'nothing'), str(tmp_path / 'models' / '2'))
    assert sorted(os.listdir(tmp_path / 'models')) == ['1']
    with pytest.raises(rundir.SettingsError, match='not a SavedModel written by export.py'):
        export.load_settings(str(used))
    with pytest.raises(rundir.SettingsError, match='pass a version directory such as .*1$'):
        export.load_settings(str(tmp_path / 'models'))


@pytest.mark.slow
@pytest.mark.parametrize('target', ['out', 'a-file/out'])
def test_export_cli_errors_are_one_line(tmp_path, checkpoint_dir, target):
    (tmp_path / 'a-file').write_text('not a directory')
    model_dir = checkpoint_dir if '/' in target else str(tmp_path / 'nothing')
    code, _, err = run_script('export.py', '--checkpoint-dir', model_dir, str(tmp_path / target),
                              timeout=120)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith('export.py: error: ')
    assert 'Traceback' not in err and not os.path.exists(tmp_path / 'out')
    assert sorted(os.listdir(tmp_path)) == ['a-file']


@pytest.mark.slow
def test_a_damaged_saved_model_is_a_settings_error(tmp_path, saved_model):
    damaged = tmp_path / 'damaged'
    shutil.copytree(os.path.join(saved_model, export.EXTRA_DIR), damaged / export.EXTRA_DIR)
    with pytest.raises(rundir.SettingsError, match='SavedModel file does not exist'):
        inference.SavedModelPredictor(str(damaged))
    shutil.copy(os.path.join(saved_model, 'saved_model.pb'), damaged)  # without its variables
    with pytest.raises(rundir.SettingsError, match='cannot load SavedModel'):
        inference.SavedModelPredictor(str(damaged))


@pytest.mark.slow
def test_evaluate_inference_and_the_saved_model_agree_with_default_flags(tmp_path,
                                                                         photo_dataset):
    # The precision policy: every command predicts in float32 by default, whatever the CPU, so
    # a bfloat16 machine gives the answers an AVX2 one does (issue: 0.7508 against 0.7668).
    checkpoint_dir, saved_model = str(tmp_path / 'model'), str(tmp_path / 'export' / '1')
    make_checkpoint_dir(checkpoint_dir, sorted(PHOTOS))  # the dataset's classes, in its order
    export.export(checkpoint_dir, saved_model)

    def run(program, *args):
        code, out, err = run_script(program, '--json', *args)
        assert code == 0, err
        return out, err
    out, err = run('evaluate.py', '--checkpoint-dir', checkpoint_dir, '--dataset',
                   photo_dataset, '--output-dir', str(tmp_path / 'eval'), '--explain')
    assert 'precision fp32: predictions are float32 on every machine' in err
    report = json.loads(out)
    wrong = {w['image']: (w['predicted'], w['probability']) for w in report['misclassified']}
    assert len(wrong) >= 3, report['top1']  # the random model gets most of them wrong
    # A heat map of each misclassified image beside misclassified.csv, named after it (the
    # crops of the three photos have the same names: 000.jpg ...).
    assert len(os.listdir(tmp_path / 'eval' / 'explain')) == len(wrong)
    assert os.path.isfile(tmp_path / 'eval' / 'misclassified.csv')
    for source in (['--checkpoint-dir', checkpoint_dir], ['--saved-model', saved_model]):
        lines = run('inference.py', *source, *sorted(wrong))[0].splitlines()
        for answer in map(json.loads, lines):
            best = answer['predictions'][0]
            assert best['class'] == wrong[answer['image']][0]
            assert best['probability'] == pytest.approx(wrong[answer['image']][1], abs=1e-5)
