r"""CPU scale for any dataset: a built-in one, or one of your own, trained here within minutes.

  python main.py --config=configs/cpu.py:mmvaeplus,synthetic_mixture --workdir=/tmp/mix
  python main.py --config=configs/cpu.py:moe_ebm,my_data.py:three_views --workdir=/tmp/mine

The argument is the model and the dataset: a registered name, or '<module>:<name>' for a
dataset that a module of yours registers (a .py file, or a module importable from the working
directory; docs/usage.md, "Your own data"). PolyMNIST has its own CPU config with probed
settings (configs/polymnist_cpu.py).

A starting point, not a tuned recipe: PolyMNIST's CPU settings (configs/polymnist_cpu.py says
why): convolutional widths (8, 16, 32), batch 64, AMSGrad at 3e-3, two posterior Langevin steps
and the energy penalty for the EBM models; MLP towers of (64,) for vectors and labels; 500
steps; an evaluation on 500 test examples and 1,000 joint samples, without FID (it ranks models
only from ~2,000 images a set, hours on a CPU). Change any field with --config.<field>=<value>.
"""

from moe_ebm_jax import config_lib


def get_config(arg=None):
  model, *rest = (arg or '').split(',')
  if len(rest) != 1 or not rest[0]:
    raise ValueError(f"config argument {arg!r}: expected '<model>,<dataset>' (a registered "
                     "dataset, or '<module>:<name>' for one of your own).")
  config = config_lib.base_config(model or None, rest[0])
  config.batch_size = 64
  config.eval_batch_size = 250
  config.model.widths = (8, 16, 32)
  config.model.mlp_hidden = (64,)
  config.optim.learning_rate = 3e-3
  config.ebm.posterior_steps = 2
  config.ebm.energy_l2 = 0.1
  config.num_train_steps = 500
  config.log_every_steps = 20
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.num_eval_batches = 4
  config.data.num_threads = 1  # Leave the second core to XLA.
  config.num_image_samples = 8
  config.eval.num_test_examples = 500
  config.eval.num_joint_samples = 1000
  config.eval.num_fid_samples = 0
  config.eval.fid_batch_size = 50
  return config
