"""3x3 'same' convolutions whose kernel gradient is fast on XLA:CPU.

XLA:CPU computes the forward convolution and the input gradient well (about 90-250 GFLOP/s on
the project's 2-core machine at the MMVAE+ shapes) but the kernel gradient ("wgrad") slowly:
16 GFLOP/s for a (640, 28, 28, 64) -> 64 convolution, where the forward pass reaches 107. That
one gradient was most of an MMVAE+ training step. `conv3x3` keeps XLA's forward pass and input
gradient and, on CPU, computes the kernel gradient as matrix products instead:

  wgrad[i, j, c, d] = sum_{n, h, w} x_pad[n, h + i, w + j, c] * dy[n, h, w, d]

`matmul_formulation` picks one of three ways by the channel counts C -> D (numbers for every
alternative: benchmarks/conv_layers.py):
  'folded' (C, D >= 16): the three horizontal taps j folded into channels (a (N, H + 2, W, 3C)
    copy of x); the three vertical taps i then take one matmul against a (N, H + 2, W, 3D)
    copy of dy shifted by 0, 1, 2 rows when D <= 64, else three matmuls on row slices;
  'output_patches' (C >= 16, D <= 4, e.g. the decoders' RGB output): dy shifted nine ways
    (9D channels), so x is read once;
  'input_patches' (C <= 4, D >= 32, e.g. the encoders' RGB input): im2col of x (9C channels);
  otherwise (narrow layers, a few milliseconds either way) XLA's own.
Large layers are summed over chunks of examples in a lax.scan (about 32 x 28 x 28 rows per
product): faster (the copies stay in cache) and the temporaries stay small. Without the chunks
the paper-width MMVAE+ step's memory plan grew from 8.4 GB (XLA's own) to 18.6 GB; with them
it is 9.6 GB.

The forward pass stays XLA's: matmul formulations of it (benchmarks/conv_layers.py) beat XLA's
conv by up to 1.5x on a lone layer (3x on the RGB output) but lost inside the models: five
paper-width decoders forward and backward took 33.8 s with them (gradients by autodiff) against
19.5 s (XLA's runtime runs independent convs of the decoders concurrently on the two cores; a
profile shows it, and its conv thunks probably suit that better than loops of products).

`backward` selects the kernel gradient: 'xla' (XLA's own), 'matmul' (the above), or 'auto':
'matmul' when lowering for CPU and 'xla' elsewhere (cuDNN and the TPU compiler do this well),
decided by `jax.lax.platform_dependent` when the program is lowered.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array
BACKWARD_MODES = ('auto', 'xla', 'matmul')
_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
_STACKED_MAX_FEATURES = 64
_WIDE = 16  # Channel counts from which the matmul formulations beat XLA's.
_TINY = 4  # Channel counts (RGB in or out) worth folding all nine taps onto.
_CHUNK_ROWS = 32 * 28 * 28  # Rows (examples x pixels) of the products per loop iteration.


def _xla_conv(x: Array, kernel: Array) -> Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=_DIMENSION_NUMBERS)


def _xla_kernel_grad(x: Array, dy: Array, kernel: Array) -> Array:
  return jax.vjp(lambda k: _xla_conv(x, k), kernel)[1](dy)[0]


def _folded_kernel_grad(x: Array, dy: Array,
                        max_stacked: int = _STACKED_MAX_FEATURES) -> Array:
  """Horizontal taps folded into channels; three vertical taps left. (3, 3, C, D).

  One product against dy stacked three ways when D <= max_stacked, else three products.
  """
  n, h, w, c = x.shape
  d = dy.shape[-1]
  x_pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # folded[n, r, q, (j, c)] = x_pad[n, r, q + j, c]
  folded = jnp.concatenate([x_pad[:, :, j:j + w] for j in range(3)], axis=-1)
  if d <= max_stacked:
    # shifted[n, r, q, (i, d)] = dy[n, r - i, q, d] (zero outside), r over the H + 2 padded rows.
    dy_pad = jnp.pad(dy, ((0, 0), (2, 2), (0, 0), (0, 0)))
    shifted = jnp.concatenate([dy_pad[:, 2 - i:2 - i + h + 2] for i in range(3)], axis=-1)
    g = folded.reshape(-1, 3 * c).T @ shifted.reshape(-1, 3 * d)  # [(j, c), (i, d)]
    return jnp.transpose(g.reshape(3, c, 3, d), (2, 0, 1, 3))
  dy_flat = dy.reshape(-1, d)
  return jnp.stack([(folded[:, i:i + h].reshape(-1, 3 * c).T @ dy_flat).reshape(3, c, d)
                    for i in range(3)])


def _input_patches_kernel_grad(x: Array, dy: Array) -> Array:
  """All nine taps of x in channels (cheap when C is tiny): one (9C, NHW) @ (NHW, D) product."""
  n, h, w, c = x.shape
  x_pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([x_pad[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                            axis=-1)
  return (patches.reshape(-1, 9 * c).T @ dy.reshape(-1, dy.shape[-1])).reshape(3, 3, c, -1)


def _output_patches_kernel_grad(x: Array, dy: Array) -> Array:
  """All nine shifts of dy in channels (cheap when D is tiny): x is read once."""
  n, h, w, c = x.shape
  d = dy.shape[-1]
  x_pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dy_pad = jnp.pad(dy, ((0, 0), (2, 2), (2, 2), (0, 0)))
  # shifted[n, r, q, (i, j, d)] = dy[n, r - i, q - j, d] over the padded (H + 2, W + 2) grid.
  shifted = jnp.concatenate([dy_pad[:, 2 - i:2 - i + h + 2, 2 - j:2 - j + w + 2]
                             for i in range(3) for j in range(3)], axis=-1)
  g = x_pad.reshape(-1, c).T @ shifted.reshape(-1, 9 * d)  # [c, (i, j, d)]
  return jnp.transpose(g.reshape(c, 3, 3, d), (1, 2, 0, 3))


def matmul_formulation(in_features: int, out_features: int) -> str:
  """Which formulation `_matmul_kernel_grad` uses for C -> D channels (numbers in the doc)."""
  c, d = in_features, out_features
  if min(c, d) >= _WIDE:
    return 'folded'
  if c >= _WIDE and d <= _TINY:
    return 'output_patches'
  if c <= _TINY and d >= 2 * _WIDE:
    return 'input_patches'
  return 'xla'  # Narrow layers: XLA's own is as fast and the whole gradient costs milliseconds.


def _matmul_kernel_grad(x: Array, dy: Array, kernel: Array) -> Array:
  """The kernel gradient as matrix products: x (N, H, W, C), dy (N, H, W, D) -> (3, 3, C, D)."""
  formulation = matmul_formulation(x.shape[-1], dy.shape[-1])
  if formulation == 'xla':
    return _xla_kernel_grad(x, dy, kernel)
  fn = {'folded': _folded_kernel_grad, 'input_patches': _input_patches_kernel_grad,
        'output_patches': _output_patches_kernel_grad}[formulation]
  n, h, w, _ = x.shape
  chunk = _chunk_size(n, _CHUNK_ROWS // (h * w))
  if chunk == n:
    return fn(x, dy).astype(kernel.dtype)
  # Summed over chunks of examples in a loop: the copies of x and dy stay one chunk's size
  # (and in cache). Measured (640, 28, 28, 64) -> 64: one product 623 ms and 1,239 MB of
  # temporaries; 20 chunks of 32 examples 409 ms and 62 MB.
  def add_chunk(total, xs_dys):
    return total + fn(*xs_dys), None

  split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])
  total, _ = jax.lax.scan(add_chunk, jnp.zeros(kernel.shape, jnp.float32), (split(x), split(dy)))
  return total.astype(kernel.dtype)


def _chunk_size(n: int, target: int) -> int:
  """The largest divisor of n that is at most `target` (n itself when target >= n); n when
  every divisor in [target / 4, target] is missing (then one product beats many tiny ones)."""
  if target >= n:
    return n
  best = max(k for k in range(1, max(target, 1) + 1) if n % k == 0)
  return best if 4 * best >= target else n


def _kernel_grad(x: Array, dy: Array, kernel: Array, backward: str) -> Array:
  if backward == 'xla':
    return _xla_kernel_grad(x, dy, kernel)
  if backward == 'matmul':
    return _matmul_kernel_grad(x, dy, kernel)
  return jax.lax.platform_dependent(x, dy, kernel, cpu=_matmul_kernel_grad,
                                    default=_xla_kernel_grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3(x: Array, kernel: Array, backward: str) -> Array:
  return _xla_conv(x, kernel)


def _conv3x3_fwd(x, kernel, backward):
  return _xla_conv(x, kernel), (x, kernel)


def _conv3x3_bwd(backward, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x_: _xla_conv(x_, kernel), x)[1](dy)[0]
  return dx, _kernel_grad(x, dy, kernel, backward)


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv3x3(x: Array, kernel: Array, backward: str = 'auto') -> Array:
  """Stride-1 3x3 convolution with zero padding 1, no bias.

  Args:
    x: (N, H, W, C) inputs (NHWC).
    kernel: (3, 3, C, D) (HWIO), as flax.linen.Conv stores it.
    backward: how the kernel gradient is computed: 'auto', 'xla' or 'matmul' (module doc).

  Returns:
    (N, H, W, D), equal to jax.lax.conv_general_dilated with padding ((1, 1), (1, 1)).
  """
  if backward not in BACKWARD_MODES:
    raise ValueError(f'conv backward {backward!r}: choose one of {BACKWARD_MODES}.')
  if x.ndim != 4 or kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f'conv3x3 needs x (N, H, W, C) and kernel (3, 3, C, D); got {x.shape} and '
                     f'{kernel.shape}.')
  return _conv3x3(x, kernel, backward)
