"""Run outputs for people and tools: status.json, training.csv, plots, and cluster status."""
