"""inference.py: the same input as validation, predictions, and every kind of bad file."""
import json
import os

import numpy as np
import PIL.Image
import pytest
import tensorflow.compat.v1 as tf

import data
import hardware
import inference
from conftest import bad_files, image_files, random_image, run_script, usage_error


@pytest.fixture(scope='module')
def predictor(checkpoint_dir):
    return inference.Predictor(checkpoint_dir)


def test_inference_input_equals_the_validation_pipeline_input(tmp_path, predictor):
    paths = image_files(str(tmp_path))
    size = predictor.settings['image_size']
    batch = tf.data.make_one_shot_iterator(data.eval_pipeline(
        data.Split(paths, [0] * len(paths)), size, len(paths))).get_next()[0]
    with tf.Session() as session:
        validation_inputs = session.run(batch)
    for path, expected in zip(paths, validation_inputs):
        ours = predictor.preprocess(inference.read_rgb(path, 50e6))
        np.testing.assert_array_equal(ours, expected, err_msg=path)


@pytest.mark.parametrize('tta', ['flip', '10crop'])
def test_test_time_augmentation_averages_the_probabilities_of_the_views(
        checkpoint_dir, tta, predictor):
    image = random_image(70, 90, seed=4)
    augmented = inference.Predictor(checkpoint_dir, tta=tta)
    views = augmented.preprocess(image)
    assert views.shape == ({'flip': 2, '10crop': 10}[tta], 32, 32, 3)
    # Each view through the plain predictor, the probabilities averaged here.
    expected = predictor.probabilities(list(views)).mean(axis=0)
    got = augmented.probabilities([views])[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.log(got), np.log(expected), atol=1e-4)


def test_top_k_orders_by_probability():
    settings = {'class_ids': ['a', 'b', 'c'], 'class_names': ['A', 'B', 'C']}
    top = inference.top_k(np.array([0.2, 0.5, 0.3]), settings, 2)
    assert top == [{'class': 'b', 'label': 'B', 'probability': 0.5},
                   {'class': 'c', 'label': 'C', 'probability': 0.3}]


@pytest.mark.slow
def test_json_lines_for_good_and_bad_files(tmp_path, checkpoint_dir):
    images = tmp_path / 'images'
    images.mkdir()
    good_files = image_files(str(images))
    _, bad = bad_files(str(tmp_path))
    missing = str(tmp_path / 'missing.jpg')
    rc, out, err = run_script('inference.py', '--checkpoint-dir', checkpoint_dir, '--json',
                              '--top-k', '2', '--batch-size', '4', str(images), *bad, missing)
    assert rc == 1
    lines = [json.loads(line) for line in out.splitlines()]
    by_image = {line['image']: line for line in lines}
    assert sorted(by_image) == sorted(good_files + bad + [missing])
    for path in good_files:
        predictions = by_image[path]['predictions']
        assert len(predictions) == 2
        assert predictions[0]['probability'] >= predictions[1]['probability']
        assert predictions[0]['class'] in ('astronaut', 'coffee', 'camera')
        assert predictions[0]['label'] == predictions[0]['class'].title()
    for path in bad + [missing]:
        assert 'error' in by_image[path] and 'predictions' not in by_image[path]
    assert by_image[missing]['error'] == 'no such file'
    assert 'inference.py: %s: no such file' % missing in err


@pytest.mark.slow
def test_text_output_exit_status_and_pixel_limit(tmp_path, checkpoint_dir):
    good, bad = bad_files(str(tmp_path))
    big = str(tmp_path / 'big.png')
    PIL.Image.new('RGB', (3000, 2000)).save(big)
    rc, out, err = run_script('inference.py', '--checkpoint-dir', checkpoint_dir, '--max-pixels',
                              '5e6', good, big)
    assert rc == 1
    assert out.splitlines()[0] == good and len(out.splitlines()) == 4  # 3 classes
    assert '%' in out.splitlines()[1]
    assert 'big.png: cannot read image: 3000x2000 pixels is over --max-pixels' in err
    rc, out, err = run_script('inference.py', '--checkpoint-dir', checkpoint_dir, good)
    # A clean run says on stderr only which precision it ran, and why.
    said = 'inference.py: precision %s: %s' % hardware.choose_precision(
        'auto', [], hardware.cpu_flags(), training=False)
    assert rc == 0 and err.splitlines() == [said]  # no CUDA probe of TensorFlow's either
    assert said.startswith('inference.py: precision fp32: ')
    rc, out, err = run_script('inference.py', '--checkpoint-dir', checkpoint_dir, bad[0])
    assert rc == 1 and out == '' and 'empty.jpg' in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_directory_without_a_model_is_a_one_line_error(tmp_path):
    good, _ = bad_files(str(tmp_path))
    rc, out, err = run_script('inference.py', '--checkpoint-dir', str(tmp_path / 'nothing'), good)
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith('inference.py: error:')
    assert 'train one with train.py' in err


@pytest.mark.slow
def test_explain_writes_a_heat_map_named_after_each_image(tmp_path, checkpoint_dir, capsys):
    good, _ = bad_files(str(tmp_path / 'in'))
    other = str(tmp_path / 'in' / 'other.png')
    PIL.Image.fromarray(random_image(40, 60, seed=9)).save(other)
    code, out, err = run_script('inference.py', '--checkpoint-dir', checkpoint_dir, good, other,
                                '--explain', str(tmp_path / 'maps'))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / 'maps')) == ['good.png', 'other.png']
    assert '--explain needs' in usage_error(inference.parse_args, [
        good, '--saved-model', 'm', '--explain', 'd'], capsys)
