"""Model definitions and their construction from checkpoints."""
