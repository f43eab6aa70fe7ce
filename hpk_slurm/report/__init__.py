"""Per-job network reports: what each node's bubble and containers did."""
