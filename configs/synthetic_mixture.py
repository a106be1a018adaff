r"""The synthetic multi-view mixture (docs/data.md) at CPU scale: K = 4 clusters, a 1-d shared
factor, three vector modalities of dimensions 2, 8 and 16 with private noise 0.1.

  python main.py --config=configs/synthetic_mixture.py:moe_ebm --workdir=/tmp/moe_ebm_mix
  python main.py --config=configs/synthetic_mixture.py:mmvaeplus --workdir=/tmp/mmvaeplus_mix
  python main.py --config=configs/synthetic_mixture.py:moe_ebm,z2 --workdir=/tmp/moe_ebm_mix_z2

The argument is the model, optionally followed by `z<D>`: a shared latent of D dimensions (`z2`:
one that can be drawn), the private ones unchanged.

A starting point, not a tuned recipe: MLP encoders and decoders (128, 128), latents 4 + 4 (8 for
the single-latent models), the paper's optimiser at its learning rate 1e-3, 3,000 steps of 128
(the table of docs/results.md trains 9,000); the EBM's base N(0, 3^2 I), persistent prior chains
and a posterior chain step of 0.03 (below: why).
Coherence reads every modality with an MLP cluster classifier (trained on first use, cached);
no FID (the modalities are not images).
"""

from moe_ebm_jax import config_lib


def get_config(arg=None):
  model, *rest = (arg or '').split(',')
  if len(rest) > 1 or (rest and not (rest[0][:1] == 'z' and rest[0][1:].isdigit())):
    raise ValueError(f"config argument {arg!r}: expected '<model>' or '<model>,z<D>'.")
  config = config_lib.base_config(model or None, 'synthetic_mixture')
  config.batch_size = 128
  config.eval_batch_size = 256
  config.model.mlp_hidden = (128, 128)
  if config.model.latent_w:
    config.model.latent_w, config.model.latent_z = 4, 4
  else:
    config.model.latent_z = 8
  if rest:
    config.model.latent_z = int(rest[0][1:])
  config.model.likelihood_scale = 0.1  # The data's own noise: Gaussian likelihoods of sd 0.1.
  config.ebm.hidden = (64, 64)
  # The paper's bound (its Eq. 5): f_a unweighted; Pang et al.'s EBM optimiser, no penalty.
  config.ebm.energy_weight = 'one'
  # Departures, each forced by a measurement (docs/results.md, "Why the configs are what they
  # are"): p0 = N(0, 3^2 I), persistent prior chains, a posterior chain step of 0.03.
  config.ebm.base = 'gaussian'
  config.ebm.base_scale = 3.0
  config.ebm.persistent_chains = 10_000
  config.ebm.posterior_step_size = 0.03
  config.num_train_steps = 3000
  config.log_every_steps = 50
  config.eval_every_steps = 500  # The test loss curve: convergence shown, not assumed.
  config.checkpoint_every_steps = 1000
  config.eval.num_joint_samples = 2000
  config.eval.num_fid_samples = 0
  return config
