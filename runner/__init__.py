"""convnet-runner: a YAML-driven experiment runner for image-classification ConvNets."""
__version__ = '0.1.0'
