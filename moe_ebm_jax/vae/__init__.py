"""The multimodal VAE: modality specs and their networks, the MultimodalVAE, posterior
aggregation and the objectives that train it.

  distributions.py  Laplace / Gaussian families       conv.py        conv layers, fast on CPU
  networks.py       encoders, decoders, energy MLP     modalities.py  ModalitySpec, families
  models.py         MultimodalVAE                      aggregation.py q(z | X_S): MoE, PoE, MoPoE
  objectives.py     MMVAE+, MMVAE, MVAE, mmJSD, MoPoE (registered)
"""
