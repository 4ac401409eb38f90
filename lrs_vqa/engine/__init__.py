"""The engine (layer 2, above ``pyramid``): the decoder loop, hook points, attention taps, FLOPs and the
types every vision token carries. It knows no model family, scorer or pruner."""
