r"""Paper scale (MMVAE+ widths, full PolyMNIST, batch 128): for GPUs and TPU pods.

  python main.py --config=configs/polymnist.py:moe_ebm --workdir=/tmp/moe_ebm
  python main.py --config=configs/polymnist.py --mode=prepare   # build the dataset only
"""

from moe_ebm_jax import config_lib


def get_config(model=None):
  return config_lib.base_config(model)
