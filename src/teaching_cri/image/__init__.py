"""Images (not built yet): content store, registry client, unpacking, snapshots.

Until this package is filled, every ImageService RPC answers UNIMPLEMENTED
naming itself (``cri/image_service.py``).
"""
