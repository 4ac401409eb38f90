"""The engine (layer 2, above ``pyramid``): the decoder loop, hook points, attention taps, FLOPs and the
types every vision token carries. It knows no model family, scorer or pruner."""

# Rotary positions of the rows a hook keeps (``DecoderLoop.prefill(positions=)``): their own, or renumbered
# 0..n−1. Here, torch-free, so the options the CLI builds at start-up can check against it.
POSITION_MODES = ("original", "compact")
