"""ASDT (Zhang et al., IEEE TIP): weakly supervised segmentation by alternate self-dual teaching, from image tags."""
