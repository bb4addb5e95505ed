"""mixer-scaling: scaling studies of MLP-Mixer against ViT and BiT, as in Tolstikhin et al. (2021)."""

__version__ = "0.1.0"
