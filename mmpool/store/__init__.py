"""Where records live: the catalog of converted shards, range strings, the gather from mapped packs, read-ahead."""
