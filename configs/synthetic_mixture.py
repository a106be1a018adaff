r"""The synthetic multi-view mixture (docs/data.md) at CPU scale: K = 4 clusters, a 1-d shared
factor, three vector modalities of dimensions 2, 8 and 16 with private noise 0.1.

  python main.py --config=configs/synthetic_mixture.py:moe_ebm --workdir=/tmp/moe_ebm_mix
  python main.py --config=configs/synthetic_mixture.py:mmvaeplus --workdir=/tmp/mmvaeplus_mix

A starting point, not a tuned recipe: MLP encoders and decoders (128, 128), latents 4 + 4 (8 for
the single-latent models), the paper's optimiser at its learning rate 1e-3, 3,000 steps of 128.
Coherence reads every modality with an MLP cluster classifier (trained on first use, cached);
no FID (the modalities are not images).
"""

from moe_ebm_jax import config_lib


def get_config(model=None):
  config = config_lib.base_config(model, 'synthetic_mixture')
  config.batch_size = 128
  config.eval_batch_size = 256
  config.model.mlp_hidden = (128, 128)
  if config.model.latent_w:
    config.model.latent_w, config.model.latent_z = 4, 4
  else:
    config.model.latent_z = 8
  config.model.likelihood_scale = 0.1  # The data's own noise: Gaussian likelihoods of sd 0.1.
  config.ebm.hidden = (64, 64)
  config.num_train_steps = 3000
  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval.num_joint_samples = 2000
  config.eval.num_fid_samples = 0
  return config
