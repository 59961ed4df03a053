"""Flower ClientApp: decode the global adapter, train locally, send back an encoded update."""
