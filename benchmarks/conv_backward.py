r"""Every way tried of computing a 3x3 convolution's gradients, per layer shape of the models.

  python benchmarks/conv_backward.py                      # paper-width layers, batch 128
  python benchmarks/conv_backward.py --widths=8,16,32     # the CPU config's layers
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/conv_backward.py   # an XLA flag

For each distinct (batch, H, W, C -> D) 3x3 layer of the encoders (batch B) and decoders (batch
5B: every decoder decodes the samples of all five encoders in MMVAE+), prints the median time and
GFLOP/s of XLA's forward pass, XLA's input gradient, and the kernel gradient by
  xla              jax.vjp of lax.conv_general_dilated (XLA's own),
  folded_stacked   conv.py's 'folded' with one product against dy shifted by 0, 1, 2 rows,
  folded_rows      conv.py's 'folded' with three products on row slices of the input,
  input_patches    im2col of x (9C channels), one product,
  output_patches   dy shifted nine ways (9D channels), one product,
and conv.py's choice (conv.matmul_formulation, summed over chunks of examples when the layer is
large), which it names. All formulations are checked against XLA's.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WIDTHS = flags.DEFINE_list('widths', ['64', '128', '256'], 'Conv widths (w0, w1, w2).')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Training batch size B.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement.')


def layer_shapes(widths, batch: int, modalities: int = 5):
  """Distinct (N, H, C, D) of the 3x3 convs in an encoder tower and a decoder (networks.py)."""
  w0, w1, w2 = widths
  enc = [(28, 3, w0), (28, w0, w0), (14, w0, min(w0, w1)), (14, min(w0, w1), w1),
         (7, w1, min(w1, w2)), (7, min(w1, w2), w2)]
  dec = [(7, w2, min(w2, w1)), (7, min(w2, w1), w1), (14, w1, min(w1, w0)),
         (14, min(w1, w0), w0), (28, w0, w0), (28, w0, 3)]
  shapes = [(batch, h, c, d) for h, c, d in enc] + [(modalities * batch, h, c, d)
                                                     for h, c, d in dec]
  return list(dict.fromkeys(shapes))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax import conv  # pylint: disable=g-import-not-at-top

  def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  kernel_grads = {
      'xla': conv._xla_kernel_grad,  # pylint: disable=protected-access
      'folded_stacked': lambda x, dy, k: conv._folded_kernel_grad(x, dy, max_stacked=10**9),  # pylint: disable=protected-access
      'folded_rows': lambda x, dy, k: conv._folded_kernel_grad(x, dy, max_stacked=0),  # pylint: disable=protected-access
      'input_patches': lambda x, dy, k: conv._input_patches_kernel_grad(x, dy),  # pylint: disable=protected-access
      'output_patches': lambda x, dy, k: conv._output_patches_kernel_grad(x, dy),  # pylint: disable=protected-access
      'conv.py': conv._matmul_kernel_grad,  # pylint: disable=protected-access
  }
  widths = [int(w) for w in _WIDTHS.value]
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; widths {widths}, batch "
        f"{_BATCH.value}; milliseconds (GFLOP/s)", flush=True)
  header = ['layer (N, H=W, C -> D)', 'forward', 'input grad'] + [
      f'kernel grad: {k}' for k in kernel_grads] + ['conv.py picks']
  print('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header), flush=True)
  records = []
  for n, hw, c, d in layer_shapes(widths, _BATCH.value):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (n, hw, hw, c))
    kernel = jax.random.normal(keys[1], (3, 3, c, d)) * 0.1
    dy = jax.random.normal(keys[2], (n, hw, hw, d))
    flops = 2 * n * hw * hw * 9 * c * d
    fwd = jax.jit(conv._xla_conv)  # pylint: disable=protected-access
    dgrad = jax.jit(lambda x, k, dy: jax.vjp(lambda x_: conv._xla_conv(x_, k), x)[1](dy)[0])  # pylint: disable=protected-access
    row = {'shape': [n, hw, hw, c, d], 'forward': timed(fwd, x, kernel),
           'input_grad': timed(dgrad, x, kernel, dy)}
    reference = jax.jit(conv._xla_kernel_grad)(x, dy, kernel)  # pylint: disable=protected-access
    scale = float(jax.numpy.max(jax.numpy.abs(reference)))
    for name, fn in kernel_grads.items():
      jitted = jax.jit(fn)
      err = float(jax.numpy.max(jax.numpy.abs(jitted(x, dy, kernel) - reference))) / scale
      if err > 1e-4:
        raise AssertionError(f'{name} differs from XLA by {err:.1e} (relative) at {row["shape"]}')
      row[f'kernel_grad_{name}'] = timed(jitted, x, dy, kernel)
    row['picked'] = conv.matmul_formulation(c, d)
    records.append(row)
    cells = [f'({n}, {hw}, {c} -> {d})'] + [
        f"{row[k] * 1e3:.1f} ({flops / row[k] / 1e9:.0f})"
        for k in ['forward', 'input_grad'] + [f'kernel_grad_{g}' for g in kernel_grads]]
    print('| ' + ' | '.join(cells + [row['picked']]) + ' |', flush=True)
  print(json.dumps({'xla_flags': os.environ.get('XLA_FLAGS', ''), 'widths': widths,
                    'batch_size': _BATCH.value, 'layers': records}))


if __name__ == '__main__':
  app.run(main)
