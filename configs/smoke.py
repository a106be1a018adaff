r"""Smoke scale: tiny networks on a few PolyMNIST tuples, seconds per run (tests, CI).

  python main.py --config=configs/smoke.py:moe_ebm --workdir=/tmp/smoke
"""

from moe_ebm_jax import config_lib


def get_config(model=None):
  config = config_lib.base_config(model)
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
  # The standard FID network costs ~0.3 s per image on 2 CPU cores: 8 per set here (tests
  # inject a cheap feature function instead).
  config.eval.num_fid_samples = 8
  config.eval.fid_batch_size = 8
  # Not at the end of training: on first use the coherence classifiers train on the whole
  # dataset (~2 minutes on 2 CPU cores) and the FID network is converted (torch, pip), which
  # defeats a seconds-long run. Tests turn it on with cheap injected stand-ins.
  config.eval.at_end_of_training = False
  return config
