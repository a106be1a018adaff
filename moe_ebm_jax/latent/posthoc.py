"""Post-hoc priors as components: densities fitted to a trained model's aggregate posterior
after training (MultiVae's samplers), each a registered fitter that returns a prior of
priors.py's interface. config.posthoc selects and sets them (fit_prior.py runs them).

  def fit_name(config, z, key) -> (prior, params, state, info)   z: (N, D) latents to fit
  posthoc.register('name', fit_name, MyPrior, config=..., validate=...)

A fitter reads config.posthoc (its own fields) and may read the sections of the component it
fits (the EBM's: config.ebm, config.prior_optim). state is what the prior samples from besides
its parameters ({} for most; the EBM's persistent chains). A fitted prior is rebuilt from the
JSON `fields` saved beside it: by default a dataclass prior's fields, MyPrior(**fields).
Registered: 'gmm' (a Gaussian mixture by EM, mixture.py), 'flow' (a coupling flow fitted by
maximum likelihood, flow.py), 'ebm' (the project's latent EBM and chains, trained on the frozen
latents, posthoc_ebm.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ml_collections import config_dict

from moe_ebm_jax import optimizers
from moe_ebm_jax import registry
from moe_ebm_jax.latent import flow
from moe_ebm_jax.latent import mixture
from moe_ebm_jax.latent import posthoc_ebm
from moe_ebm_jax.latent import priors

FITTERS: registry.Registry = registry.Registry('post-hoc prior')
SOURCES = ('samples', 'means')  # What is fitted: z ~ q(z | X), or the mean of q(z | X).


@dataclasses.dataclass(frozen=True)
class Fitter:
  # (config, z (N, D), key) -> (prior, params, state, info: JSON-able).
  fit: Callable[..., tuple[Any, Any, Any, dict]]
  fields: Callable[[Any, Any], dict]  # (config, prior) -> the JSON-able fields to rebuild it.
  rebuild: Callable[[Any, dict], Any]  # (config, fields) -> the prior.


def register(name: str, fit, prior: type | None = None, *, fields=None, rebuild=None,
             **owned) -> Fitter:
  """Registers `fit` under `name` (config.posthoc.prior), with the config fields it owns
  (`config`, `validate`: registry.py). A dataclass `prior` is saved by its fields and rebuilt as
  prior(**fields); other priors give `fields` and `rebuild`. Names are unique."""
  if prior is not None:
    fields = fields or (lambda config, fitted: dataclasses.asdict(fitted))
    rebuild = rebuild or (lambda config, saved: prior(**saved))
  if fields is None or rebuild is None:
    raise ValueError(f'post-hoc prior {name!r}: give its dataclass, or fields= and rebuild=.')
  return FITTERS.add(name, Fitter(fit, fields, rebuild), **owned)


def get(name: str):
  return FITTERS.lookup(name)


def default_config() -> dict:
  """config.posthoc: which post-hoc prior fit_prior fits, and on what."""
  return {'posthoc': {
      'prior': config_dict.placeholder(str),  # A FITTERS name; None: the run's own prior.
      'source': 'samples',  # One of SOURCES (both are measured in docs/results.md).
      'num_train_examples': config_dict.placeholder(int),  # The first N train tuples; None: all.
      'seed': 0,  # Of the latents drawn and the fit's initialisation.
  }}


def validate(config) -> None:
  p, check = config.posthoc, registry.check
  check(p.prior is None or p.prior in FITTERS,
        f'posthoc.prior={p.prior!r} is not one of {sorted(FITTERS)}')
  check(p.source in SOURCES, f'posthoc.source={p.source!r}, expected one of {SOURCES}')
  check(p.num_train_examples is None or p.num_train_examples >= 2,
        f'posthoc.num_train_examples={p.num_train_examples!r} must be >= 2 or None')


def _gmm_config() -> dict:
  return {'posthoc': {
      'num_components': 10,  # K (MultiVae's default); see component_choices.
      'component_choices': (),  # K candidates, chosen by held-out likelihood; (): num_components.
      'covariance': 'full',  # 'full' (MultiVae's) or 'diag'.
      'max_iter': 500,
      'tol': 1e-3,  # Stop when the mean log-likelihood gains less (sklearn's default).
  }}


def _validate_gmm(config) -> None:
  p, check = config.posthoc, registry.check
  check(p.num_components >= 1, f'posthoc.num_components={p.num_components} must be >= 1')
  check(all(int(k) >= 1 for k in p.component_choices),
        f'posthoc.component_choices={p.component_choices!r} must be counts >= 1')
  check(p.covariance in mixture.COVARIANCES,
        f'posthoc.covariance={p.covariance!r}, expected one of {mixture.COVARIANCES}')


def fit_gmm(config, z, key):
  """A Gaussian mixture fitted by EM (K fixed, or chosen by held-out likelihood)."""
  settings = config.posthoc
  options = dict(covariance=settings.covariance, max_iter=settings.max_iter, tol=settings.tol)
  if settings.component_choices:
    params, info = mixture.fit_selecting(z, tuple(settings.component_choices), key, **options)
  else:
    params, info = mixture.fit(z, settings.num_components, key, **options)
    info['num_components'] = settings.num_components
  prior = mixture.GaussianMixturePrior(info['num_components'], settings.covariance)
  return prior, params, {}, info


register('gmm', fit_gmm, mixture.GaussianMixturePrior, config=_gmm_config, validate=_validate_gmm)


def _flow_config() -> dict:
  return {'posthoc': {
      'flow_layers': 6,  # Coupling layers.
      'flow_hidden': (64, 64),  # Each layer's MLP.
      'flow_steps': 2000,  # Adam steps on minibatches of the latents.
      'flow_batch_size': 256,
      'flow_learning_rate': 1e-3,
  }}


def _validate_flow(config) -> None:
  p, check = config.posthoc, registry.check
  check(p.flow_layers >= 1 and all(int(w) >= 1 for w in p.flow_hidden),
        f'posthoc.flow_layers={p.flow_layers}, flow_hidden={p.flow_hidden!r}: positive counts')
  check(p.flow_steps >= 1 and p.flow_batch_size >= 1 and p.flow_learning_rate > 0,
        'posthoc.flow_steps, flow_batch_size and flow_learning_rate must be positive')


def fit_flow(config, z, key):
  """A coupling flow fitted by maximum likelihood (10% of z held out to report its NLL)."""
  settings = config.posthoc
  prior = flow.FlowPrior(settings.flow_layers, tuple(settings.flow_hidden))
  params, info = flow.fit(z, key, prior, steps=settings.flow_steps,
                          batch_size=settings.flow_batch_size,
                          learning_rate=settings.flow_learning_rate)
  return prior, params, {}, info


register('flow', fit_flow, flow.FlowPrior, config=_flow_config, validate=_validate_flow)


def _ebm_config() -> dict:
  return {'posthoc': {
      # Updates of f_a on the frozen latents; None: config.num_train_steps, as many as the
      # jointly learned EBM gets. Its network, chains and optimiser are the run's own
      # (config.ebm, config.prior_optim): the same prior family, fitted afterwards. A
      # fixed-prior run's config has an ebm section too; its network's shape keys must stay
      # the run's (model_state.COMPATIBLE_KEYS), the chains' may change.
      'ebm_steps': config_dict.placeholder(int),
      'ebm_batch_size': config_dict.placeholder(int),  # None: config.batch_size.
  }}


def _validate_ebm(config) -> None:
  p, check = config.posthoc, registry.check
  check(p.ebm_steps is None or p.ebm_steps >= 1, f'posthoc.ebm_steps={p.ebm_steps!r} must be >= 1')
  check(p.ebm_batch_size is None or p.ebm_batch_size >= 1,
        f'posthoc.ebm_batch_size={p.ebm_batch_size!r} must be >= 1')


def _ebm_from(config):
  """The EBM prior config.ebm describes (priors.py's factory: the jointly learned one's)."""
  return priors.get('ebm')(config, None)


def fit_ebm(config, z, key):
  """The latent EBM trained on z by its own update, prior samples against minibatches of z."""
  prior = _ebm_from(config)
  _, tx = optimizers.make_optimizers(config)
  params, state, info = posthoc_ebm.fit(
      prior, z, key, tx, steps=config.posthoc.ebm_steps or config.num_train_steps,
      batch_size=config.posthoc.ebm_batch_size or config.batch_size)
  return prior, params, state, info


def _ebm_rebuild(config, saved: dict):
  config = config.copy_and_resolve_references()
  with config.ebm.unlocked():
    for key, value in saved.items():
      config.ebm[key] = tuple(value) if isinstance(value, list) else value
  return _ebm_from(config)


register('ebm', fit_ebm, fields=lambda config, prior: config.ebm.to_dict(), rebuild=_ebm_rebuild,
         config=_ebm_config, validate=_validate_ebm)
