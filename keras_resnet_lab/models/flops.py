"""FLOPs per image, counted from the layers at 2 per multiply-add.

He et al. (2016) quote multiply-adds, half of this: their ResNet-18 "1.8 x 10^9 FLOPs" at 224x224
is 3.6 G here.
"""

import numpy as np
from keras import layers


def flops_per_image(model):
    """Forward-pass FLOPs for one image: convolutions and dense layers (which dominate)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kernel = int(np.prod(layer.kernel.shape))  # kh * kw * in * out
            height, width = layer.output.shape[1:3]
            total += 2 * kernel * height * width
        elif isinstance(layer, layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total
