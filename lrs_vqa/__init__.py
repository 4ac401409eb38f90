"""lrs-vqa: question answering over gigapixel remote-sensing images with coarse-to-fine token pruning."""

__version__ = "0.1.0"
