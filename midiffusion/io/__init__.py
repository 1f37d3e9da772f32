"""Image files in and out (NIfTI and PNG), written atomically."""
