"""Translation of whole images: geometry, intensity anchoring, precision and device choice."""
