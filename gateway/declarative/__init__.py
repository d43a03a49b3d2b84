"""Kong's declarative configuration (kong.yml): load, validate, export.

``parse_declarative`` turns a document (nested or flat, ``_format_version`` 3.0, or 2.1 /
1.1 for old files) into the runtime configuration of docs/design/contracts.md section 1;
``runtime_view`` drops what runtimes must not see (disabled services); ``export_declarative``
writes entities back as a document that imports to the same configuration.
"""

from gateway.declarative._errors import DeclarativeError
from gateway.declarative._export import export_declarative
from gateway.declarative._load import dump_json, dump_yaml, load_declarative
from gateway.declarative._parse import (
    FORMAT_VERSION,
    ID_NAMESPACE,
    SUPPORTED_VERSIONS,
    RuntimeConfig,
    parse_declarative,
    runtime_view,
    validate_config,
)

__all__ = [
    "FORMAT_VERSION",
    "ID_NAMESPACE",
    "SUPPORTED_VERSIONS",
    "DeclarativeError",
    "RuntimeConfig",
    "dump_json",
    "dump_yaml",
    "export_declarative",
    "load_declarative",
    "parse_declarative",
    "runtime_view",
    "validate_config",
]
