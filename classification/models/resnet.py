"""ResNet34/50: torchvision's originals (registered here so the zoo has one entry point)."""

from torchvision.models import resnet as tv_resnet

from ._registry import register_model


@register_model()
def resnet34(num_classes: int = 1000, **kwargs):
    """torchvision's ResNet34."""
    return tv_resnet.resnet34(weights=None, num_classes=num_classes, **kwargs)


@register_model()
def resnet50(num_classes: int = 1000, **kwargs):
    """torchvision's ResNet50."""
    return tv_resnet.resnet50(weights=None, num_classes=num_classes, **kwargs)
