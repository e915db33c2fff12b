"""UV stage: xatlas unwrapping."""
