"""The REST gateway: FastAPI routes, job records, storage, auth. Never imports torch.

Kept empty on purpose: workers import ``service.jobs`` and ``service.storage`` (the job record and
file layer they share with the gateway) without pulling in FastAPI.
"""
