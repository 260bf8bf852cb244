"""DeepImage: text-to-image and image-to-image with diffusion pipelines."""
