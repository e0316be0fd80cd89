"""The image path: the augmentation policy, the photo arrays, batches augmented on the device, and the
CNN's figures and binary metrics."""
