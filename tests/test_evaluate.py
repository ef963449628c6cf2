"""evaluate.py: the report's figures on hand-made predictions, its files, and the curves."""
import csv
import json
import os
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import evaluate

IDS = ['a', 'b', 'c', 'd']  # d: no image and never predicted


def _predictions():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    first = np.array([0, 0, 0, 1, 1, 0, 0, 2])
    second = np.array([1, 1, 1, 0, 0, 2, 2, 0])  # the 2nd guess saves images 3 and 6
    return {'labels': labels, 'top': np.stack([first, second], axis=1),
            'probabilities': np.full([8, 2], 0.5), 'paths': ['%d.jpg' % i for i in range(8)]}


def test_report_on_hand_made_predictions():
    result = evaluate.report(_predictions(), IDS, [i.upper() for i in IDS])
    assert result['num_examples'] == 8 and result['k'] == 2
    assert result['top1'] == 5 / 8 and result['top5'] == 7 / 8
    assert result['confusion_matrix'] == [[3, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0] * 4]
    by_class = {c['class']: c for c in result['per_class']}
    assert by_class['a']['label'] == 'A'
    for cls, precision, recall, f1, support in [('a', 3 / 5, 3 / 4, 2 / 3, 4),
                                                ('b', 1 / 2, 1 / 2, 1 / 2, 2),
                                                ('c', 1.0, 1 / 2, 2 / 3, 2),
                                                ('d', 0.0, 0.0, 0.0, 0)]:
        c = by_class[cls]
        assert (c['precision'], c['recall'], c['f1'], c['support']) == pytest.approx(
            (precision, recall, f1, support)), cls
    # averages over the classes present (not d), weighted by support
    assert result['macro_avg']['precision'] == pytest.approx((0.6 + 0.5 + 1.0) / 3)
    assert result['macro_avg']['recall'] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert result['weighted_avg']['precision'] == pytest.approx((4 * 0.6 + 2 * 0.5 + 2) / 8)
    assert result['weighted_avg']['recall'] == pytest.approx(5 / 8)  # = accuracy
    assert result['most_confused'] == [{'true': 'a', 'predicted': 'b', 'count': 1},
                                       {'true': 'b', 'predicted': 'a', 'count': 1},
                                       {'true': 'c', 'predicted': 'a', 'count': 1}]
    assert [(w['image'], w['true'], w['predicted']) for w in result['misclassified']] == [
        ('3.jpg', 'a', 'b'), ('5.jpg', 'b', 'a'), ('6.jpg', 'c', 'a')]
    text = evaluate.format_report(result, show=2)
    assert '0.6250' in text and 'macro avg' in text and 'a -> b: 1' in text
    assert 'misclassified: 3 of 8 images, the first 2:' in text and '6.jpg' not in text
    json.dumps(result)  # --json prints it as it is


def test_most_confused_orders_by_count():
    matrix = np.array([[5, 0, 7], [2, 4, 0], [9, 1, 3]])
    assert evaluate.most_confused(matrix, 2) == [(2, 0, 9), (0, 2, 7)]


def test_write_outputs(tmp_path):
    result = evaluate.report(_predictions(), IDS, IDS)
    evaluate.write_outputs(result, str(tmp_path), step=7)
    with open(tmp_path / 'confusion_matrix.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['true \\ predicted'] + IDS and rows[1] == ['a', '3', '1', '0', '0']
    with open(tmp_path / 'misclassified.csv') as f:
        assert len(list(csv.reader(f))) == 1 + 3
    assert (tmp_path / 'confusion_matrix.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    events = [e for path in tmp_path.glob('events.out.tfevents.*')
              for e in tf.train.summary_iterator(str(path)) if e.summary.value]
    assert [(e.step, e.summary.value[0].tag) for e in events] == [(7, 'confusion_matrix')]


def _write_scalars(directory, points):
    writer = tf.summary.FileWriter(directory)
    for step, tag, value in points:
        writer.add_summary(tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=value)]),
                           step)
    writer.close()


def test_curves_read_the_newest_value_of_a_step_redone_after_a_restart(tmp_path):
    directory = str(tmp_path)
    _write_scalars(directory, [(1, 'loss', 3.0), (2, 'loss', 2.0), (2, 'accuracy', 0.5)])
    time.sleep(1.1)  # a new event file, as a restarted run writes
    _write_scalars(directory, [(2, 'loss', 1.5), (3, 'loss', 1.0)])
    scalars = evaluate.read_scalars(directory, ['loss', 'accuracy', 'learning_rate'])
    assert scalars == {'loss': ([1, 2, 3], [3.0, 1.5, 1.0]), 'accuracy': ([2], [0.5])}
    path = evaluate.plot_curves(directory)
    assert path == os.path.join(directory, 'curves.png') and os.path.getsize(path) > 1000


def test_curves_of_an_empty_directory(tmp_path):
    assert evaluate.plot_curves(str(tmp_path)) is None
    assert evaluate.main(['--checkpoint-dir', str(tmp_path), '--curves']) == 2
