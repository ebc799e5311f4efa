"""Built-in data and small reference models for tests, benchmarks, the demo and the examples."""

from .digits import digits_loaders, digits_tensors
from .models import digits_cnn, digits_mlp, digits_resnet
from .quadratic import quadratic_probe

__all__ = ["digits_tensors", "digits_loaders", "digits_mlp", "digits_cnn", "digits_resnet",
           "quadratic_probe"]
