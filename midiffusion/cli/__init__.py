"""The ``midiffusion`` command line (:mod:`midiffusion.cli.main`): one module per command.

The only part of the package that may import everything (service, worker, model store).
"""
