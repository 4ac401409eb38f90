"""Model adapters (layer 3, above the engine): one module per family, the checkpoint loaders, and the one
registry that picks an adapter for a checkpoint (``registry.load_adapter``)."""
