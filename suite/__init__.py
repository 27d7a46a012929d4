"""MBQuant reproducibility suite."""
