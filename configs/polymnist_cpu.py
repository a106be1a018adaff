r"""CPU scale: narrower networks of the same shape, 1,500 steps (1.6 epochs) on a 2-core machine.

  python main.py --config=configs/polymnist_cpu.py:mmvaeplus --workdir=/tmp/mmvaeplus_cpu
  python main.py --config=configs/polymnist_cpu.py:mmvaeplus --workdir=/tmp/mmvaeplus_cpu --mode=eval
  python main.py --config=configs/polymnist_cpu.py:moe_ebm,quick --workdir=runs/moe_ebm_quick

The argument is the model, optionally followed by ',quick' (the README's first command: PolyMNIST
with QUICK_MODALITIES modalities, lr 6e-3, QUICK_STEPS steps, evaluation on 500 test tuples and
2,000 joint samples) or ',long' (the quick problem trained LONG_STEPS steps, every 250-step
checkpoint kept). The paper's settings but the learning rate, MOE-EBM's chain lengths and energy
penalty, and a CPU-sized evaluation without FID; the measurements behind each:
docs/results.md, "Why the configs are what they are".
"""

from moe_ebm_jax import config_lib


QUICK_STEPS = 1250
QUICK_MODALITIES = 3
LONG_STEPS = 6000


def get_config(arg=None):
  model, *variants = (arg or '').split(',')
  if len(variants) > 1 or any(v not in ('quick', 'long') for v in variants):
    raise ValueError(f"config argument {arg!r}: expected '<model>', '<model>,quick' or "
                     "'<model>,long'.")
  config = config_lib.base_config(model or None)
  config.batch_size = 64
  config.model.widths = (8, 16, 32)
  # The paper's optimiser at 3x its learning rate: at 1e-3 these widths stay at chance.
  config.optim.learning_rate = 3e-3
  # MOE-EBM's departures: two posterior Langevin steps (each is a pass through every decoder)
  # and an energy penalty against energies that drift.
  config.ebm.posterior_steps = 2
  config.ebm.energy_l2 = 0.1
  config.num_train_steps = 1500
  config.log_every_steps = 20
  config.eval_every_steps = 600
  config.num_eval_batches = 8  # 2,048 test tuples for the periodic test loss.
  config.checkpoint_every_steps = 200
  config.data.num_threads = 1  # Leave the second core to XLA.
  config.eval.num_test_examples = 1000
  config.eval.num_joint_samples = 5000
  # No N that ranks models is affordable here: the report says why. Accelerators:
  # --mode=eval --config.eval.num_fid_samples=10000.
  config.eval.num_fid_samples = 0
  config.eval.fid_batch_size = 50
  if variants:
    # A problem that learns within the half hour (probed on MOE-EBM only).
    config.data.num_modalities = QUICK_MODALITIES
    config.optim.learning_rate = 6e-3
    config.num_train_steps = QUICK_STEPS
    config.eval_every_steps = 500
    config.eval.num_test_examples = 500
    config.eval.num_joint_samples = 2000
  if variants == ['long']:
    # Convergence runs: a test loss and a kept checkpoint every 250 steps, whose coherence
    # experiments/coherence_curve.py reads afterwards.
    config.num_train_steps = LONG_STEPS
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 250
    config.keep_checkpoints = LONG_STEPS // 250 + 1
    # The EBM as the paper and Pang et al. have it (f_a unweighted, no penalty), with
    # persistent prior chains: configs/mnist_label.py's settings.
    if config.model.prior == 'ebm':  # (The other models' runs stay free of EBM keys.)
      config.ebm.energy_weight = 'one'
      config.ebm.energy_l2 = 0.0
      config.ebm.persistent_chains = 10_000
  return config
