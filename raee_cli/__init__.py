"""The layer users drive RAEE serve from: the ``raee`` command line, the process pair
(``raee up``, both services in one process), the shipped demo, and the gRPC client.

It sits above ingest and both services and imports them; nothing below imports it.
"""
