"""PolyMNIST: M aligned modalities of one MNIST digit on different backgrounds, as a TFDS dataset.

The protocol (Sutter et al. 2021, as in docs/method.md, section 6), with two flaws of
the reference generator fixed: the seed is applied, and backgrounds are taken in name order.

- Train tuples come from MNIST train only, test tuples from MNIST test only.
- For each digit class and each modality, an independent random permutation of that class's
  MNIST indices; tuple i of class c takes the i-th entry of each modality's permutation, so the
  modalities of a tuple share the label and show different writers' digits. Tuples are stored in
  the order of their modality-0 MNIST index.
- Modality m of a tuple is a uniformly random 28x28 crop of background m with the pixels under
  the MNIST mask (uint8 > 128) inverted: value -> 255 - value (1 - value in [0, 1]).

After `import moe_ebm_jax`, `tfds.data_source('polymnist', data_dir=...)` reads (and on first
use builds) the default configuration: 5 modalities, seed 0, scikit-image backgrounds.

The end of this module registers the dataset 'polymnist' (datasets.py) for config.data: its
modality specs, its source (built on first use), its fingerprint (the build's, above) and its
coherence scorer (the CNN classifiers of classifiers.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import time
from typing import Iterator, Sequence
from unittest import mock

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import example_serializer

from moe_ebm_jax.data import classifiers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.data import mnist as mnist_lib
from moe_ebm_jax.vae import modalities as modalities_lib

IMAGE_SIZE = 28
NUM_CLASSES = 10
SPLITS = ('train', 'test')
_SPLIT_STREAM = {'train': 0, 'test': 1}  # Independent random streams per split.

# Photographs bundled in scikit-image's wheel (CC0 or public domain per its docstrings); the
# first M are the default backgrounds. The grey textures come last and are used as RGB.
SKIMAGE_BACKGROUNDS = ('coffee', 'chelsea', 'rocket', 'hubble_deep_field',
                       'immunohistochemistry', 'retina', 'astronaut', 'brick', 'grass', 'gravel')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


class PolymnistError(ValueError):
  """Bad PolyMNIST settings (modalities, backgrounds)."""


@dataclasses.dataclass(frozen=True)
class Background:
  name: str
  image: np.ndarray  # uint8 (H, W, 3), H, W >= 28.

  @property
  def sha256(self) -> str:
    return hashlib.sha256(np.ascontiguousarray(self.image).tobytes()).hexdigest()


def _as_rgb(image: np.ndarray, name: str) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
    raise PolymnistError(f'background {name}: expected an 8-bit grey, RGB or RGBA image, got '
                         f'shape {image.shape} dtype {image.dtype}.')
  image = np.ascontiguousarray(image[..., :3])
  if image.shape[0] < IMAGE_SIZE or image.shape[1] < IMAGE_SIZE:
    raise PolymnistError(f'background {name} is {image.shape[1]}x{image.shape[0]} pixels; it '
                         f'must be at least {IMAGE_SIZE}x{IMAGE_SIZE}.')
  return image


def image_files(folder: str) -> list[str]:
  """The image files of `folder`, sorted by name (the order fixes which modality is which)."""
  if not os.path.isdir(folder):
    raise PolymnistError(f'background folder {folder!r} does not exist.')
  return sorted(f for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'))


def load_backgrounds(num_modalities: int, folder: str | None = None) -> list[Background]:
  """The first `num_modalities` backgrounds: from `folder` in name order, else scikit-image's."""
  if num_modalities < 2:
    raise PolymnistError(f'num_modalities must be >= 2, got {num_modalities}.')
  if folder is None:
    if num_modalities > len(SKIMAGE_BACKGROUNDS):
      raise PolymnistError(
          f'scikit-image ships {len(SKIMAGE_BACKGROUNDS)} usable backgrounds, fewer than '
          f'num_modalities={num_modalities}; name a folder of images in config.data.backgrounds.')
    import skimage.data  # pylint: disable=g-import-not-at-top
    return [Background(n, _as_rgb(getattr(skimage.data, n)(), n))
            for n in SKIMAGE_BACKGROUNDS[:num_modalities]]

  from PIL import Image  # pylint: disable=g-import-not-at-top
  files = image_files(folder)
  if len(files) < num_modalities:
    raise PolymnistError(f'background folder {folder!r} holds {len(files)} images ({files}), '
                         f'fewer than num_modalities={num_modalities}.')
  if len(files) > num_modalities:
    logging.warning('PolyMNIST: using the first %d of %d backgrounds in %s: %s', num_modalities,
                    len(files), folder, files[:num_modalities])
  backgrounds = []
  for name in files[:num_modalities]:
    try:
      with Image.open(os.path.join(folder, name)) as im:
        image = np.asarray(im.convert('RGB'))
    except Exception as e:
      raise PolymnistError(f'cannot read background {os.path.join(folder, name)}: {e}') from e
    backgrounds.append(Background(name, _as_rgb(image, name)))
  return backgrounds


def modality_names(num_modalities: int) -> tuple[str, ...]:
  """The examples' image keys: ('m0', ..., 'm{M-1}')."""
  return tuple(f'm{m}' for m in range(num_modalities))


def split_rng(seed: int, split: str) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_STREAM[split]])


def tuple_indices(labels: np.ndarray, num_modalities: int,
                  rng: np.random.Generator) -> np.ndarray:
  """MNIST index per tuple and modality, int64 (N, M); rows sorted by the modality-0 index.

  For every class and modality an independent permutation of that class's indices; row i of
  class c holds the i-th entry of each modality's permutation. Each column is therefore a
  permutation of range(N) that preserves labels.
  """
  rows = []
  for c in range(NUM_CLASSES):
    members = np.flatnonzero(labels == c)
    rows.append(np.stack([rng.permutation(members) for _ in range(num_modalities)], axis=1))
  rows = np.concatenate(rows)
  return rows[np.argsort(rows[:, 0], kind='stable')]


def crop_offsets(num_tuples: int, backgrounds: Sequence[Background],
                 rng: np.random.Generator) -> np.ndarray:
  """Top-left corner of each crop, int64 (N, M, 2) as (row, col), uniform over valid corners."""
  offsets = np.empty((num_tuples, len(backgrounds), 2), np.int64)
  for m, bg in enumerate(backgrounds):
    h, w = bg.image.shape[:2]
    offsets[:, m, 0] = rng.integers(0, h - IMAGE_SIZE + 1, size=num_tuples)
    offsets[:, m, 1] = rng.integers(0, w - IMAGE_SIZE + 1, size=num_tuples)
  return offsets


def composite(digits: np.ndarray, background: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Digits on background crops: uint8 (n, 28, 28) x (H, W, 3) x (n, 2) -> uint8 (n, 28, 28, 3).

  Pixels under the digit mask (> 128) are the inverted crop (255 - value); the rest the crop.
  """
  windows = np.lib.stride_tricks.sliding_window_view(background, (IMAGE_SIZE, IMAGE_SIZE),
                                                      axis=(0, 1))  # (H-27, W-27, 3, 28, 28)
  crops = windows[offsets[:, 0], offsets[:, 1]].transpose(0, 2, 3, 1)
  mask = (digits > 128)[..., None]
  return np.where(mask, 255 - crops, crops).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """Everything random about one split, drawn up front: (N, M) indices and (N, M, 2) offsets."""
  indices: np.ndarray
  offsets: np.ndarray
  labels: np.ndarray  # (N,) int64


def plan_split(labels: np.ndarray, backgrounds: Sequence[Background], seed: int,
               split: str) -> SplitPlan:
  rng = split_rng(seed, split)
  indices = tuple_indices(labels, len(backgrounds), rng)
  offsets = crop_offsets(len(indices), backgrounds, rng)
  return SplitPlan(indices, offsets, labels[indices[:, 0]].astype(np.int64))


def render(digits: np.ndarray, backgrounds: Sequence[Background], plan: SplitPlan,
           start: int = 0, stop: int | None = None) -> np.ndarray:
  """Images of tuples [start, stop): uint8 (n, M, 28, 28, 3)."""
  sl = slice(start, stop)
  return np.stack([composite(digits[plan.indices[sl, m]], bg.image, plan.offsets[sl, m])
                   for m, bg in enumerate(backgrounds)], axis=1)


def iterate_split(digits: np.ndarray, backgrounds: Sequence[Background], plan: SplitPlan,
                  chunk: int = 2048) -> Iterator[tuple[int, np.ndarray]]:
  """Yields (start, images uint8 (n, M, 28, 28, 3)) chunks in tuple order."""
  for start in range(0, len(plan.indices), chunk):
    yield start, render(digits, backgrounds, plan, start, start + chunk)


class Fingerprint:
  """sha256 of a split's content in tuple order: images (N, M, 28, 28, 3) uint8, then labels and
  MNIST indices as int64. Recomputable from any reader of the data (see `split_fingerprint`)."""

  def __init__(self):
    self._images = hashlib.sha256()

  def update(self, images: np.ndarray) -> None:
    self._images.update(np.ascontiguousarray(images, np.uint8).tobytes())

  def hexdigest(self, labels: np.ndarray, indices: np.ndarray) -> str:
    h = hashlib.sha256(self._images.digest())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    h.update(np.ascontiguousarray(indices, np.int64).tobytes())
    return h.hexdigest()


def split_fingerprint(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> str:
  fp = Fingerprint()
  fp.update(images)
  return fp.hexdigest(labels, indices)


def dataset_fingerprint(split_fingerprints: dict[str, str]) -> str:
  return hashlib.sha256(''.join(f'{s}:{split_fingerprints[s]};'
                                for s in SPLITS).encode()).hexdigest()


# ----------------------------------------------------------------------------- TFDS builder


def _folder_digest(folder: str) -> str:
  """Short digest of a background folder's image files (names and bytes), for config names."""
  h = hashlib.sha256()
  for name in image_files(folder):
    h.update(name.encode() + b'\0')
    with open(os.path.join(folder, name), 'rb') as f:
      h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class PolymnistConfig(tfds.core.BuilderConfig):
  """Which PolyMNIST: modality count, seed, background folder (None: scikit-image's)."""
  num_modalities: int = 5
  seed: int = 0
  backgrounds: str | None = None


def make_config(num_modalities: int = 5, seed: int = 0,
                backgrounds: str | None = None) -> PolymnistConfig:
  """A config whose name encodes its content, so different settings never share a directory."""
  if backgrounds is not None:
    backgrounds = os.path.abspath(os.path.expanduser(backgrounds))
    tag = 'bg' + _folder_digest(backgrounds)
  else:
    tag = 'skimage'
  return PolymnistConfig(
      name=f'm{num_modalities}_seed{seed}_{tag}',
      description=(f'{num_modalities} modalities, seed {seed}, backgrounds '
                   f'{backgrounds or "from scikit-image"}.'),
      num_modalities=num_modalities, seed=seed, backgrounds=backgrounds)


def _serialize_deterministically(serializer, example) -> bytes:
  return serializer.get_tf_example(example).SerializeToString(deterministic=True)


class Polymnist(tfds.core.GeneratorBasedBuilder):
  """PolyMNIST tuples: features m0..m{M-1} uint8 (28, 28, 3), label, mnist_index int64 (M,)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Seeded, name-ordered generation; fingerprint in metadata.'}
  BUILDER_CONFIGS = [make_config()]

  def __init__(self, *, mnist_path: str | None = None, file_format=None, **kwargs):
    """Args: mnist_path: optional MNIST .npz or IDX folder (see moe_ebm_jax.mnist)."""
    self._mnist_path = mnist_path
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    m = self.builder_config.num_modalities
    features = {name: tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.ZLIB)
                for name in modality_names(m)}
    features['label'] = tfds.features.ClassLabel(num_classes=NUM_CLASSES)
    features['mnist_index'] = tfds.features.Tensor(shape=(m,), dtype=np.int64)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage='https://arxiv.org/abs/2010.01953',
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # TFDS serialises each tf.Example with its feature map in a per-process hash order, so two
    # builds of the same data differ byte for byte; deterministic serialisation fixes that.
    with mock.patch.object(example_serializer.ExampleSerializer, 'serialize_example',
                           _serialize_deterministically):
      return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    backgrounds = load_backgrounds(cfg.num_modalities, cfg.backgrounds)
    data = mnist_lib.load_mnist(self._mnist_path,
                                cache_dir=os.path.join(os.fspath(dl_manager.download_dir),
                                                       'mnist'))
    self.info.metadata.update({
        'num_modalities': cfg.num_modalities,
        'seed': cfg.seed,
        'backgrounds': [{'name': b.name, 'shape': list(b.image.shape), 'sha256': b.sha256}
                        for b in backgrounds],
        'mnist_sha256': dict(mnist_lib.ARRAY_SHA256),
        'split_fingerprints': {},
    })
    sources = {'train': (data.x_train, data.y_train), 'test': (data.x_test, data.y_test)}
    return {split: self._generate_examples(split, *sources[split], backgrounds)
            for split in SPLITS}

  def _generate_examples(self, split, digits, labels, backgrounds):
    plan = plan_split(labels, backgrounds, self.builder_config.seed, split)
    fingerprint = Fingerprint()
    for start, images in iterate_split(digits, backgrounds, plan):
      fingerprint.update(images)
      for j, tuple_images in enumerate(images):
        i = start + j
        example = dict(zip(modality_names(len(backgrounds)), tuple_images))
        example['label'] = int(plan.labels[i])
        example['mnist_index'] = plan.indices[i]
        yield int(plan.indices[i, 0]), example
    fps = self.info.metadata['split_fingerprints']
    fps[split] = fingerprint.hexdigest(plan.labels, plan.indices)
    if all(s in fps for s in SPLITS):
      self.info.metadata['fingerprint'] = dataset_fingerprint(fps)


def builder(num_modalities: int = 5, seed: int = 0, backgrounds: str | None = None,
            data_dir: str | None = None, mnist_path: str | None = None) -> Polymnist:
  """The PolyMNIST builder for these settings (not yet prepared)."""
  config = make_config(num_modalities, seed, backgrounds)
  if config.name in Polymnist.builder_configs:  # TFDS wants registered configs by name.
    config = config.name
  return Polymnist(config=config, data_dir=data_dir, mnist_path=mnist_path)


# ----------------------------------------------------------------------------- the dataset


def specs(num_modalities: int, network: str = 'resnet'
          ) -> tuple[modalities_lib.ModalitySpec, ...]:
  """PolyMNIST's modalities: m0..m{M-1}, 28x28 RGB images, Laplace likelihoods, encoders and
  decoders of the `network` family (MMVAE+'s: 'resnet')."""
  return tuple(modalities_lib.image_spec(name, encoder=network, decoder=network)
               for name in modality_names(num_modalities))


def builder_for(data_config: ml_collections.ConfigDict) -> Polymnist:
  """The builder that config.data describes (not yet prepared)."""
  return builder(num_modalities=data_config.num_modalities, seed=data_config.seed,
                 backgrounds=data_config.backgrounds, data_dir=data_config.data_dir,
                 mnist_path=data_config.mnist)


@functools.lru_cache(maxsize=None)
def _announce_ready(name: str, data_dir: str, fingerprint: str | None) -> None:
  """Logs that a dataset is ready, once per process (every evaluation reopens it)."""
  logging.info('PolyMNIST %s is ready in %s (fingerprint %s).', name, data_dir, fingerprint)


def prepare(data_config: ml_collections.ConfigDict) -> Polymnist:
  """Builds PolyMNIST unless it is already there; returns the prepared builder.

  An existing directory that is incomplete or does not match is rebuilt by TFDS (it writes into
  a temporary directory and renames it when done, so an interrupted build leaves no half data).
  """
  b = builder_for(data_config)
  if b.is_prepared():
    _announce_ready(b.builder_config.name, b.data_dir, b.info.metadata.get('fingerprint'))
    return b
  logging.info('Building PolyMNIST %s into %s (about a minute on 2 CPU cores) ...',
               b.builder_config.name, b.data_dir)
  start = time.time()
  # TFDS prints its own 'Downloading and preparing' / 'prepared' lines to stdout: these log lines
  # say the same.
  with contextlib.redirect_stdout(io.StringIO()):
    b.download_and_prepare()
  logging.info('Built PolyMNIST in %.1f s: %s (fingerprint %s).', time.time() - start,
               {k: v.num_examples for k, v in b.info.splits.items()}, b.info.metadata['fingerprint'])
  return b


def source(data_config: ml_collections.ConfigDict, split: str):
  """Random-access source of one split (builds the dataset on first use)."""
  return prepare(data_config).as_data_source(split=split)


def fingerprint(data_config: ml_collections.ConfigDict) -> str:
  """The build's fingerprint (dataset_fingerprint of its splits; builds it if needed)."""
  b = prepare(data_config)
  fp = b.info.metadata.get('fingerprint')
  if not fp:
    raise PolymnistError(f'the PolyMNIST in {b.data_dir} has no fingerprint: rebuild it.')
  return fp


# config.data.num_modalities: the paper's M, 5 (any M >= 2 builds).
@datasets.register('polymnist', config=lambda: {'data': {'num_modalities': 5}})
def polymnist_dataset(data_config: ml_collections.ConfigDict) -> datasets.Dataset:
  return datasets.Dataset(
      'polymnist', specs(data_config.num_modalities, data_config.get('image_network', 'resnet')),
      functools.partial(source, data_config), num_classes=NUM_CLASSES,
      description=f'PolyMNIST, {data_config.num_modalities} modalities',
      fingerprint=functools.partial(fingerprint, data_config),
      make_scorer=classifiers.make_scorer)
