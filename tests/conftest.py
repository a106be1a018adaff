"""Shared fixtures: offline MNIST from ../shared/data, one PolyMNIST build per session, and a
persistent JAX compilation cache so repeated runs skip recompiling."""

import os
import pathlib

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get('MOE_EBM_JAX_SHARED_DATA', ROOT.parent / 'shared' / 'data'))
MNIST_NPZ = SHARED_DATA / 'mnist' / 'mnist.npz'
BACKGROUNDS_DIR = SHARED_DATA / 'polymnist_backgrounds'

jax.config.update('jax_compilation_cache_dir', os.environ.get(
    'MOE_EBM_JAX_COMPILATION_CACHE', os.path.expanduser('~/.cache/moe_ebm_jax/jax_compilation_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
# The tests compare against exact sums and closed forms: full f32 products on every backend
# (a GPU's default runs f32 products on TF32 tensor cores, a TPU's on bf16 passes; a CPU is
# unchanged), and deterministic GPU kernels, so that resuming reproduces a run bit for bit there.
jax.config.update('jax_default_matmul_precision', 'highest')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_gpu_deterministic_ops=true').strip()


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    msg = (f'{path} not found: the tests read MNIST and backgrounds from ../shared/data (set '
           'MOE_EBM_JAX_SHARED_DATA to another folder of the same layout).')
    if os.environ.get('CI'):
      pytest.fail(msg)  # In CI a missing fixture is a broken setup, not a reason to skip.
    pytest.skip(msg)
  return path


@pytest.fixture(scope='session')
def mnist_npz() -> str:
  return str(_require(MNIST_NPZ))


@pytest.fixture(scope='session')
def backgrounds_dir() -> str:
  return str(_require(BACKGROUNDS_DIR))


@pytest.fixture(scope='session')
def mnist_arrays(mnist_npz) -> dict:
  with np.load(mnist_npz) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='session')
def polymnist_dir(tmp_path_factory, mnist_npz) -> str:
  """The default PolyMNIST (M=5, seed 0, scikit-image backgrounds), built once per session."""
  from moe_ebm_jax import polymnist  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  polymnist.builder(data_dir=data_dir, mnist_path=mnist_npz).download_and_prepare()
  return data_dir
