"""Measured acoustics for binaural data: HRIR sets (MIT KEMAR, any SOFA file) and binaural room impulse responses.

`hrtf` loads head-related impulse responses; `rooms` turns them into anechoic or simulated lecture-hall BRIRs.
Coordinates follow design.md: azimuth in degrees counter-clockwise, 0 = front, 90 = left; channel 0 = left ear.
"""
