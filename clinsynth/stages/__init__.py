"""Built-in stages. Each module registers its stages with `clinsynth.core.registry.stage`."""
