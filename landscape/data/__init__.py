"""Built-in data and small reference models for tests, benchmarks and the demo."""

from .digits import digits_loaders, digits_tensors
from .models import digits_cnn, digits_mlp, digits_resnet

__all__ = ["digits_tensors", "digits_loaders", "digits_mlp", "digits_cnn", "digits_resnet"]
