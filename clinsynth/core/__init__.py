"""The stage contract shared by every clinical stage: registry, context, atomic I/O."""
