"""The repository stands alone: no file cites a path outside it (a clone has nothing beside it)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {'.git', '.venv', '__pycache__', '.pytest_cache', '.ruff_cache', 'runs', 'build',
             'dist'}
TEXT = ('.py', '.md', '.sh', '.cfg', '.toml', '.txt', '.yaml', '.yml', '.json')
# A path that climbs out of the checkout (../shared/..., ../../x), or an absolute home of a
# developer's checkout.
OUTSIDE = re.compile(r'\.\./shared\b|\.\./\.\./|/work/main\b')


def text_files():
  for top, dirs, files in os.walk(ROOT):
    dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith('.egg-info')]
    for name in files:
      path = os.path.join(top, name)
      if (name.endswith(TEXT) or os.path.basename(top) == '.ci') and path != __file__:
        yield path


def test_no_file_cites_a_path_outside_the_repository():
  hits = []
  for path in text_files():
    with open(path, encoding='utf-8', errors='replace') as f:
      for number, line in enumerate(f, 1):
        if OUTSIDE.search(line):
          hits.append(f'{os.path.relpath(path, ROOT)}:{number}: {line.strip()[:120]}')
  assert not hits, '\n'.join(hits)


def test_the_pattern_catches_what_it_must():
  for line in ('see ../shared/docs/method.md section 5', 'or ../../y',
               'MNIST from ../shared/data', 'cd /work/main && pytest'):
    assert OUTSIDE.search(line), line
  for line in ('docs/method.md, section 5', 'cd "$(dirname "$0")/.."', 'a/../b.py'):
    assert not OUTSIDE.search(line), line


def test_install_requires_are_ranges_that_the_ci_pins_satisfy():
  """setup.cfg declares lower bounds only (installing never downgrades a user's newer JAX or
  NumPy), and constraints.txt, what CI installs, pins every requirement within its range."""
  import configparser  # pylint: disable=g-import-not-at-top
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  from packaging.utils import canonicalize_name  # pylint: disable=g-import-not-at-top
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  lines = [l.strip() for l in cfg['options']['install_requires'].splitlines()]
  requirements = [Requirement(l) for l in lines if l and not l.startswith('#')]
  for extra in cfg['options.extras_require'].values():
    requirements += [Requirement(l.strip()) for l in extra.splitlines()
                     if l.strip() and not l.strip().startswith('#')]
  pins = {}
  with open(os.path.join(ROOT, 'constraints.txt')) as f:
    for line in f:
      if line.strip() and not line.startswith('#'):
        name, _, version = line.strip().partition('==')
        pins[canonicalize_name(name)] = version
  assert len(requirements) >= 15
  for req in requirements:
    assert [s.operator for s in req.specifier] == ['>='], f'{req}: a lower bound only'
    pin = pins.get(canonicalize_name(req.name))
    assert pin is not None, f'{req.name} is not pinned in constraints.txt'
    assert req.specifier.contains(pin, prereleases=True), f'{req.name}=={pin} outside {req}'

