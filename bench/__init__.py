"""Side-by-side benchmark of coord against ZooKeeper on the same machine (see bench/README.md)."""
