"""The Flower ClientApp: decode the global adapter → local steps → encoded update (or a score)."""
