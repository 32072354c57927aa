"""ganops: train GANs on images and turn them into reviewed, versioned models."""

__version__ = "0.1.0"
