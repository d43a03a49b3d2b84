"""Clustering: the CP <-> DP link.

The mutual-TLS layer lives in :mod:`gateway.cluster._tls` (contexts, handshake plus the
certificate policy check); the sync protocol runs on the streams it returns.
"""

from gateway.cluster._tls import (
    SHARED_MODE_SNI,
    ClusterMode,
    ClusterPeer,
    ClusterPeerRejected,
    ClusterTLS,
    LikelyAuthenticationFailure,
    accept_cluster_peer,
    connect_cluster_peer,
)

__all__ = [
    "SHARED_MODE_SNI",
    "ClusterMode",
    "ClusterPeer",
    "ClusterPeerRejected",
    "ClusterTLS",
    "LikelyAuthenticationFailure",
    "accept_cluster_peer",
    "connect_cluster_peer",
]
