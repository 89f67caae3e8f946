"""Pure status helpers: phase from MPIJob conditions, condition mirroring, progress merge."""
