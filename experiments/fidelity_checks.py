r"""The measurements of docs/fidelity.md: optax's AMSGrad against torch's, and outputs at init.

  python experiments/fidelity_checks.py --data_dir=D      # D: a PolyMNIST data dir (built if needed)

1. The same gradient sequences (1,000 coordinates, 2,000 steps; constant scale, and shrinking
   100-fold) fed to optax.amsgrad and to optimizers.torch_adam(amsgrad=True): the ratio of
   their mean |update| at chosen steps.
2. Paper-width networks freshly initialised ('pytorch' and 'lecun'), three seeds, on the first
   32 test tuples of modality m0: spread of the encoder means across examples, their overall
   std, spread of the posterior scales, and the decoder's output for latents ~ N(0, I) -- the
   quantities measured for the official PyTorch MMVAE+ (docs/fidelity.md).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import optimizers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.vae import models

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'PolyMNIST data dir (None: TFDS default).')


def _updates(tx, grads):
  params = jnp.zeros(grads.shape[1:])

  def step(state, g):
    u, state = tx.update(g, state, params)
    return state, u

  return np.asarray(jax.lax.scan(step, tx.init(params), jnp.asarray(grads, jnp.float32))[1])


def amsgrad_ratios(steps=(1, 10, 100, 500, 1000, 2000)) -> dict[str, dict[int, float]]:
  rng = np.random.default_rng(0)
  t = np.arange(max(steps))[:, None]
  out = {}
  for name, scale in (('constant', np.ones(t.shape)), ('shrinking 100x', 100.0 ** (-t / len(t)))):
    grads = rng.standard_normal((len(t), 1000)) * scale
    ratio = (np.abs(_updates(optax.amsgrad(1e-3), grads)).mean(1) /
             np.abs(_updates(optimizers.torch_adam(1e-3, amsgrad=True), grads)).mean(1))
    out[name] = {s: round(float(ratio[s - 1]), 3) for s in steps}
  return out


def init_outputs(data_dir, seeds=(0, 1, 2)) -> dict[str, dict[str, list[float]]]:
  out = {}
  for init in ('pytorch', 'lecun'):
    config = config_lib.base_config('mmvaeplus')
    config.data.data_dir = data_dir
    config.model.param_init = init
    vae = models.make_vae(config, datasets.get(config.data).modalities)
    images = jnp.asarray(input_pipeline.first_test_batches(config, 32)[0]['x']['m0'][:32])
    rows = []
    for seed in seeds:
      params = vae.init(jax.random.PRNGKey(seed))
      first = lambda tree: jax.tree.map(lambda x: x[0], tree)
      w_loc, w_logits, z_loc, z_logits = vae.encoder.apply(first(params['encoders']), images)
      scale = lambda logits: jax.nn.softmax(logits, -1) * logits.shape[-1]
      latents = jax.random.normal(jax.random.PRNGKey(100 + seed), (32, 64))
      decoded = vae.decoder.apply(first(params['decoders']), latents)
      rows.append({'mean_spread_w': w_loc.std(0).mean(), 'mean_spread_z': z_loc.std(0).mean(),
                   'mean_std_w': w_loc.std(), 'mean_std_z': z_loc.std(),
                   'scale_spread_w': scale(w_logits).std(0).mean(),
                   'scale_spread_z': scale(z_logits).std(0).mean(),
                   'decoder_std': decoded.std(), 'decoder_mean': decoded.mean()})
    out[init] = {k: [round(float(r[k]), 4) for r in rows] for k in rows[0]}
  return out


def main(argv):
  del argv
  log_setup.setup()  # Dependencies' INFO chatter off, as main.py does.
  print('AMSGrad, mean |update| optax / torch, by step:')
  print(json.dumps(amsgrad_ratios(), indent=1))
  print('Outputs at initialisation, paper widths, m0, per seed:')
  print(json.dumps(init_outputs(_DATA_DIR.value), indent=1))


if __name__ == '__main__':
  app.run(main)
