"""cli.py: flags matched exactly, the nearest real flag for a misspelt one, one-line errors,
each default shown once."""
import re
import sys

import pytest

import evaluate
import inference
import train


def _error(parse, argv, capsys, monkeypatch):
    """(exit code, stderr) of parsing `argv` as the command named by `parse`'s module."""
    monkeypatch.setattr(sys, 'argv', [parse.__module__ + '.py'])  # argparse's prog
    with pytest.raises(SystemExit) as exit:
        parse(argv)
    return exit.value.code, capsys.readouterr().err


def test_an_abbreviated_flag_is_not_taken_for_the_real_one(capsys, monkeypatch):
    # argparse's default would train everything's scopes under a typo's meaning.
    code, err = _error(train.parse_args, ['--trainable-scope', 'vgg_19/fc8'], capsys, monkeypatch)
    assert code == 2
    assert err == 'train.py: error: no flag --trainable-scope: did you mean --trainable-scopes?\n'


def test_a_misspelt_flag_gets_the_nearest_real_one_in_one_line(capsys, monkeypatch):
    code, err = _error(train.parse_args, ['--datset', 'photos', '--epochs', '3'], capsys,
                       monkeypatch)
    assert code == 2 and err.count('\n') == 1 and 'usage' not in err
    assert 'no flag --datset: did you mean --dataset?' in err
    code, err = _error(evaluate.parse_args, ['--batchsize=8'], capsys, monkeypatch)
    assert 'no flag --batchsize=8: did you mean --batch-size?' in err
    code, err = _error(inference.parse_args, ['x.jpg', '--zzzzzz'], capsys, monkeypatch)
    assert err == 'inference.py: error: no flag --zzzzzz (inference.py -h lists the flags)\n'


def test_a_bad_value_is_one_line(capsys, monkeypatch):
    code, err = _error(train.parse_args, ['--epochs', 'many'], capsys, monkeypatch)
    assert code == 2 and err == "train.py: error: argument --epochs: invalid float value: 'many'\n"


def test_every_flag_of_train_shows_its_default_once(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit:
        train.parse_args(['-h'])
    assert exit.value.code == 0
    text = re.sub(r'\s+', ' ', capsys.readouterr().out)
    options = re.split(r' (?=--[a-z-]+[ ,])', text.split('options:')[1])
    for name, default in [('--epochs', '20'), ('--batch-size', '64'), ('--optimizer', 'momentum'),
                          ('--weight-decay', '0.0005'), ('--val-batch-size', '128'),
                          ('--max-steps', '0')]:
        block = next(o for o in options if o.startswith(name + ' '))
        assert block.count('(default') == 1 and '(default: %s)' % default in block, block
    block = next(o for o in options if o.startswith('--sync-replicas'))
    assert block.count('(default') == 1
    for empty in ('(default: )', '(default: None)', '(default: False)'):
        assert empty not in text
