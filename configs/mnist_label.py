r"""MNIST image + digit label (MVAE's bimodal MNIST; docs/data.md) at CPU scale.

  python main.py --config=configs/mnist_label.py:mvae --workdir=/tmp/mvae_mnist
  python main.py --config=configs/mnist_label.py:moe_ebm --workdir=/tmp/moe_ebm_mnist

A starting point, not a tuned recipe: the PolyMNIST CPU widths (8, 16, 32) for the image's
ResNet and its learning rate 3e-3 (configs/polymnist_cpu.py says why), an MLP (64,) for the
label, 2,000 steps of 64. Coherence reads the decoded digit directly and the decoded image with
an MLP digit classifier (trained on first use, cached); no FID (grey images).
"""

from moe_ebm_jax import config_lib


def get_config(model=None):
  config = config_lib.base_config(model, 'mnist_label')
  config.batch_size = 64
  config.model.widths = (8, 16, 32)
  config.model.mlp_hidden = (64,)
  config.optim.learning_rate = 3e-3
  config.ebm.posterior_steps = 2
  config.num_train_steps = 2000
  config.log_every_steps = 20
  config.eval_every_steps = 1000
  config.num_eval_batches = 8
  config.eval.num_test_examples = 1000
  config.eval.num_joint_samples = 2000
  config.eval.num_fid_samples = 0
  return config
