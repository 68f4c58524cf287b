"""The networks: the small CNN, the pretrained backbones and their offline ImageNet weights."""
