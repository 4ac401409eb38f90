"""Vision-token pruners behind one interface (LVPruning, AdaptInfer, PTP, STAR, ... and baselines)."""
