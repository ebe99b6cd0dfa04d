"""cvt-lab: train, fine-tune, sweep and ablate Convolutional vision Transformers."""

__version__ = "0.1.0"
