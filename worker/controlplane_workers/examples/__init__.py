"""Example providers: the demo served by `cpw dev`."""
