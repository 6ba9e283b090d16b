"""ASGI service: TAP (sync, async/UWS), VOSI, DataLink, SCS, lightcurves."""
