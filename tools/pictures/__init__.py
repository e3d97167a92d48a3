"""Pictures of a run: curves, confusion matrices, kernels, feature maps, Grad-CAM."""
