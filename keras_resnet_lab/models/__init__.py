"""The model zoo. Every network is a functional `keras.Model` built by name from one registry."""

from .flops import flops_per_image
from .freeze import freeze, parameter_counts, print_parameter_summary
from .layers import portable_copy
from .mnist import baseline_cnn, lenet_resnet
from .pretrained import save_torchvision_weights, torchvision_state_dict, weights_file, weights_identity
from .registry import build_model, check_options, check_weights_for, get_spec, list_models, model_label, register
from .resnet import IMAGENET_STAGES, cifar_resnet, imagenet_resnet

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)

def lenet5(input_shape, num_classes, *, name, activation="relu"):
    """Report 004's MNISTNetwork (LeNet-5 with 'same' convs): 107,786 parameters on 28x28x1."""
    return lenet_resnet(input_shape, num_classes, name=name, num_blocks=0, activation=activation)

register(
    "baseline_cnn", baseline_cnn, input_shape=(28, 28, 1),
    description="Report 000's MNIST CNN: 2 convs, spatial dropout, 2 dense (21,840 params)",
)
register(
    "lenet5", lenet5, input_shape=(28, 28, 1),
    description="Report 004's MNISTNetwork: LeNet-5 with 'same' 5x5 convs (107,786 params)",
)
register(
    "mnist_resnet", lenet_resnet, input_shape=(28, 28, 1), batch_norm="batch_norm",
    description="Report 004's MNISTResNetwork: LeNet-5 with residual blocks, num_blocks per stage",
)
register(
    "cifar_resnet", cifar_resnet, input_shape=(32, 32, 3), batch_norm=True,
    description="He et al. 2016 sec. 4.2 CIFAR ResNet, depth=6n+2, shortcut A or B",
)
for _depth in CIFAR_DEPTHS[:-1]:
    register(
        f"cifar_resnet{_depth}", cifar_resnet, input_shape=(32, 32, 3), depth=_depth, batch_norm=True,
        description=f"cifar_resnet with depth={_depth}",
    )
for _depth, (_block, _sizes) in IMAGENET_STAGES.items():
    register(
        f"resnet{_depth}", imagenet_resnet, input_shape=(224, 224, 3), num_classes=1000, batch_norm=True,
        pretrained=True, depth=_depth, description=f"torchvision's ResNet-{_depth} ({_block} blocks {_sizes}); stem imagenet|small",
    )

__all__ = ["build_model", "check_options", "check_weights_for", "save_torchvision_weights", "torchvision_state_dict",
           "weights_file", "weights_identity", "flops_per_image", "freeze", "get_spec", "list_models", "parameter_counts", "portable_copy", "print_parameter_summary", "register"]
