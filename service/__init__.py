"""The REST gateway: FastAPI app, routers, auth, uploads, problems, upload checks and metrics.

It imports ``jobs`` (records, storage, queue, shared settings) and the torch-free
``model_store``; never the workers, never the science, never torch.
"""
