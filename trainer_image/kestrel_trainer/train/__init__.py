"""Training: a task (model, loss, optimizer, data) apart from the loop (epochs, checkpoints, ranks)."""
