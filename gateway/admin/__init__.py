"""The Kong-compatible Admin API."""

from gateway.admin._app import AdminApp, AdminRequest, AdminResponse, PathMatch
from gateway.admin._dbless import DeclarativeLoader, DeclarativeReloader
from gateway.admin._meta import NodeView, install_meta_routes
from gateway.admin._server import serve_http

__all__ = [
    "AdminApp",
    "AdminRequest",
    "AdminResponse",
    "DeclarativeLoader",
    "DeclarativeReloader",
    "NodeView",
    "PathMatch",
    "install_meta_routes",
    "serve_http",
]
