"""Images: content store, registry client, unpacking, snapshots, local builds."""
