"""Datasets and how their modalities are scored.

  datasets.py           the Dataset record and registry, from_arrays, MNIST + label, the
                        synthetic mixture
  mnist.py, polymnist.py  MNIST loading; PolyMNIST (a TFDS builder) and its registration
  coherence_scorers.py  how coherence reads a modality (labels, MLP readers), one trainer
  classifiers.py        PolyMNIST's CNN classifier bank
"""
