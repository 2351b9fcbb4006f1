"""The edge agent: local rules, store-and-forward, CRDT state and its sync with the cloud."""
