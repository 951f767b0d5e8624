"""ASDT (Zhang et al., IEEE TIP 2023): alternate self-dual teaching for weakly supervised segmentation."""
