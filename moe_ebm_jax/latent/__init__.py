"""The prior on the shared latent z and the MCMC that samples it.

  priors.py    the prior interface and registry: 'fixed', 'ebm'
  ebm.py       the latent EBM: energies, its chains' log densities, loss, log Z
  samplers.py  MCMC samplers as components, Chain
  langevin.py, mala.py  unadjusted and Metropolis-adjusted Langevin (jax.lax.scan)
"""
