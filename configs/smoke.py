r"""Smoke scale: tiny networks on a few examples, seconds per run (tests, CI).

  python main.py --config=configs/smoke.py:moe_ebm --workdir=/tmp/smoke
  python main.py --config=configs/smoke.py:mmvaeplus,synthetic_mixture --workdir=/tmp/smoke_mix

The argument is the model, optionally followed by a dataset (datasets.py; PolyMNIST if none).
"""

from moe_ebm_jax import config_lib


def get_config(arg=None):
  model, *rest = (arg or '').split(',')
  if len(rest) > 1:
    raise ValueError(f"config argument {arg!r}: expected '<model>' or '<model>,<dataset>'.")
  config = config_lib.base_config(model or None, *rest)
  config.batch_size = 8
  config.eval_batch_size = 16
  config.data.train_subset = 64
  config.data.test_subset = 32
  config.data.num_threads = 1
  config.data.prefetch_batches = 2
  config.model.widths = (4, 8, 8)
  if config.model.latent_w:  # Models with private latents: 4 + 4; single-latent models: 8.
    config.model.latent_w = 4
    config.model.latent_z = 4
  else:
    config.model.latent_z = 8
  config.model.modality_loop = 'map'  # Compile time dominates at this scale.
  config.model.mlp_hidden = (16,)
  if config.data.name == 'synthetic_mixture':
    config.data.num_train = 256
    config.data.num_test = 64
  config.ebm.hidden = (16, 16)
  config.ebm.prior_steps = 5
  config.ebm.posterior_steps = 3
  config.ebm.unroll_chains = False  # Compile time dominates at this scale.
  config.num_train_steps = 20
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 5
  config.num_image_samples = 4
  config.eval.num_test_examples = 16
  config.eval.num_joint_samples = 16
  # No FID: the standard network costs ~0.2 s an image on 2 CPU cores, and its sets (joint, and
  # every source and target of cross generation) made a smoke evaluation last 15 minutes. Opt
  # in with --config.eval.num_fid_samples=8 (tests inject a cheap feature function instead).
  config.eval.num_fid_samples = 0
  config.eval.fid_batch_size = 8
  # Not at the end of training: on first use the coherence classifiers train on the whole
  # dataset (~2 minutes on 2 CPU cores) and the FID network is converted (torch, pip), which
  # defeats a seconds-long run. Tests turn it on with cheap injected stand-ins.
  config.eval.at_end_of_training = False
  return config
