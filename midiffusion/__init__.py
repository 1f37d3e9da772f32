"""MIDiffusion: zero-shot cross-modality translation guided by local mutual information.

The science lives here and imports nothing from ``service`` or ``worker``.
"""

__version__ = "0.1.0"
