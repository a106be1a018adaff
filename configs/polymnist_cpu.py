r"""CPU scale: narrower networks of the same shape, for a 2-core machine.

  python main.py --config=configs/polymnist_cpu.py:moe_ebm --workdir=/tmp/moe_ebm_cpu
"""

from moe_ebm_jax import config_lib


def get_config(model=None):
  config = config_lib.base_config(model)
  # Provisional until the CPU calibration (issue 4) fixes widths and data size by measurement.
  config.model.widths = (16, 32, 64)
  config.data.num_threads = 1  # Leave the second core to XLA.
  return config
