"""DAFormer / DACS (Hoyer et al., CVPR 2022; Tranheden et al., WACV 2021): domain-adaptive self-training."""
