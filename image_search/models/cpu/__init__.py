"""The CPU forms of the CLIP towers: the fastest faithful number format and weight layout of each tower
(tower_forms.py), and transformer blocks with weights packed for oneDNN (packed_weights.py)."""
