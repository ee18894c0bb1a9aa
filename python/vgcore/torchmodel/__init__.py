"""Analyses of any torch.nn.Module viewed as a chain of blocks (torch imported lazily)."""
