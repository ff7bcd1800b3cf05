"""What iSulad's ``cb->container.*`` callbacks do: stores, naming, state, persistence."""
