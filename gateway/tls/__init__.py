"""TLS for Trio streams through pyOpenSSL (memory BIOs).

See :mod:`gateway.tls._stream` for the theory of operation.
"""

from gateway.tls._stream import OpenSSLStream

__all__ = ["OpenSSLStream"]
