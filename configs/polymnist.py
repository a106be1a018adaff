r"""Paper scale (MMVAE+ widths, full PolyMNIST, batch 128): for GPUs and TPU pods.

  python main.py --config=configs/polymnist.py:moe_ebm --workdir=/tmp/moe_ebm
  python main.py --config=configs/polymnist.py --mode=prepare   # build the dataset only
"""

from moe_ebm_jax import config_lib


def get_config(model=None):
  config = config_lib.base_config(model)
  # An accelerator takes batches about as fast as one Python process decodes them (H200: MMVAE+
  # uses 3,745 examples/s, the in-process pipeline gave 4,157). Worker processes escape the GIL:
  # on a 2-core CPU 4 workers gave 5,700-6,100 examples/s against 2,500-2,600 in-process
  # (benchmarks/suite.py --sections=input_pipeline --scales=paper --set=data.num_workers=N).
  config.data.num_workers = 4
  return config
