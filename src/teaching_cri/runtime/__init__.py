"""The layer under the CRI services: OCI bundles, the shim and the backends."""
