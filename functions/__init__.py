"""The traffic function library, written with the mesh decorators."""
