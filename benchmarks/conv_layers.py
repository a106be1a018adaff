r"""Every way tried of computing a 3x3 convolution and its gradients, per layer shape of the models.

  python benchmarks/conv_layers.py                      # paper-width layers, batch 128
  python benchmarks/conv_layers.py --widths=8,16,32     # the CPU config's layers
  python benchmarks/conv_layers.py --in_program         # also: forward alternatives in a model
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/conv_layers.py   # an XLA flag

For each distinct (batch, H, W, C -> D) 3x3 layer of the encoders (batch B) and decoders (batch
5B: every decoder decodes the samples of all five encoders in MMVAE+), prints the median time and
GFLOP/s of
  forward          XLA's conv (what conv.py uses), and two matmul formulations over chunks of
                   8 examples, tried and not adopted (see below): 'folded' (horizontal taps
                   folded into the input's channels, vertical taps into the product's columns,
                   three shifted slices summed) and 'output_taps' (all nine taps in the
                   product's columns, nine shifted slices summed);
  input gradient   XLA's (jax.vjp of its conv; what conv.py uses);
  kernel gradient  xla (jax.vjp of lax.conv_general_dilated), folded_stacked (conv.py's
                   'folded' with one product against dy shifted by 0, 1, 2 rows), folded_rows
                   (three products on row slices of the input), input_patches (im2col of x,
                   9C channels), output_patches (dy shifted nine ways, 9D channels), each in one
                   product, and conv.py's choice (summed over chunks of examples when large);
and the kernel-gradient formulation conv.py picks. Every result is checked against XLA's.

--in_program times what decides: five paper-width decoders (batch 5B, as in an MMVAE+ step)
forward and backward, and the five of a posterior Langevin step (batch B, gradient to the
latents), with conv.py as it is and with every conv replaced by the faster of the two
formulations above (`best_forward`; its gradients by autodiff), calls alternating so that the machine's drift cancels. Alone the formulations
beat XLA's conv by up to 1.5x (3x for the RGB output layer); inside the models they lost (the
runtime overlaps independent convs of the five decoders on the two cores, which XLA's conv
thunks do better than loops of products), so conv.py keeps XLA's forward pass.
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

_FORWARD_CHUNK = 8  # Examples per loop iteration of the forward formulations.


def folded_forward(x, kernel):
  """y = conv(x, kernel): horizontal taps folded into channels, vertical taps into columns."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n, h, w, c = x.shape
  d = kernel.shape[-1]
  x_pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  folded = jnp.concatenate([x_pad[:, :, j:j + w] for j in range(3)], axis=-1)  # (j, c)
  taps = jnp.transpose(kernel, (1, 2, 0, 3)).reshape(3 * c, 3 * d)  # [(j, c), (i, d)]
  partial = (folded.reshape(-1, 3 * c) @ taps).reshape(n, h + 2, w, 3, d)
  return partial[:, 0:h, :, 0] + partial[:, 1:h + 1, :, 1] + partial[:, 2:h + 2, :, 2]


def output_taps_forward(x, kernel):
  """y = conv(x, kernel): all nine taps in the product's columns, shifted slices summed."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n, h, w, c = x.shape
  d = kernel.shape[-1]
  x_pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, 9 * d)  # [c, (i, j, d)]
  partial = (x_pad.reshape(-1, c) @ taps).reshape(n, h + 2, w + 2, 3, 3, d)
  return sum(partial[:, i:i + h, j:j + w, i, j] for i in range(3) for j in range(3))


def chunked(fn):
  """fn(x, kernel) over chunks of _FORWARD_CHUNK examples (jax.lax.map)."""
  import jax  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.vae import conv  # pylint: disable=g-import-not-at-top

  def run(x, kernel):
    n = x.shape[0]
    chunk = conv._chunk_size(n, _FORWARD_CHUNK)  # pylint: disable=protected-access
    y = jax.lax.map(lambda xs: fn(xs, kernel), x.reshape((n // chunk, chunk) + x.shape[1:]))
    return y.reshape((n,) + y.shape[2:])
  return run


def best_forward(x, kernel):
  """The faster formulation per layer alone (7 x 7 and narrow layers: XLA's conv)."""
  from moe_ebm_jax.vae import conv  # pylint: disable=g-import-not-at-top
  _, h, w, c = x.shape
  d = kernel.shape[-1]
  if h * w >= 14 * 14 and d <= 4 and c >= 8:
    return chunked(output_taps_forward)(x, kernel)
  if h * w >= 14 * 14 and (min(c, d) >= 32 or (c <= 4 and d >= 64)):
    return chunked(folded_forward)(x, kernel)
  return conv._xla_conv(x, kernel)  # pylint: disable=protected-access


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
  from moe_ebm_jax import log_setup  # pylint: disable=g-import-not-at-top
  log_setup.setup()  # Dependencies' INFO chatter off, as main.py does.
  import jax  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.vae import conv  # pylint: disable=g-import-not-at-top

  def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  forwards = {'xla': conv._xla_conv, 'folded': chunked(folded_forward),  # pylint: disable=protected-access
              'output_taps': chunked(output_taps_forward)}
  input_grads = {
      'xla': lambda x, k, dy: jax.vjp(lambda x_: conv._xla_conv(x_, k), x)[1](dy)[0],  # pylint: disable=protected-access
  }
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
  columns = ([f'forward_{k}' for k in forwards] + [f'input_grad_{k}' for k in input_grads] +
             [f'kernel_grad_{k}' for k in kernel_grads])
  labels = {'forward': 'forward', 'input_grad': 'input grad', 'kernel_grad': 'kernel grad'}
  header = (['layer (N, H=W, C -> D)'] +
            [f'{labels[g]}: {k}' for g, fns in (('forward', forwards), ('input_grad', input_grads),
                                                ('kernel_grad', kernel_grads)) for k in fns] +
            ['conv.py picks (kernel grad)'])
  print('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header), flush=True)

  def check(name, got, reference, shape):
    scale = float(jax.numpy.max(jax.numpy.abs(reference)))
    err = float(jax.numpy.max(jax.numpy.abs(got - reference))) / scale
    if err > 1e-4:
      raise AssertionError(f'{name} differs from XLA by {err:.1e} (relative) at {shape}')

  records = []
  for n, hw, c, d in layer_shapes(widths, _BATCH.value):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (n, hw, hw, c))
    kernel = jax.random.normal(keys[1], (3, 3, c, d)) * 0.1
    dy = jax.random.normal(keys[2], (n, hw, hw, d))
    flops = 2 * n * hw * hw * 9 * c * d
    row = {'shape': [n, hw, hw, c, d]}
    groups = [('forward', forwards, (x, kernel)), ('input_grad', input_grads, (x, kernel, dy)),
              ('kernel_grad', kernel_grads, (x, dy, kernel))]
    for group, fns, args in groups:
      reference = jax.jit(fns['xla'])(*args)
      for name, fn in fns.items():
        jitted = jax.jit(fn)
        check(f'{group} {name}', jitted(*args), reference, row['shape'])
        row[f'{group}_{name}'] = timed(jitted, *args)
    row['picked'] = conv.matmul_formulation(c, d)
    records.append(row)
    cells = [f'({n}, {hw}, {c} -> {d})'] + [
        f"{row[k] * 1e3:.1f} ({flops / row[k] / 1e9:.0f})" for k in columns]
    print('| ' + ' | '.join(cells + [row['picked']]) + ' |', flush=True)
  in_program = in_program_check(widths, _BATCH.value) if _IN_PROGRAM.value else None
  print(json.dumps({'in_program': in_program, 'xla_flags': os.environ.get('XLA_FLAGS', ''), 'widths': widths,
                    'batch_size': _BATCH.value, 'layers': records}))


def in_program_check(widths, batch: int, pairs: int = 3) -> dict:
  """Five decoders with conv.py's convs vs with `best_forward`, calls alternating."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.vae import conv  # pylint: disable=g-import-not-at-top
  from moe_ebm_jax.vae import networks  # pylint: disable=g-import-not-at-top

  def with_best_forward(x, kernel, backward='auto'):
    del backward  # Autodiff of the formulations: matmul gradients too.
    return best_forward(x, kernel)

  def programs(conv_fn):
    original = conv.conv3x3
    conv.conv3x3 = conv_fn  # Read when the decoders are traced, below.
    try:
      dec = networks.Decoder(tuple(widths), conv_backward='auto')
      z = jax.random.normal(jax.random.PRNGKey(0), (5 * batch, 64))
      params = [dec.init(jax.random.PRNGKey(i), z) for i in range(5)]
      loss = lambda ps, z: sum(jnp.sum(dec.apply(p, z) ** 2) for p in ps)
      train = jax.jit(jax.grad(loss)).lower(params, z).compile()
      posterior = jax.jit(jax.grad(loss, argnums=1)).lower(params, z[:batch]).compile()
    finally:
      conv.conv3x3 = original
    return {'train': (train, (params, z)), 'posterior': (posterior, (params, z[:batch]))}

  variants = {'conv.py': programs(conv.conv3x3), 'best_forward': programs(with_best_forward)}
  times = {(v, p): [] for v in variants for p in ('train', 'posterior')}
  for _ in range(pairs):
    for v, progs in variants.items():
      for p, (fn, args) in progs.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[(v, p)].append(time.perf_counter() - start)
  out = {f'{v}/{p}': statistics.median(t) for (v, p), t in times.items()}
  print(f'In five decoders (median of {pairs} alternating calls, s): ' +
        ', '.join(f'{k} {t:.3f}' for k, t in out.items()), flush=True)
  return out


if __name__ == '__main__':
  # Flags are defined here so that tests can import the formulations above.
  _WIDTHS = flags.DEFINE_list('widths', ['64', '128', '256'], 'Conv widths (w0, w1, w2).')
  _BATCH = flags.DEFINE_integer('batch_size', 128, 'Training batch size B.')
  _REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement.')
  _IN_PROGRAM = flags.DEFINE_bool('in_program', False,
                                  'Also time forward alternatives inside five decoders.')
  app.run(main)
