r"""CPU scale: narrower networks of the same shape, for a 2-core machine.

  python main.py --config=configs/polymnist_cpu.py:moe_ebm --workdir=/tmp/moe_ebm_cpu
"""

from moe_ebm_jax import config_lib


def get_config(model=None):
  config = config_lib.base_config(model)
  # Provisional until the CPU calibration (issue 4) fixes widths, chain lengths and run length
  # by measurement. Measured here at batch 128: mmvaeplus 3.4 s/step, moe_ebm 7.2 s/step.
  config.model.widths = (16, 32, 64)
  config.num_train_steps = 800
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 100
  config.log_every_steps = 10
  config.data.num_threads = 1  # Leave the second core to XLA.
  return config
