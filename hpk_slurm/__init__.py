"""hpk-slurm: HPKtainer for Slurm clusters.

Rootless per-job "bubbles" joined by a Flannel VXLAN overlay; nested
containers reach their bubble's bridge through the hpk-net-daemon relay.
"""

__version__ = "0.1.0"
