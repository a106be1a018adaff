"""Named components (datasets, encoder and decoder families, likelihoods, objectives, samplers,
priors): a dict that refuses a name registered twice and says what is registered when a name is
unknown."""

from __future__ import annotations

from typing import Any, Callable


class Registry(dict):
  """name -> component. `what` names the kind in messages ('sampler', 'dataset', ...)."""

  def __init__(self, what: str):
    super().__init__()
    self.what = what

  def add(self, name: str, value: Any) -> Any:
    if name in self:
      raise ValueError(f'{self.what} {name!r} is already registered ({self[name]!r}).')
    self[name] = value
    return value

  def register(self, name: str) -> Callable[[Any], Any]:
    """Decorator: registers the decorated function or class under `name`; returns it."""
    return lambda value: self.add(name, value)

  def lookup(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise ValueError(f'unknown {self.what} {name!r}; registered: {sorted(self)}.') from None
