"""Slurm integration: the prolog and epilog that start and end each job's bubbles."""
