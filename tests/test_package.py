"""setup.cfg: the pins of requirements.txt, every module, and console scripts that run."""
import configparser
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT


def _setup_cfg():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, 'setup.cfg'))
    return config


def _lines(text):
    return sorted(line.strip() for line in text.splitlines()
                  if line.strip() and not line.strip().startswith(('#', '-r')))


def _console_scripts():
    entries = _lines(_setup_cfg()['options.entry_points']['console_scripts'])
    return dict(tuple(part.strip() for part in entry.split('=')) for entry in entries)


def test_install_requires_are_the_requirements_file():
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        assert _lines(_setup_cfg()['options']['install_requires']) == _lines(f.read())


def test_every_module_is_packaged():
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py'))}
    packaged = {m.strip() for m in _setup_cfg()['options']['py_modules'].split(',')}
    assert packaged == modules
    assert {target.split(':')[0] for target in _console_scripts().values()} <= packaged


@pytest.mark.slow
def test_pip_install_gives_console_scripts_that_answer_help(tmp_path):
    # A copy of what the package is made of, so the build leaves nothing in the checkout.
    source = tmp_path / 'source'
    source.mkdir()
    for name in ['setup.cfg', 'pyproject.toml', 'README.md'] + glob.glob1(ROOT, '*.py'):
        shutil.copy(os.path.join(ROOT, name), source)
    # A fresh environment that sees this one's packages (TensorFlow is not installed twice):
    # pip must find every install_requires pin satisfied, and no index is reachable to it.
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    fresh_site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
                                 '["purelib"])'], capture_output=True, text=True,
                                check=True).stdout.strip()
    with open(os.path.join(fresh_site, 'outer.pth'), 'w') as f:
        f.write('\n'.join({sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}))
    install = subprocess.run([python, '-m', 'pip', 'install', '--no-index', '--no-build-isolation',
                              str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    for script in _console_scripts():
        result = subprocess.run([str(venv / 'bin' / script), '--help'], cwd=str(tmp_path),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, script + ': ' + result.stderr[-2000:]
        assert result.stdout.startswith('usage: ' + script), result.stdout
