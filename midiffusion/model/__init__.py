"""The score network (a U-Net conditioned on LMI maps)."""
