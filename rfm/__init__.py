"""Region Focus Module: text-guided relevance of vision tokens and the tiles to zoom into."""
